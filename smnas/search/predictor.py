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
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from smnas.errors import SmnasError
from smnas.models.spec import DetectorSpec, parse_spec
from smnas.search.pareto import hypervolume

MIN_FIT = 2  # evaluated candidates below which the predictor knows nothing: no screen


def module_choices(spec: DetectorSpec) -> list[str]:
    """The module choices of a stage-one architecture, one effect each in the predictor."""
    return [f"backbone={spec.backbone.name}", f"neck={spec.neck}", f"rpn={spec.rpn.kind}",
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

    def _matrix(self, archs: Sequence[str]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.columns)}
        X = np.zeros((len(archs), len(self.columns) + 1))
        X[:, -1] = 1.0
        for r, arch in enumerate(archs):
            for choice in module_choices(parse_spec(arch)):
                if choice in index:
                    X[r, index[choice]] = 1.0
        return X

    def _solve(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        shrink = np.full(X.shape[1], self.ridge)
        shrink[-1] = 0.0
        return np.linalg.lstsq(X.T @ X + np.diag(shrink), X.T @ y, rcond=None)[0]

    def fit(self, archs: Sequence[str], maps: Sequence[float], costs: Sequence[float]) -> "AdditivePredictor":
        """Fit on evaluated candidates (costs > 0: the cost is fitted in log space)."""
        maps, costs = np.asarray(maps, dtype=float), np.asarray(costs, dtype=float)
        if not (len(archs) == len(maps) == len(costs)) or len(archs) == 0:
            raise SmnasError(f"predictor: {len(archs)} archs, {len(maps)} mAPs, {len(costs)} costs: "
                             "need as many of each, at least one")
        if not (np.isfinite(maps).all() and np.isfinite(costs).all() and (costs > 0).all()):
            raise SmnasError("predictor: every evaluated candidate needs a finite mAP and a positive cost")
        self.columns = sorted({c for a in archs for c in module_choices(parse_spec(a))})
        X = self._matrix(archs)
        self.w_map = self._solve(X, maps)
        self.w_cost = self._solve(X, np.log(costs))
        return self

    def predict(self, archs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (mAP, cost) of each arch (mAP clipped to [0, 1])."""
        X = self._matrix(archs)
        return np.clip(X @ self.w_map, 0.0, 1.0), np.exp(X @ self.w_cost)


def _front_hv(maps: list[float], costs: list[float], bound: float) -> float:
    F = np.column_stack([-np.asarray(maps, dtype=float), np.asarray(costs, dtype=float) / bound])
    return hypervolume(F, [0.0, 1.0])


def screen_children(population: pd.DataFrame, children: Sequence[str], n: int, cost: str,
                    acc: str = "map", ridge: float = 1.0) -> tuple[list[int], dict[str, Any]]:
    """The ``n`` children whose predicted objectives add the most hypervolume to the population's.

    Args:
        population: the evaluated candidates (arch, status, ``acc``, ``cost``); only "ok" rows
            with finite objectives are used.
        children: the candidate children's archs, in the order evolution made them (ties keep
            that order).
        n: how many to keep.
        cost: the cost column minimised beside ``acc``.

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
    predictor = AdditivePredictor(ridge).fit(ok["arch"].tolist(), ok[acc].to_numpy(float), ok[cost].to_numpy(float))
    pmap, pcost = predictor.predict(list(children))
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
