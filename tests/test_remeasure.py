"""Re-timing a search's front (smnas/search/remeasure.py) with a fake clock: who is timed again,
how often, and how the medians re-rank the population."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from smnas.search.remeasure import apply_samples, remeasure_front
from smnas.search.tables import make_table, rank_population


def _population(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    return make_table([{"arch": a, "status": "ok", "map": m, "latency_ms": ms} for a, m, ms in rows])


def _clock(times: dict[str, list[float]]):
    """measure(arch): the next of ``times[arch]``; records the order of the calls."""
    calls: list[str] = []

    def measure(arch: str) -> float:
        calls.append(arch)
        return times[arch].pop(0)
    return measure, calls


def test_a_slow_window_is_outvoted_and_the_front_changes():
    # "fast" was timed in a slow window (18.5 ms; really ~11): "slower" sits on the front beside it
    pop = _population([("fast", 0.37, 18.5), ("slower", 0.34, 14.4), ("bad", 0.20, 30.0)])
    assert set(rank_population(pop, "latency_ms").query("front_rank == 0")["arch"]) == {"fast", "slower"}
    measure, calls = _clock({"fast": [11.1, 11.5], "slower": [14.0, 14.6]})
    samples = remeasure_front(pop, {}, measure, measurements=3)
    assert samples == {"fast": [18.5, 11.1, 11.5], "slower": [14.4, 14.0, 14.6]}
    assert calls == ["fast", "slower", "fast", "slower"]  # one pass at a time: other moments
    ranked = rank_population(apply_samples(pop, samples), "latency_ms").set_index("arch")
    assert ranked.loc["fast", "latency_ms"] == 11.5 and ranked.loc["fast", "latency_samples"] == 3
    assert ranked.loc["slower", "front_rank"] == 1 and ranked.loc["bad", "latency_samples"] == 1


def test_a_row_that_joins_the_front_is_timed_too_and_earlier_samples_count():
    # "quick" looked fast once (5 ms) and dominated "steady"; timed again it is slow, so "steady"
    # joins the front and needs its own measurements. "old" had 3 already: never timed again.
    pop = _population([("quick", 0.30, 5.0), ("steady", 0.29, 6.0), ("old", 0.50, 40.0)])
    earlier = {"old": [41.0, 40.0, 39.0]}
    measure, calls = _clock({"quick": [9.0, 9.5], "steady": [6.1, 5.9]})
    samples = remeasure_front(pop, earlier, measure, measurements=3)
    assert calls == ["quick", "quick", "steady", "steady"]
    assert samples["steady"] == [6.0, 6.1, 5.9] and samples["old"] == [41.0, 40.0, 39.0]
    assert earlier == {"old": [41.0, 40.0, 39.0]}  # the caller's dict is left as it was
    front = rank_population(apply_samples(pop, samples), "latency_ms").query("front_rank == 0")
    assert set(front["arch"]) == {"quick", "steady", "old"}  # steady joined: quick is slower than it


def test_nothing_is_timed_for_a_computed_cost_or_one_measurement():
    pop = _population([("a", 0.3, 5.0)])
    pop["gmacs"] = 1.0

    def never(arch: str) -> float:
        raise AssertionError("timed")
    assert remeasure_front(pop, {"a": [5.0, 6.0]}, never, measurements=3, cost="gmacs") == {"a": [5.0, 6.0]}
    assert remeasure_front(pop, {}, never, measurements=1) == {}
    with pytest.raises(ValueError, match="measurements must be >= 1"):
        remeasure_front(pop, {}, never, measurements=0)


def test_apply_samples_leaves_failed_rows_without_a_count():
    pop = make_table([{"arch": "a", "status": "ok", "map": 0.3, "latency_ms": 5.0},
                      {"arch": "b", "status": "failed", "reason": "oom"}])
    out = apply_samples(pop, {"a": [5.0, 7.0]}).set_index("arch")
    assert out.loc["a", "latency_ms"] == 6.0 and out.loc["a", "latency_samples"] == 2
    assert math.isnan(out.loc["b", "latency_samples"])
    assert math.isnan(pop.set_index("arch").loc["a", "latency_samples"])  # a copy: the input is unchanged
