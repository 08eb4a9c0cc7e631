"""Plots and summary tables of a search (also shown in ``snakemake --report``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from smnas.io import atomic_open, atomic_path  # noqa: E402
from smnas.models.encoding import is_encoding, parse_encoding  # noqa: E402
from smnas.search.tables import write_table  # noqa: E402

COST_LABELS = {"latency_ms": "inference time (ms, batch 1)", "gmacs": "GMACs (whole detector)",
               "backbone_gmacs": "backbone GMACs"}


def _finish(fig, ax, xlabel: str, title: str, path: str | Path, legend_size: int = 8) -> None:
    """The house form of a mAP plot: labels, grid, legend; then written atomically."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("COCO mAP (val)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_fronts(populations: list[pd.DataFrame], cost: str, path: str | Path, title: str) -> None:
    """mAP against cost; each generation's Pareto front in its own colour (the paper's figures)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    last = populations[-1]
    ok = last[last["status"] == "ok"]
    ax.scatter(ok[cost], ok["map"], c="0.75", s=16, label="all evaluated", zorder=1)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(populations)))
    for g, (pop, colour) in enumerate(zip(populations, colours)):
        front = pop[(pop["front_rank"] == 0) & (pop["status"] == "ok")].sort_values(cost)
        ax.plot(front[cost], front["map"], "o-", c=colour, ms=5, label=f"front after gen {g}", zorder=2 + g)
    _finish(fig, ax, COST_LABELS.get(cost, cost), title, path, legend_size=8)


def plot_group_fronts(fronts: list[pd.DataFrame], union: pd.DataFrame, cost: str, path: str | Path,
                      labels: list[str] | None = None, title: str = "stage2: each group's front and the union") -> None:
    """Each search's front in its own colour (``labels``, default "group C0", ...), and the
    front over all of them."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    colours = plt.cm.tab10(np.arange(len(fronts)) % 10)
    for i, (front, colour) in enumerate(zip(fronts, colours)):
        if len(front):
            f = front.sort_values(cost)
            label = labels[i] if labels else f"group {f['group'].iloc[0]}" if "group" in f else "group"
            ax.plot(f[cost], f["map"], "o-", c=colour, ms=5, alpha=0.8, label=label)
    u = union.sort_values(cost)
    ax.plot(u[cost], u["map"], "k--", lw=1, label="front over all", zorder=5)
    _finish(fig, ax, COST_LABELS.get(cost, cost), title, path, legend_size=8)


def write_front(populations: list[str | Path], cost: str, front_out: str | Path, plot_out: str | Path, title: str) -> pd.DataFrame:
    """The last population's first front as a table (sorted by cost), and the fronts plot."""
    pops = [pd.read_parquet(p) for p in populations]
    last = pops[-1]
    front = last[(last["front_rank"] == 0) & (last["status"] == "ok")].sort_values(cost)
    write_table(front, front_out)
    plot_fronts(pops, cost, plot_out, title)
    return front


def backbone_factors(arch: str) -> dict[str, float] | None:
    """Depth, base width, mean relative position of the channel doublings and the share of
    blocks per stage of an architecture's backbone encoding (None for a named backbone)."""
    backbone = arch.split("+")[0]
    if not is_encoding(backbone):
        return None
    enc = parse_encoding(backbone)
    blocks = "".join(enc.stages)
    doubling = [i / max(len(blocks) - 1, 1) for i, ch in enumerate(blocks) if ch == "2"]
    out = {"depth": float(enc.num_blocks), "base_width": float(enc.base_channels),
           "doubling_position": float(np.mean(doubling)) if doubling else np.nan}
    for i, stage in enumerate(enc.stages):
        out[f"share_stage{i + 2}"] = len(stage) / enc.num_blocks
    return out


def factor_correlations(population: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation of each backbone factor with mAP, over all models and over the front."""
    ok = population[population["status"] == "ok"]
    rows = [(f | {"map": m, "front": r == 0}) for a, m, r in zip(ok["arch"], ok["map"], ok["front_rank"])
            if (f := backbone_factors(a)) is not None]
    df = pd.DataFrame(rows)
    out = []
    if len(df):
        for factor in [c for c in df.columns if c not in ("map", "front")]:
            for subset, part in (("all", df), ("front", df[df["front"]])):
                rho = part[factor].corr(part["map"], method="spearman") if len(part) > 2 else np.nan
                out.append({"factor": factor, "models": subset, "n": len(part), "spearman_rho": rho})
    return pd.DataFrame(out, columns=["factor", "models", "n", "spearman_rho"])


def plot_factor_correlations(corr: pd.DataFrame, path: str | Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    if len(corr):
        wide = corr.pivot(index="factor", columns="models", values="spearman_rho")
        wide.plot.barh(ax=ax)
    ax.axvline(0, c="k", lw=0.8)
    ax.set_xlabel("Spearman correlation with mAP")
    ax.set_title("backbone factors (stage-two models)")
    fig.tight_layout()
    _save(fig, path)


def metrics_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per final, baseline or transfer model from its metrics.json (kind from the path)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        row = json.loads(path.read_text())
        kind = path.parts[-3] if path.parts[-3] in ("final", "baselines") else f"transfer_{path.parts[-3]}"
        rows.append({"kind": kind, "name": path.parent.name} | {k: row.get(k) for k in (
            "arch", "status", "map", "map50", "map75", "maps", "mapm", "mapl", "voc_map50", "latency_ms", "gmacs", "params")})
    return pd.DataFrame(rows)


def plot_speed_accuracy(search: pd.DataFrame, models: pd.DataFrame, path: str | Path) -> None:
    """mAP against measured latency: stage one's candidates and front (short training), and the
    final models beside the hand-designed baselines (same recipe, same device, same run): the
    figure the SM-NAS paper draws against FPN, RetinaNet and Cascade R-CNN.

    Args:
        search: a ranked stage-one population (arch, status, map, latency_ms, front_rank).
        models: :func:`metrics_table` rows of kinds final and baselines.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ok = search[(search["status"] == "ok") & search["latency_ms"].notna()]
    ax.scatter(ok["latency_ms"], ok["map"], c="0.8", s=14, label="stage-one candidates (short training)")
    front = ok[ok["front_rank"] == 0].sort_values("latency_ms")
    ax.plot(front["latency_ms"], front["map"], "-", c="0.6", lw=1, label="stage-one front")
    for kind, marker, colour in (("final", "*", "tab:red"), ("baselines", "s", "tab:blue")):
        rows = models[(models["kind"] == kind) & (models["status"] == "ok")]
        if rows.empty:  # baselines not run: no empty legend entry
            continue
        ax.scatter(rows["latency_ms"], rows["map"], marker=marker, s=90 if marker == "*" else 45, c=colour,
                   label="searched, final recipe" if kind == "final" else "hand-designed, final recipe", zorder=3)
        for _, r in rows.iterrows():
            ax.annotate(r["name"], (r["latency_ms"], r["map"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    _finish(fig, ax, COST_LABELS["latency_ms"], "speed and accuracy: searched vs hand-designed", path, legend_size=7)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_open(path) as f:
        df.to_csv(f, index=False)
