"""Pareto selection against brute-force definitions; rank_population uses it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smnas.search.pareto import crowding_distance, front_ranks, hypervolume, non_dominated_sort
from smnas.search.tables import rank_population


def fronts_by_definition(F: np.ndarray) -> list[list[int]]:
    """Peel fronts: the points no remaining point dominates (O(n^2) per front)."""
    left, fronts = list(range(len(F))), []
    while left:
        front = [i for i in left if not any(
            (F[j] <= F[i]).all() and (F[j] < F[i]).any() for j in left if j != i)]
        fronts.append(front)
        left = [i for i in left if i not in front]
    return fronts


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40), st.integers(1, 3), st.integers(0, 2**32 - 1), st.sampled_from([3, 1000]))
def test_non_dominated_sort_matches_brute_force(n, m, seed, levels):
    """Integer grids with few levels give many ties and duplicate points."""
    F = np.random.default_rng(seed).integers(0, levels, size=(n, m)).astype(float)
    got = [sorted(f.tolist()) for f in non_dominated_sort(F)]
    assert got == fronts_by_definition(F)
    assert sorted(i for f in got for i in f) == list(range(n))


def test_duplicates_share_a_front_and_ranks():
    F = np.array([[1, 2], [1, 2], [0, 3], [2, 1], [2, 2], [3, 3]], float)
    assert [f.tolist() for f in non_dominated_sort(F)] == [[0, 1, 2, 3], [4], [5]]
    assert front_ranks(F).tolist() == [0, 0, 0, 0, 1, 2]
    assert non_dominated_sort(np.zeros((0, 2))) == []


def test_bad_objectives_are_refused():
    with pytest.raises(ValueError, match=r"F\[1, 0\] is nan"):
        non_dominated_sort(np.array([[0.0, 1.0], [np.nan, 2.0]]))
    with pytest.raises(ValueError, match="2-d"):
        non_dominated_sort(np.zeros(3))


def test_crowding_distance_values():
    F = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    cd = crowding_distance(F)
    # inner points: (gap in f1 / 4 + gap in f2 / 4) / 2
    assert np.isinf(cd[0]) and np.isinf(cd[3])
    assert cd[1] == pytest.approx(((3 - 0) / 4 + (4 - 1) / 4) / 2)
    assert cd[2] == pytest.approx(((4 - 1) / 4 + (2 - 0) / 4) / 2)
    assert np.isinf(crowding_distance(F[:2])).all() and len(crowding_distance(np.zeros((0, 2)))) == 0


def test_hypervolume_of_a_staircase():
    F = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.5, 3.5]])
    # union of [1,4]x[3,4], [2,4]x[2,4], [3,4]x[1,4] = 3 + 2 + 1 = 6; the last point adds nothing
    assert hypervolume(F, [4.0, 4.0]) == pytest.approx(6.0)
    assert hypervolume(F[:0], [4.0, 4.0]) == 0.0
    assert hypervolume(np.array([[5.0, 0.0]]), [4.0, 4.0]) == 0.0  # outside the reference box
    with pytest.raises(ValueError, match="2 objectives"):
        hypervolume(F, [4.0])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_hypervolume_by_monte_carlo_grid(n, seed):
    """On an integer grid the volume is a count of dominated unit cells."""
    F = np.random.default_rng(seed).integers(0, 6, size=(n, 2)).astype(float)
    cells = [(x, y) for x in range(6) for y in range(6)]
    count = sum(any(f[0] <= x and f[1] <= y for f in F) for x, y in cells)
    assert hypervolume(F, [6.0, 6.0]) == pytest.approx(count)


def test_rank_population():
    df = pd.DataFrame({
        "arch": list("abcdef"), "status": ["ok", "ok", "ok", "failed", "ok", "pruned"],
        "map": [0.30, 0.20, 0.25, np.nan, 0.30, np.nan], "latency_ms": [10.0, 5.0, 12.0, np.nan, 20.0, np.nan],
    })
    out = rank_population(df, "latency_ms")
    assert out["front_rank"].tolist() == [0, 0, 1, -1, 1, -1]
    assert np.isinf(out.loc[[0, 1], "crowding"]).all() and out.loc[[3, 5], "crowding"].isna().all()
    assert "front_rank" not in df  # the input is left alone
    df.loc[4, "map"] = np.nan
    with pytest.raises(ValueError, match="arch 'e' has status ok but map=nan"):
        rank_population(df, "latency_ms")
