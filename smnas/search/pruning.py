"""Partial Order Pruning (Li et al., CVPR 2019): skip candidates that cannot reach the front.

The prior: a model that contains another (deeper and/or wider, otherwise equal;
:func:`spec_contains`) is at least as accurate. So an untrained candidate
c is pruned when

    there is an evaluated a with spec_contains(a, c)          (acc(c) <= acc(a) by the prior)
    and an evaluated b with cost(b) <= cost(c), acc(b) >= acc(a)

because then b is at least as cheap and at least as accurate as c can be. Costs (backbone MACs)
are known before training, accuracies only after: that is what makes the skip pay.

    pruner = PartialOrderPruner(archs, costs, accs)     # the evaluated models
    record = pruner.check(candidate_spec, candidate_cost)   # None, or why it is skipped
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from smnas.models.encoding import Encoding, parse_encoding
from smnas.models.spec import DetectorSpec, parse_spec


def contains(a: Encoding, b: Encoding) -> bool:
    """True if ``b`` is a sub-network of ``a``: ``a`` is deeper and/or wider, otherwise equal.

    Definition: same block type, same number of stages, ``a.base_channels >= b.base_channels``
    (the stem), and for every stage s there is an order-preserving injection phi from b's blocks
    of stage s into a's blocks of stage s with ``width_a(phi(j)) >= width_b(j)`` for every block j
    and ``width_a(last of s) >= width_b(last of s)`` (the stage's output, which the neck reads).
    Widths are :meth:`Encoding.stage_channels` (block widths; bottlenecks expand both by 4).

    So ``b`` is ``a`` with some blocks removed (a residual block can be the identity) and some
    channels dropped. Widths never fall along a network, so the best injection maps b's blocks
    onto the *last* ``len(b_s)`` blocks of a's stage s; that alignment is what is tested here
    (``tests/test_encoding.py`` checks it against every injection).
    """
    if a.block != b.block or len(a.stages) != len(b.stages) or a.base_channels < b.base_channels:
        return False
    for wa, wb in zip(a.stage_channels(), b.stage_channels()):
        if len(wa) < len(wb):
            return False
        if any(x < y for x, y in zip(wa[len(wa) - len(wb):], wb)):
            return False
    # SP-NAS parallel sub-networks copy their stage's blocks: a contains b's copies if it has as many
    return all(x >= y for x, y in zip(_counts(a), _counts(b)))


def _counts(enc: Encoding) -> tuple[int, ...]:
    return enc.parallel or (0,) * len(enc.stages)


def spec_contains(a: DetectorSpec, b: DetectorSpec) -> bool:
    """True if detector ``a`` contains ``b``: the same structure, a deeper/wider backbone, wider FPN.

    Same neck kind and levels, RPN, head (kind, stages, FC width), input size and norm; backbone
    encodings with :func:`contains` (named backbones must be equal); ``a``'s FPN channels >= ``b``'s.
    """
    na, nb = a.neck, b.neck
    if (na.kind, na.first, na.last) != (nb.kind, nb.first, nb.last) or na.channels < nb.channels:
        return False
    if (a.rpn, a.head, a.input_size, a.norm) != (b.rpn, b.head, b.input_size, b.norm):
        return False
    if a.backbone.is_encoding and b.backbone.is_encoding:
        return contains(parse_encoding(a.backbone.name), parse_encoding(b.backbone.name))
    return a.backbone == b.backbone


@dataclass(frozen=True)
class PruneRecord:
    """Why a candidate was skipped: the model containing it, and the one that beats that model."""

    candidate: str
    candidate_cost: float
    container: str  # a: contains the candidate, so acc(candidate) <= container_acc
    container_acc: float
    container_cost: float
    dominator: str  # b: dominator_cost <= candidate_cost and dominator_acc >= container_acc
    dominator_acc: float
    dominator_cost: float

    @property
    def reason(self) -> str:
        return (f"partial order pruning: contained in {self.container} (acc {self.container_acc:.4g}, "
                f"cost {self.container_cost:.4g}); {self.dominator} has acc {self.dominator_acc:.4g} >= "
                f"{self.container_acc:.4g} at cost {self.dominator_cost:.4g} <= {self.candidate_cost:.4g}")


def _structure_key(spec: DetectorSpec) -> Hashable:
    """What two specs must share for one to contain the other (all but depth and widths)."""
    bb = spec.backbone
    if bb.is_encoding:
        enc = parse_encoding(bb.name)
        family: Hashable = ("encoding", enc.block, len(enc.stages))
    else:
        family = str(bb)
    n = spec.neck
    return (n.kind, n.first, n.last, spec.rpn, spec.head, tuple(spec.input_size), spec.norm, family)


def _widths(spec: DetectorSpec, longest: int) -> np.ndarray | None:
    """Block widths per stage, right-aligned in ``longest`` columns, zeros on the left; flat.

    With this layout :func:`contains` (a, b) is ``base_a >= base_b and (W_a >= W_b).all()``:
    b's blocks face a's last blocks of each stage (the alignment contains() tests), and a zero
    of b (no block) asks nothing of a; the parallel counts per stage follow. None if a stage of
    ``spec`` is longer than ``longest``.
    """
    if not spec.backbone.is_encoding:
        return np.zeros(0)
    stages = parse_encoding(spec.backbone.name).stage_channels()
    if max(map(len, stages)) > longest:
        return None
    out = np.zeros((len(stages), longest))
    for i, widths in enumerate(stages):
        out[i, longest - len(widths):] = widths
    # parallel counts last: containment asks for at least as many copies of each stage
    return np.concatenate([out.ravel(), _counts(parse_encoding(spec.backbone.name))])


def _base(spec: DetectorSpec) -> int:
    return parse_encoding(spec.backbone.name).base_channels if spec.backbone.is_encoding else 0


class _Group:
    """Evaluated models of one structure as arrays, so finding containers is one vectorised test."""

    def __init__(self, members: list[int], specs: list[DetectorSpec], accs: np.ndarray) -> None:
        self.index = np.asarray(members, dtype=int)
        self.longest = max((max(map(len, parse_encoding(specs[i].backbone.name).stages))
                            for i in members if specs[i].backbone.is_encoding), default=0)
        self.widths = np.stack([_widths(specs[i], self.longest) for i in members])  # (n, stages * longest)
        self.base = np.array([_base(specs[i]) for i in members])
        self.fpn = np.array([specs[i].neck.channels for i in members])
        self.acc = accs[self.index]

    def containers(self, spec: DetectorSpec, max_acc: float) -> np.ndarray:
        """Indices of the models that contain ``spec`` with acc <= max_acc, lowest accuracy first."""
        widths = _widths(spec, self.longest)
        if widths is None:
            return np.zeros(0, dtype=int)
        mask = (self.base >= _base(spec)) & (self.fpn >= spec.neck.channels) & (self.acc <= max_acc)
        mask &= (self.widths >= widths).all(axis=1)
        hits = np.flatnonzero(mask)
        return self.index[hits[np.lexsort((self.index[hits], self.acc[hits]))]]


class PartialOrderPruner:
    """The evaluated models, indexed for fast POP checks (10,000 models: about 1 ms a check).

    Args:
        archs: (N,) canonical spec strings of evaluated models.
        costs: (N,) their costs (lower is better; e.g. backbone GMACs).
        accs: (N,) their accuracies (higher is better; e.g. mAP).
        specs: the parsed ``archs``, if the caller has them already.
    """

    def __init__(self, archs: Sequence[str], costs: Sequence[float], accs: Sequence[float],
                 specs: Sequence[DetectorSpec] | None = None) -> None:
        self.archs = list(archs)
        self.costs = np.asarray(costs, dtype=float)
        self.accs = np.asarray(accs, dtype=float)
        if not (len(self.archs) == len(self.costs) == len(self.accs)):
            raise ValueError(f"archs, costs and accs differ in length: {len(self.archs)}, {len(self.costs)}, {len(self.accs)}")
        for name, values in (("cost", self.costs), ("accuracy", self.accs)):
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                raise ValueError(f"evaluated model {self.archs[bad[0]]!r}: {name} {values[bad[0]]} is not finite")
        self.specs = list(specs) if specs is not None else [parse_spec(a) for a in self.archs]
        # "best accuracy among models costing <= x" is a bisect into costs sorted ascending
        order = np.lexsort((np.arange(len(self.costs)), self.costs))
        self._sorted_costs = self.costs[order].tolist()
        running = np.maximum.accumulate(self.accs[order]) if len(order) else np.zeros(0)
        firsts = [0] * len(order)
        for k in range(1, len(order)):  # index of the first model reaching the running maximum
            firsts[k] = k if self.accs[order[k]] > running[k - 1] else firsts[k - 1]
        self._best_acc = running
        self._best_idx = order[firsts] if len(order) else np.zeros(0, dtype=int)
        groups: dict[Hashable, list[int]] = {}
        for i, spec in enumerate(self.specs):
            groups.setdefault(_structure_key(spec), []).append(i)
        self._groups = {k: _Group(v, self.specs, self.accs) for k, v in groups.items()}

    def best_within(self, cost: float) -> int | None:
        """Index of the most accurate evaluated model with cost <= ``cost`` (None if none)."""
        k = bisect.bisect_right(self._sorted_costs, cost)
        return int(self._best_idx[k - 1]) if k else None

    def check(self, spec: DetectorSpec, cost: float) -> PruneRecord | None:
        """The POP verdict on an untrained candidate.

        Args:
            spec: the candidate.
            cost: its cost, measured the same way as the evaluated models' costs.

        Returns:
            None if it must be trained; else a PruneRecord naming the container a (the least
            accurate evaluated model containing it that is beaten) and the dominator b.

        Raises:
            ValueError: ``cost`` is NaN or infinite (a NaN would bisect to an arbitrary verdict).
        """
        if not np.isfinite(cost):
            raise ValueError(f"candidate {spec}: cost {cost} is not finite")
        b = self.best_within(cost)
        group = self._groups.get(_structure_key(spec))
        if b is None or group is None:
            return None
        containers = group.containers(spec, self.accs[b])
        if not len(containers):
            return None
        a = int(containers[0])
        return PruneRecord(str(spec), float(cost), self.archs[a], float(self.accs[a]), float(self.costs[a]),
                           self.archs[b], float(self.accs[b]), float(self.costs[b]))
