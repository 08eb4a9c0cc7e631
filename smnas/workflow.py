"""Functions behind the Snakemake scripts (scripts/ only unpack ``snakemake`` and call these)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from smnas.data.coco import load_coco  # noqa: E402
from smnas.engine.candidate import DataPaths, evaluate_candidate  # noqa: E402
from smnas.engine.train import TrainConfig  # noqa: E402
from smnas.io import atomic_path  # noqa: E402
from smnas.models.build import DetectorOptions  # noqa: E402
from smnas.models.spec import parse_spec  # noqa: E402
from smnas.search.tables import make_table, rank_population, write_table  # noqa: E402


def setup_logging(log_file: str | Path) -> None:
    """Send this process's log records to ``log_file`` (and stderr)."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(log_file, mode="w"), logging.StreamHandler()], force=True)


def coco_paths(root: str | Path) -> DataPaths:
    """The COCO layout the built-in dataset writes (and ``smnas train --data`` reads)."""
    root = Path(root)
    return DataPaths(str(root / "annotations/instances_train.json"), str(root / "train"),
                     str(root / "annotations/instances_val.json"), str(root / "val"))


def evaluate_from_config(arch: str, data_root: str | Path, out_dir: str | Path, seed: int, device: str,
                         train: dict[str, Any], detector: dict[str, Any], latency_runs: int) -> dict[str, Any]:
    """One candidate of the workflow: config dicts to typed settings, then evaluate_candidate."""
    data = coco_paths(data_root)
    num_classes = len(load_coco(data.train_json, check_images=False)["categories"])
    return evaluate_candidate(parse_spec(arch), data, TrainConfig(seed=seed, **train),
                              DetectorOptions(num_classes=num_classes, **detector), out_dir,
                              device=device, latency_runs=latency_runs, progress=False)


def collect_generation(metrics: list[str | Path], stage: str, generation: int, cost: str) -> pd.DataFrame:
    """Rows of metrics.json files as a ranked population table."""
    rows = []
    for path in metrics:
        row = json.loads(Path(path).read_text())
        row.update(stage=stage, generation=generation, parent=row.get("parent", ""))
        rows.append(row)
    return rank_population(make_table(rows), cost)


def plot_front(df: pd.DataFrame, cost: str, path: str | Path, title: str) -> None:
    """mAP against cost, Pareto front joined by a line; written atomically as PNG."""
    ok = df[df["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.scatter(ok[cost], ok["map"], c="0.6", s=18, label="evaluated")
    front = ok[ok["front_rank"] == 0].sort_values(cost)
    ax.plot(front[cost], front["map"], "o-", c="tab:red", label="Pareto front")
    ax.set_xlabel({"latency_ms": "inference time (ms, batch 1)", "gmacs": "GMACs"}.get(cost, cost))
    ax.set_ylabel("COCO mAP (val)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_generation(df: pd.DataFrame, population: str | Path, front: str | Path, plot: str | Path, cost: str, title: str) -> None:
    write_table(df, population)
    write_table(df[df["front_rank"] == 0].sort_values(cost), front)
    plot_front(df, cost, plot, title)
