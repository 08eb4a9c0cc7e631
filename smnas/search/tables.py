"""Search tables: one row per evaluated candidate, ranked into Pareto fronts.

Columns (the README documents them): arch (canonical spec string), stage, group (a stage-two
search group, C0..; "" in stage one), generation, parent, init (how an SP-NAS candidate
started: pretrained, inherited or reignited; "" elsewhere),
status (ok / failed / pruned), reason, map, map50, latency_ms (the median of latency_samples
measurements: more than one for a front member, smnas/search/remeasure.py), gmacs, params, device,
train_seconds, epochs, front_rank (0 = Pareto front; -1 = not ranked: failed or pruned),
crowding (crowding distance within its front; inf at a front's ends).
Objectives: maximise map, minimise the cost column (latency_ms in stage one, gmacs in stage two).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smnas.io import atomic_path
from smnas.search.pareto import crowding_distance, non_dominated_sort

COLUMNS = ["arch", "stage", "group", "generation", "parent", "init", "status", "reason", "map", "map50", "map75", "maps", "mapm",
           "mapl", "latency_ms", "latency_samples", "gmacs", "params", "backbone_gmacs", "backbone_params", "device", "train_seconds",
           "epochs", "front_rank", "crowding"]


def rank_population(df: pd.DataFrame, cost: str) -> pd.DataFrame:
    """Add ``front_rank`` and ``crowding`` by non-dominated sorting of (-map, cost) (pareto.py).

    Rows whose status is not "ok" get front_rank -1 and crowding NaN.
    """
    df = df.copy()
    df["front_rank"] = -1
    df["crowding"] = np.nan
    ok = df.index[df["status"] == "ok"]
    if len(ok):
        objectives = np.column_stack([-df.loc[ok, "map"].to_numpy(float), df.loc[ok, cost].to_numpy(float)])
        bad = ~np.isfinite(objectives).all(axis=1)
        if bad.any():
            row = df.loc[ok[bad][0]]
            raise ValueError(f"row with arch {row['arch']!r} has status ok but map={row['map']}, {cost}={row[cost]}: "
                             "an evaluated candidate needs finite objectives")
        for rank, members in enumerate(non_dominated_sort(objectives)):
            idx = ok[members]
            df.loc[idx, "front_rank"] = rank
            df.loc[idx, "crowding"] = crowding_distance(objectives[members])
    return df


def make_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts of evaluate_candidate plus stage/generation/parent) as a table in COLUMNS order."""
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = np.nan if col not in ("arch", "group", "status", "reason", "device", "parent", "init") else ""
    return df[COLUMNS]


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write a Parquet table atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
