"""A predictor learned from the candidates already evaluated, screening evolution's children.

    predictor = AdditivePredictor().fit(archs, maps, latencies)
    maps, costs = predictor.predict(["resnet18@0.25+fpn:P2-P5:c32+rpn+2fc:256+160x120+bn", ...])
    keep = screen_children(population, children, n=3, cost="latency_ms")   # indices into children

Training a candidate costs minutes; predicting one costs microseconds. Evolution makes more
children than it can train (``screen`` per place), and this module keeps the ``n`` whose
predicted (mAP, cost) adds the most hypervolume to the evaluated front (greedy: each kept child
joins the front, by its prediction, before the next is chosen). Children predicted to be
dominated are the ones skipped: the cheap pre-screen of BN-NAS's kind, here "a predictor learned
from the candidates already evaluated" (Chen et al., "BN-NAS", ICCV 2021, and predictor-based NAS
such as White et al., "BANANAS", AAAI 2021, who screen mutations of the best architectures the
same way).

The predictor is the simplest that the data of a small search supports: mAP, and the log of the
cost, as a sum of one effect per module choice (backbone, neck with its levels and channels, RPN,
head, input size; a stage-one architecture is five such choices), fitted by ridge least squares
(the intercept not shrunk). A choice never evaluated gets no effect, so its children are judged
by their other modules. bench/search_sim.py measures how often evolution with and without the
screen beats random search at a budget.

Stage two knows a child's cost before training (its GMACs, :mod:`smnas.engine.cost`), and inside
one group the encodings are new each time, so there the cost is not predicted: the children's
exact costs are given (``child_costs``), the mAP model takes the log cost as one more (numeric,
standardised) term, and an encoded backbone counts as its base width rather than its name.
bench/stage2_sim.py measures that screen against random search.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from smnas.errors import SmnasError
from smnas.models.encoding import is_encoding, parse_encoding
from smnas.models.spec import DetectorSpec, parse_spec
from smnas.search.pareto import hypervolume

MIN_FIT = 2  # evaluated candidates below which the predictor knows nothing: no screen


def module_choices(spec: DetectorSpec) -> list[str]:
    """The module choices of an architecture, one effect each in the predictor (an encoded
    backbone, stage two's, counts as its base width: each encoding is new)."""
    backbone = f"backbone={spec.backbone.name}"
    if is_encoding(spec.backbone.name):
        backbone = f"base={parse_encoding(spec.backbone.name).base_channels}"
    return [backbone, f"neck={spec.neck}", f"rpn={spec.rpn.kind}",
            f"head={spec.head}", f"size={spec.input_size[0]}x{spec.input_size[1]}"]


class AdditivePredictor:
    """mAP and log cost as sums of module effects (ridge least squares, intercept unshrunk).

    Args:
        ridge: the shrinkage of each effect towards zero (1.0: an effect seen once is about
            half its residual; the module means dominate until the data speak).
    """

    def __init__(self, ridge: float = 1.0) -> None:
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.ridge = ridge
        self.columns: list[str] = []
        self.w_map = self.w_cost = np.zeros(1)
        self.cost_known = False
        self.log_mean, self.log_scale = 0.0, 1.0

    def _matrix(self, archs: Sequence[str], costs: np.ndarray | None = None) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.columns)}
        X = np.zeros((len(archs), len(self.columns) + 1 + self.cost_known))
        X[:, -1] = 1.0
        for r, arch in enumerate(archs):
            for choice in module_choices(parse_spec(arch)):
                if choice in index:
                    X[r, index[choice]] = 1.0
        if self.cost_known:
            X[:, len(self.columns)] = (np.log(costs) - self.log_mean) / self.log_scale
        return X

    def _solve(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        shrink = np.full(X.shape[1], self.ridge)
        shrink[-1] = 0.0
        return np.linalg.lstsq(X.T @ X + np.diag(shrink), X.T @ y, rcond=None)[0]

    def fit(self, archs: Sequence[str], maps: Sequence[float], costs: Sequence[float],
            cost_known: bool = False) -> "AdditivePredictor":
        """Fit on evaluated candidates (costs > 0: the cost is fitted in log space).

        With ``cost_known`` the cost is not predicted but given to :meth:`predict` (stage two's
        GMACs), and the mAP model has the standardised log cost as a term.
        """
        maps, costs = np.asarray(maps, dtype=float), np.asarray(costs, dtype=float)
        if not (len(archs) == len(maps) == len(costs)) or len(archs) == 0:
            raise SmnasError(f"predictor: {len(archs)} archs, {len(maps)} mAPs, {len(costs)} costs: "
                             "need as many of each, at least one")
        if not (np.isfinite(maps).all() and np.isfinite(costs).all() and (costs > 0).all()):
            raise SmnasError("predictor: every evaluated candidate needs a finite mAP and a positive cost")
        self.columns = sorted({c for a in archs for c in module_choices(parse_spec(a))})
        self.cost_known = cost_known
        if cost_known:
            logs = np.log(costs)
            self.log_mean, self.log_scale = float(logs.mean()), float(logs.std()) or 1.0
        X = self._matrix(archs, costs)
        self.w_map = self._solve(X, maps)
        self.w_cost = np.zeros(X.shape[1]) if cost_known else self._solve(X, np.log(costs))
        return self

    def predict(self, archs: Sequence[str], costs: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (mAP, cost) of each arch (mAP clipped to [0, 1]); a predictor fitted with
        ``cost_known`` needs each arch's ``costs``, and returns them as they are."""
        if self.cost_known:
            if costs is None or len(costs) != len(archs):
                raise SmnasError("predictor: fitted with known costs, so predict needs one cost per arch")
            costs = np.asarray(costs, dtype=float)
            return np.clip(self._matrix(archs, costs) @ self.w_map, 0.0, 1.0), costs
        X = self._matrix(archs)
        return np.clip(X @ self.w_map, 0.0, 1.0), np.exp(X @ self.w_cost)


def _front_hv(maps: list[float], costs: list[float], bound: float) -> float:
    F = np.column_stack([-np.asarray(maps, dtype=float), np.asarray(costs, dtype=float) / bound])
    return hypervolume(F, [0.0, 1.0])


def screen_children(population: pd.DataFrame, children: Sequence[str], n: int, cost: str,
                    acc: str = "map", ridge: float = 1.0,
                    child_costs: Sequence[float] | None = None) -> tuple[list[int], dict[str, Any]]:
    """The ``n`` children whose predicted objectives add the most hypervolume to the population's.

    Args:
        population: the evaluated candidates (arch, status, ``acc``, ``cost``); only "ok" rows
            with finite objectives are used.
        children: the candidate children's archs, in the order evolution made them (ties keep
            that order).
        n: how many to keep.
        cost: the cost column minimised beside ``acc``.
        child_costs: each child's cost when it is known before training (stage two's GMACs,
            computed as the ``cost`` column was): then only mAP is predicted, with the log cost
            as a term.

    Returns:
        (indices into ``children`` in the order chosen, the predictions by arch:
        ``{arch: (map, cost)}``). With fewer than ``MIN_FIT`` evaluated candidates, or no more
        children than ``n``, the first ``n`` children and no predictions.
    """
    missing = {"arch", "status", acc, cost} - set(population.columns)
    if missing:
        raise SmnasError(f"population table lacks column(s) {sorted(missing)} needed to screen children")
    ok = population[population["status"] == "ok"]
    ok = ok[np.isfinite(ok[acc].to_numpy(float)) & np.isfinite(ok[cost].to_numpy(float))
            & (ok[cost].to_numpy(float) > 0)]
    if len(ok) < MIN_FIT or len(children) <= n:
        return list(range(min(n, len(children)))), {}
    if child_costs is not None and len(child_costs) != len(children):
        raise SmnasError(f"screen: {len(child_costs)} costs for {len(children)} children")
    predictor = AdditivePredictor(ridge).fit(ok["arch"].tolist(), ok[acc].to_numpy(float), ok[cost].to_numpy(float),
                                             cost_known=child_costs is not None)
    pmap, pcost = predictor.predict(list(children), child_costs)
    maps, costs = ok[acc].astype(float).tolist(), ok[cost].astype(float).tolist()
    bound = 1.1 * max(max(costs), float(pcost.max()))
    chosen: list[int] = []
    for _ in range(n):
        base = _front_hv(maps, costs, bound)
        best, best_key = -1, None
        for i in range(len(children)):
            if i in chosen:
                continue
            key = (_front_hv(maps + [pmap[i]], costs + [pcost[i]], bound) - base, pmap[i], -i)
            if best_key is None or key > best_key:
                best, best_key = i, key
        chosen.append(best)
        maps.append(float(pmap[best]))
        costs.append(float(pcost[best]))
    return chosen, {a: (float(m), float(c)) for a, m, c in zip(children, pmap, pcost)}
