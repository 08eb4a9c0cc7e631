"""Pareto selection: non-dominated sorting, crowding distance and hypervolume (all minimising).

Rows of ``F`` are points, columns objectives; a search minimises ``(-map, cost)``. Point i
dominates j when it is no worse in every objective and better in one; equal points do not
dominate each other and share a front. The numerics are pymoo's.
"""
from __future__ import annotations

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting


def _check(F: np.ndarray, name: str = "F") -> np.ndarray:
    F = np.asarray(F, dtype=float)
    if F.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (points x objectives), got shape {F.shape}")
    if not np.isfinite(F).all():
        bad = np.argwhere(~np.isfinite(F))[0]
        raise ValueError(f"{name}[{bad[0]}, {bad[1]}] is {F[tuple(bad)]}: objectives must be finite")
    return F


def non_dominated_sort(F: np.ndarray) -> list[np.ndarray]:
    """Split points into fronts; front 0 is the Pareto front.

    Args:
        F: (N, M) objective values, minimised.

    Returns:
        A list of int index arrays into the rows of F, front 0 first, each sorted ascending;
        together they hold every row once. Empty for N = 0.
    """
    F = _check(F)
    if len(F) == 0:
        return []
    return [np.sort(np.asarray(front, dtype=int)) for front in NonDominatedSorting().do(F)]


def front_ranks(F: np.ndarray) -> np.ndarray:
    """(N,) int: the front index of every row of ``F`` (0 = Pareto front)."""
    ranks = np.full(len(F), -1, dtype=int)
    for r, front in enumerate(non_dominated_sort(F)):
        ranks[front] = r
    return ranks


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the points of one front.

    Args:
        F: (N, M) objective values of the members of one front.

    Returns:
        (N,) float: the mean over objectives of the normalised gap between each point's two
        neighbours along that objective; ``inf`` at the ends of any objective (so one or two
        points are all ``inf``); 0 for an objective on which all points are equal.
    """
    F = _check(F)
    if len(F) == 0:
        return np.zeros(0)
    return np.asarray(calc_crowding_distance(F), dtype=float)


def hypervolume(F: np.ndarray, ref: np.ndarray | list[float]) -> float:
    """Volume of objective space dominated by ``F`` and bounded by the reference point ``ref``.

    Args:
        F: (N, M) objective values, minimised; points not strictly better than ``ref`` in every
            objective add nothing.
        ref: (M,) reference point (e.g. (0, max cost) for (-map, cost)).

    Returns:
        The hypervolume (0.0 for no point).
    """
    ref = np.asarray(ref, dtype=float)
    F = _check(F)
    if F.size == 0:
        return 0.0
    if ref.shape != (F.shape[1],):
        raise ValueError(f"reference point has shape {ref.shape}, F has {F.shape[1]} objectives")
    inside = F[(F < ref).all(axis=1)]
    return float(HV(ref_point=ref)(inside)) if len(inside) else 0.0


FRONT_PICKS = ("spread", "hypervolume")  # how k members are picked from a front (config pick keys)


def spread_picks(n: int, k: int) -> np.ndarray:
    """``k`` indices evenly spaced over ``0..n-1``, both ends included (``k <= n``)."""
    # floor(x + 0.5) of points >= 1 apart stays strictly increasing (round() would not: 1.5, 2.5)
    return np.floor(np.linspace(0, n - 1, k) + 0.5).astype(int)


def hypervolume_picks(accuracy: np.ndarray, cost: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` points, chosen one at a time by the hypervolume each adds to those taken.

    Objectives are -accuracy and cost divided by 1.1 x the largest cost, reference point (0, 1),
    as ``bench/evidence.py`` scores a search; ties go to the cheaper point. A front's end that buys
    little cost for much accuracy is left out, where evenly spread picks would take it.

    Args:
        accuracy: (N,) accuracy per point (higher is better), e.g. mAP.
        cost: (N,) positive cost per point.
        k: how many picks (at most N).

    Returns:
        ``k`` distinct indices in the order they were taken.
    """
    accuracy, cost = np.asarray(accuracy, dtype=float), np.asarray(cost, dtype=float)
    if not 0 < k <= len(accuracy) or accuracy.shape != cost.shape:
        raise ValueError(f"hypervolume_picks: {k} picks from {len(accuracy)} accuracies and {len(cost)} costs")
    points = np.c_[-accuracy, cost / (1.1 * cost.max())]
    hv = HV(ref_point=np.array([0.0, 1.0]))
    chosen: list[int] = []
    for _ in range(k):
        rest = [i for i in range(len(points)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (hv(points[chosen + [i]]), -cost[i])))
    return chosen
