"""A search generation's tables: the candidates it samples, and the population it ranks.

    table = sample_generation("stage2", 1, settings, seed=0, population=previous, group="C0", cost=...)
    write_arch_files(table, "results/stage2/candidates")   # what each candidate's jobs read
    population = rank_generation(candidates, metrics, previous, cost="gmacs")
    union = union_front(group_fronts, cost="gmacs")       # stage two's front over its groups
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from smnas.io import atomic_open
from smnas.models.spec import DetectorSpec, parse_spec, spec_hash
from smnas.search.remeasure import apply_samples
from smnas.search.space import StageOneSpace, StageTwoSpace
from smnas.search.tables import make_table, rank_population

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSettings:
    """What the sample step of a stage reads from the config: its budget, space and cost."""

    population: int  # candidates trained per generation (per group in stage two)
    space: StageOneSpace | StageTwoSpace
    cost: str  # the cost column minimised beside mAP (latency_ms, gmacs, backbone_gmacs)
    strategy: str = "evolution"  # or "random": generations g > 0 drawn uniformly (the baseline)
    screen: int = 1  # children made per child trained, the predictor keeping the best (1: none)
    max_ops: int = 1  # stage two: edits per child of generations g > 0, drawn from 1..max_ops


def sample_generation(stage: str, generation: int, settings: StageSettings, seed: int,
                      population: str | Path | None = None, group: str = "", structure: str | None = None,
                      cost: Callable[[DetectorSpec], float] | None = None,
                      measure: Callable[[DetectorSpec], float] | None = None) -> pd.DataFrame:
    """Generation ``generation``'s candidates (the workflow's sample/mutate step).

    Stage one, g = 0: a seeded sample of the space. Stage two, g = 0 of group ``group``: the
    group's stage-one ``structure`` with its backbone as an encoding, and mutations of it. g > 0:
    mutations of the front of generation g-1 (``population``, ranked: in stage two the group's
    own, each child 1..``settings.max_ops`` edits from its parent), never an architecture
    evaluated before (``settings.screen`` > 1: that many children per place, a predictor keeping
    the most promising, :mod:`smnas.search.predictor`); with
    ``settings.strategy == "random"``, uniform draws from the space (stage two: inside
    ``structure``) instead. With ``cost`` (stage two), Partial Order Pruning judges each child
    against the same population, so against its own group only (pruned rows are kept, with the
    reason, and are not trained). With ``measure`` (a screen whose cost is measured time), each
    child the screen judges is first measured with it (timed untrained), so that the predictor
    predicts its mAP only; the figure is the row's "cost".

    Returns:
        The candidates table (:func:`candidates_table`).
    """
    from smnas.search.evolution import initial_generation, mutator, next_generation
    from smnas.search.random_search import random_generation

    n, space = settings.population, settings.space
    key = f"{stage}/{group}" if group else stage  # each group draws its own random numbers
    if generation == 0 and isinstance(space, StageOneSpace):
        rows = initial_generation(key, n, seed, space1=space)
    elif generation == 0:
        if structure is None:
            raise ValueError("stage two's generation 0 needs its group's stage-one structure")
        rows = initial_generation(key, n, seed, structures=[parse_spec(structure)], space2=space, cost=cost)
    elif settings.strategy == "random":  # generation 0 is shared with the evolution: a paired comparison
        seen = set(pd.read_parquet(population)["arch"])
        first = None if isinstance(space, StageOneSpace) else parse_spec(structure)
        rows = random_generation(key, generation, n, seed, space1=space if first is None else None,
                                 space2=None if first is None else space, structure=first, evaluated=seen)
    else:
        pop = pd.read_parquet(population)
        mutate = mutator(space, settings.max_ops)
        rows = next_generation(pop, key, generation, n, seed, mutate, set(pop["arch"]), cost=cost,
                               screen=settings.screen, screen_cost=settings.cost,
                               measure=measure)
    for row in rows:
        row.update(stage=stage, group=group)
    table = candidates_table(rows)
    log.info("%s generation %d: %d pending, %d pruned", key, generation,
             (table["status"] == "pending").sum(), (table["status"] == "pruned").sum())
    for _, row in table[table["status"] == "pruned"].iterrows():
        log.info("pruned %s: %s", row["arch"], row["reason"])
    return table


def candidates_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows with arch/stage/group/generation/parent/init/status/reason(/cost), plus the folder hash."""
    df = pd.DataFrame(rows, columns=["arch", "stage", "group", "generation", "parent", "init", "status", "reason", "cost"])
    for col in ("group", "init"):
        df[col] = [g if isinstance(g, str) else "" for g in df[col]]
    df["generation"] = df["generation"].astype(int)
    df["hash"] = [spec_hash(a) for a in df["arch"]]
    df["cost"] = df["cost"].astype(float)
    return df


def write_arch_files(table: pd.DataFrame, candidates_dir: str | Path) -> list[Path]:
    """``{candidates_dir}/{hash}/arch.txt`` of every pending candidate: the architecture that its
    train, time and evaluate jobs declare as input.

    A file that exists is left alone: its content is a function of its folder's hash, and a new
    modification time would make Snakemake retrain a candidate evaluated before.
    """
    paths = []
    for arch, hash_ in zip(table.loc[table["status"] == "pending", "arch"], table.loc[table["status"] == "pending", "hash"]):
        path = Path(candidates_dir) / hash_ / "arch.txt"
        if not path.exists():
            with atomic_open(path) as f:
                f.write(f"{arch}\n")
        paths.append(path)
    return paths


def rank_generation(candidates: str | Path, metrics: list[str | Path], previous: list[str | Path],
                    cost: str, samples: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """Population after generation g: the previous population, this generation's evaluated
    candidates (from their metrics.json) and its pruned ones, ranked into fronts.

    ``samples``: the latency measurements of the architectures timed again (the retime job,
    :mod:`smnas.search.remeasure`); their ``latency_ms`` becomes the median."""
    table = pd.read_parquet(candidates)
    meta = table.set_index("arch")
    rows = []
    for path in metrics:
        row = json.loads(Path(path).read_text())
        info = meta.loc[row["arch"]]
        row.update(stage=info["stage"], group=info["group"], generation=int(info["generation"]), parent=info["parent"],
                   init=info.get("init", ""))
        rows.append(row)
    for _, pruned in table[table["status"] == "pruned"].iterrows():
        rows.append({k: pruned.get(k, "") for k in ("arch", "stage", "group", "generation", "parent", "init", "status", "reason")}
                    | ({cost: pruned["cost"]} if "cost" in pruned and pd.notna(pruned["cost"]) else {}))
    new = make_table(rows)
    frames = [pd.read_parquet(p) for p in previous] + [new]
    population = pd.concat([f for f in frames if len(f)], ignore_index=True)
    return rank_population(apply_samples(population, samples or {}), cost)


def union_front(fronts: list[pd.DataFrame], cost: str) -> pd.DataFrame:
    """The non-dominated set of several fronts (stage two's groups), ranked again, cheapest first."""
    frames = [f for f in fronts if len(f)]
    if not frames:
        raise ValueError("no group has an evaluated model: stage two has no front")
    both = rank_population(pd.concat(frames, ignore_index=True), cost)
    return both[both["front_rank"] == 0].sort_values([cost, "arch"]).reset_index(drop=True)
