"""A measured cost's front, measured again: the members of the Pareto front are timed in other
windows until each has several measurements, and their latency becomes the median.

One latency measurement on a shared machine can land in a slow (or fast) window; when the cost is
measured time, that one figure decides who is on the front and so which architectures the next
generation mutates. On one 12-generation search (docs/evidence.md section 4), a candidate timed
at 18.5 ms in its one window re-timed at 11.1 ms (the fastest of 69), and slower variants that had
looked faster joined it on the front. Only the front steers the search, and re-timing costs
seconds where training costs minutes, so the front's members are measured again, not every
candidate. The noise belongs to the moment, not to the process (bench/latency_processes.py), so
one job's passes are as good as several jobs'.

    samples = remeasure_front(population, samples, measure, measurements=3)   # the retime job
    population = apply_samples(population, samples)                           # the rank job

``samples`` maps an architecture to all its measurements so far, the time rule's first;
architectures never re-timed are absent (their one measurement is their ``latency_ms``).
"""
from __future__ import annotations

import logging
import statistics
from typing import Callable

import numpy as np
import pandas as pd

from smnas.search.tables import rank_population

log = logging.getLogger(__name__)

Samples = dict[str, list[float]]


def apply_samples(population: pd.DataFrame, samples: Samples) -> pd.DataFrame:
    """``latency_ms`` of every re-timed row set to the median of its measurements, and
    ``latency_samples`` to their count (1 for a row with one measurement; NaN without a latency).

    Args:
        population: a search table (:mod:`smnas.search.tables`).
        samples: architecture -> its measurements in ms (the first is the time rule's).

    Returns:
        A copy of ``population``; not ranked again.
    """
    df = population.copy()
    has_latency = df["latency_ms"].notna()
    df["latency_samples"] = np.where(has_latency, 1.0, np.nan)
    for arch, times in samples.items():
        rows = df["arch"] == arch
        if rows.any() and times:
            df.loc[rows, "latency_ms"] = statistics.median(times)
            df.loc[rows, "latency_samples"] = float(len(times))
    return df


def remeasure_front(population: pd.DataFrame, samples: Samples, measure: Callable[[str], float],
                    measurements: int, cost: str = "latency_ms") -> Samples:
    """Time the front's members again until each has ``measurements`` measurements.

    Each pass re-ranks the population with the medians so far and times once more every front
    member that has fewer, one after the other, so that one member's measurements come from
    different moments. A member whose median moves may push another row onto the front; that
    one is timed in the next pass. It ends when every member of the front has enough.

    Args:
        population: the population of a generation (unranked or ranked; ranked again here).
        samples: the measurements so far (the previous generation's result; not changed).
        measure: architecture -> one new latency measurement in ms (a whole timing pass).
        measurements: how many measurements a front member needs (1: none is taken again).
        cost: the cost column ranked beside mAP; only ``latency_ms`` is measured (a computed
            cost, as GMACs, has no noise): any other returns ``samples`` unchanged.

    Returns:
        The measurements of every re-timed architecture, the earlier ones first.
    """
    if measurements < 1:
        raise ValueError(f"measurements must be >= 1, got {measurements}")
    samples = {arch: list(times) for arch, times in samples.items()}
    if cost != "latency_ms" or measurements == 1:
        return samples
    while True:
        ranked = rank_population(apply_samples(population, samples), cost)
        front = ranked[ranked["front_rank"] == 0]
        todo = [(arch, ms) for arch, ms in zip(front["arch"], front["latency_ms"])
                if len(samples.get(arch, [ms])) < measurements]
        if not todo:
            return samples
        for arch, ms in todo:
            samples.setdefault(arch, [float(ms)]).append(float(measure(arch)))
            log.info("%s: measured again %.2f ms (%d of %d; median %.2f ms)", arch, samples[arch][-1],
                     len(samples[arch]), measurements, statistics.median(samples[arch]))
