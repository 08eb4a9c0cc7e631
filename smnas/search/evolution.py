"""Evolution: the next generation is mutations of the current Pareto front, never seen before.

    rows = next_generation(ranked_table, "stage2", generation=3, n=8, seed=0,
                           mutate=mutator(space2), evaluated=all_archs_so_far, cost=backbone_gmacs)

Parents are the members of front 0 (most isolated first, by crowding distance); when the front
is smaller than the generation, later fronts fill in (by rank, then crowding). Parents take turns;
each try mutates one, and a child whose architecture was already evaluated, pending or chosen is
thrown away and the next parent tried. With a cost function (stage two), Partial Order Pruning
(:mod:`smnas.search.pruning`) judges every new child against the evaluated population; a pruned
child is returned with status "pruned" and its reason, and another child is made in its place.
With ``screen`` > 1, ``screen`` unseen children are made per place and a predictor fitted on the
evaluated population keeps the ``n`` predicted to add most to the front
(:mod:`smnas.search.predictor`; with a cost function, each child's cost is the computed one and
only its mAP is predicted); the others are dropped, not recorded (never trained, they may
come again). The result is a function of (population, stage, generation, n, seed, evaluated) alone.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from smnas.errors import SmnasError, SpecError
from smnas.models.spec import DetectorSpec, parse_spec
from smnas.search.mutation import mutate_stage1, mutate_stage2
from smnas.search.predictor import screen_children
from smnas.search.pruning import PartialOrderPruner
from smnas.search.seeding import seed_spec
from smnas.search.space import StageOneSpace, StageTwoSpace

log = logging.getLogger(__name__)

Mutate = Callable[[DetectorSpec, random.Random], DetectorSpec]
Cost = Callable[[DetectorSpec], float]


def mutator(space: StageOneSpace | StageTwoSpace, max_ops: int = 1) -> Mutate:
    """The mutation function of a stage's space, as :func:`next_generation` takes it (stage two:
    1..``max_ops`` edits per child, :func:`~smnas.search.mutation.mutate_stage2`)."""
    if isinstance(space, StageTwoSpace):
        return lambda spec, rng: mutate_stage2(spec, space, rng, max_ops)
    return lambda spec, rng: mutate_stage1(spec, space, rng)


def generation_rng(seed: int, stage: str, generation: int) -> random.Random:
    """A generator that depends on (seed, stage, generation) only (str seeds hash stably)."""
    return random.Random(f"smnas:{seed}:{stage}:{generation}")


def select_parents(population: pd.DataFrame, n: int) -> list[str]:
    """Archs of front 0, or more when it has fewer than ``n``: by rank, then crowding, then arch.

    Args:
        population: a ranked table (columns arch, front_rank, crowding; -1 = not ranked).
        n: the generation size.

    Returns:
        Distinct archs, most wanted first.
    """
    missing = {"arch", "front_rank", "crowding"} - set(population.columns)
    if missing:
        raise SmnasError(f"population table lacks column(s) {sorted(missing)}: rank it first (tables.rank_population)")
    ranked = population[population["front_rank"] >= 0]
    ranked = ranked.assign(_crowd=-ranked["crowding"].fillna(0.0).to_numpy(float))
    ranked = ranked.sort_values(["front_rank", "_crowd", "arch"]).drop_duplicates("arch")
    if ranked.empty:
        raise SmnasError("no ranked candidate in the population (all failed or pruned?): nothing to mutate")
    front_size = int((ranked["front_rank"] == ranked["front_rank"].min()).sum())
    return ranked["arch"].head(max(n, front_size)).tolist()


def _pruner(population: pd.DataFrame, cost: Cost, acc: str) -> PartialOrderPruner:
    missing = {"status", acc} - set(population.columns)
    if missing:
        raise SmnasError(f"population table lacks column(s) {sorted(missing)} needed for partial order pruning")
    ok = population[(population["status"] == "ok") & np.isfinite(population[acc].to_numpy(float))]
    archs = ok["arch"].tolist()
    specs = [parse_spec(a) for a in archs]
    return PartialOrderPruner(archs, [cost(s) for s in specs], ok[acc].to_numpy(float), specs)


def _children(parents: list[DetectorSpec], rng: random.Random, mutate: Mutate, taken: set[str],
              max_tries: int) -> Iterable[tuple[DetectorSpec, DetectorSpec]]:
    """(parent, child) pairs with unseen children, parents in turn, until the caller stops or tries run out."""
    for t in range(max_tries):
        parent = parents[t % len(parents)]
        try:
            child = mutate(parent, rng)
        except SpecError as e:  # no operator applies to this parent: try the next one
            log.debug("cannot mutate %s: %s", parent, e)
            continue
        if str(child) not in taken:
            taken.add(str(child))
            yield parent, child


def _row(child: DetectorSpec, parent: str, stage: str, generation: int) -> dict[str, Any]:
    return {"arch": str(child), "stage": stage, "generation": generation, "parent": parent,
            "status": "pending", "reason": ""}


def next_generation(
    population: pd.DataFrame,
    stage: str,
    generation: int,
    n: int,
    seed: int,
    mutate: Mutate,
    evaluated: set[str],
    cost: Cost | None = None,
    acc: str = "map",
    max_tries: int | None = None,
    screen: int = 1,
    screen_cost: str = "latency_ms",
    measure: Cost | None = None,
) -> list[dict[str, Any]]:
    """Make generation ``generation`` (>= 1) by mutating the front of ``population``.

    Args:
        population: the ranked table of all candidates so far (arch, status, ``acc``,
            front_rank, crowding).
        stage: stage label written into the rows (e.g. "stage1").
        generation: this generation's number; with ``seed`` and ``stage`` it seeds the RNG.
        n: how many children to train ("pending").
        seed: the run's seed.
        mutate: ``mutate(spec, rng) -> spec`` (see :func:`mutator`).
        evaluated: archs never to propose again (every arch evaluated, pending or pruned, in
            any generation or earlier run); the population's archs are added to it here.
        cost: the cost before training (stage two: backbone GMACs); enables Partial Order
            Pruning against the population's "ok" rows, whose costs it also computes.
        acc: the accuracy column.
        max_tries: mutation attempts before giving up (default 50 per child made).
        screen: children made per child kept (1: no screen); the predictor judges them by
            ``acc`` and the population's ``screen_cost`` column.
        screen_cost: the cost column the screen predicts (stage one: latency_ms), unless the
            children's costs are known before training (``cost`` or ``measure``).
        measure: ``measure(spec) -> cost`` of a child before it trains, for the screen only
            (stage one: its latency timed untrained, :func:`smnas.engine.candidate.time_untrained`;
            no pruning); called for each child made when ``screen`` > 1 and written to its
            row's "cost".

    Returns:
        Rows with keys arch, stage, generation, parent, status ("pending"/"pruned"), reason,
        and cost when ``cost`` or ``measure`` is given: ``n`` pending ones unless the space near the front is
        exhausted (then fewer, with a warning in the log), plus any pruned ones.
    """
    parents = [parse_spec(a) for a in select_parents(population, n)]
    taken = set(evaluated) | set(population["arch"])
    pruner = _pruner(population, cost, acc) if cost is not None else None
    rng = generation_rng(seed, stage, generation)
    if screen < 1:
        raise SmnasError(f"screen must be >= 1 (children made per child kept), got {screen}")
    if measure is not None and cost is not None:
        raise SmnasError("next_generation: give the screen a computed cost or a measured one, not both")
    made = n * screen
    tries = max_tries if max_tries is not None else 50 * max(made, 1)
    rows, pending = [], 0
    for parent, child in _children(parents, rng, mutate, taken, tries) if n > 0 else ():
        row = _row(child, str(parent), stage, generation)
        if cost is not None:
            row["cost"] = float(cost(child))
            record = pruner.check(child, row["cost"])
            if record is not None:
                row.update(status="pruned", reason=record.reason)
        rows.append(row)
        pending += row["status"] == "pending"
        if pending == made:
            break
    if screen > 1:
        for row in rows if measure is not None else ():
            if row["status"] == "pending":
                row["cost"] = float(measure(parse_spec(row["arch"])))
        rows, pending = _screen(population, rows, n, stage, generation, screen_cost, acc,
                                costs_known=cost is not None or measure is not None), min(pending, n)
    if pending < n:
        log.warning("%s generation %d: only %d of %d new children after %d tries (%d pruned): "
                    "the space around the front is exhausted", stage, generation, pending, n, tries,
                    len(rows) - pending)
    return rows


def _screen(population: pd.DataFrame, rows: list[dict[str, Any]], n: int, stage: str, generation: int,
            cost: str, acc: str, costs_known: bool = False) -> list[dict[str, Any]]:
    """The pruned rows, and the ``n`` pending ones the predictor keeps (in the order it chose them);
    with ``costs_known`` each row's computed "cost" is given to the predictor, not predicted."""
    pending = [r for r in rows if r["status"] == "pending"]
    known = [r["cost"] for r in pending] if costs_known else None
    keep, predicted = screen_children(population, [r["arch"] for r in pending], n, cost, acc, child_costs=known)
    if predicted:
        log.info("%s generation %d: the predictor keeps %d of %d children", stage, generation, len(keep), len(pending))
        for i in keep:
            m, c = predicted[pending[i]["arch"]]
            log.info("  keeps %s (predicted %s %.3f, %s %.1f)", pending[i]["arch"], acc, m, cost, c)
    return [r for r in rows if r["status"] != "pending"] + [pending[i] for i in keep]


def initial_generation(
    stage: str,
    n: int,
    seed: int,
    *,
    space1: StageOneSpace | None = None,
    structures: list[DetectorSpec] | None = None,
    space2: StageTwoSpace | None = None,
    evaluated: set[str] | frozenset[str] = frozenset(),
    cost: Cost | None = None,
) -> list[dict[str, Any]]:
    """Generation 0 of a stage (or of one stage-two group).

    Stage one (``space1`` given): ``n`` specs sampled uniformly from the space
    (:meth:`StageOneSpace.sample` with ``seed``), skipping ``evaluated`` ones.
    Stage two (``structures`` and ``space2`` given): the seed spec (:func:`seed_spec`) of each
    structure, then mutations of them, seeds in turn, up to ``n`` (at most ``n`` seeds are kept).
    A stage-two group has one structure (:func:`smnas.search.seeding.stage2_groups`).

    Returns:
        Rows as :func:`next_generation`'s (status "pending", parent "" or the stage-one
        structure a seed came from), with cost when ``cost`` is given.
    """
    if space1 is not None:
        specs = space1.sample(min(space1.size(), n + len(evaluated)), seed=seed)
        rows = [_row(s, "", stage, 0) for s in specs if str(s) not in evaluated][:n]
    elif structures is not None and space2 is not None:
        rows = _stage2_initial(stage, n, seed, structures, space2, evaluated)
    else:
        raise SmnasError("initial_generation needs space1 (stage one) or structures and space2 (stage two)")
    if len(rows) < n:
        log.warning("%s generation 0: only %d of %d candidates (space exhausted)", stage, len(rows), n)
    for row in rows if cost is not None else ():
        row["cost"] = float(cost(parse_spec(row["arch"])))
    return rows


def _stage2_initial(stage: str, n: int, seed: int, structures: list[DetectorSpec], space2: StageTwoSpace,
                    evaluated: set[str] | frozenset[str]) -> list[dict[str, Any]]:
    taken, rows, seeds = set(evaluated), [], []
    for structure in structures:
        spec = seed_spec(structure, space2)
        if spec in seeds:  # two structures may differ only in what stage two replaces
            continue
        seeds.append(spec)  # a seed evaluated in an earlier run is still a parent
        if str(spec) not in taken and len(rows) < n:
            taken.add(str(spec))
            rows.append(_row(spec, str(structure), stage, 0))
    if len(rows) < n and seeds:
        rng = generation_rng(seed, stage, 0)
        for parent, child in _children(seeds, rng, mutator(space2), taken, 50 * n):
            rows.append(_row(child, str(parent), stage, 0))
            if len(rows) == n:
                break
    return rows
