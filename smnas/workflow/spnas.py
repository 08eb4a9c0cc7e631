"""SP-NAS as workflow generations: the serial phase and the parallel phase of one group.

SP-NAS (Jiang et al., "SP-NAS: Serial-to-Parallel Backbone Search for Object Detection", CVPR
2020) searches the backbone of a fixed detector in two phases; here each stage-two group (a
structure from the stage-one front) gets its own two searches, ``spnas/C0/serial`` and
``spnas/C0/parallel``, with the same tables, fronts and file targets as stage two::

    settings = SPNASSettings.from_dict(config_block)            # one phase's settings
    rows = serial_generation(g, settings, seed, "spnas/C0/serial", structure, population, candidates_dir)
    write_parent_files(rows, candidates_dir)                     # what each child inherits from

Serial phase. Generation 0 is the *start network*: the structure with a small ResNet-like
backbone of its block family (:func:`start_spec`), which starts from pretrained weights (the
pretraining stage), and children of it made by 1..3 swaps and expands
(:func:`smnas.search.spnas.serial_child`) that inherit the pretrained weights through the morph.
Generation g > 0: children of the front of g-1; each inherits its parent's trained detector
(``model.pt``: backbone through the morph, neck and heads where shapes agree). A short fine-tune
(the ``spnas.train`` block) judges it.

Reignite. When growth stops paying (:func:`stalled`: the hypervolume of the front gained less
than ``min_gain`` of itself over the last ``patience`` generations, and no reignite happened in
them), the next generation's parents are *reignited*: their backbones are pretrained again on
the classification data (the pretraining stage, one job per backbone) and their children
inherit those backbone weights instead of the fine-tuned detector's (neck and heads still come
from the parent's detector); at most ``max_reignites`` times per search (the authors: twice).

Parallel phase. On the serial search's most accurate front network, candidates with per-stage
counts of parallel copies are drawn under a MACs limit, ``max_gmacs_ratio`` times the serial
backbone's MACs (:func:`smnas.search.spnas.sample_parallel`: each further copy of a stage is less
likely as the copy costs more). Each inherits the serial network's trained detector; a copy
starts as its stage's trunk with its merge at zero, so the child first computes what its parent
does (:mod:`smnas.models.morph`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smnas.errors import SmnasError, SpecError
from smnas.io import atomic_open
from smnas.models.encoding import parse_encoding
from smnas.models.registry import backbone_key, block_family
from smnas.models.spec import BackboneSpec, DetectorSpec, parse_spec, spec_hash
from smnas.search.evolution import generation_rng, select_parents
from smnas.search.pareto import hypervolume
from smnas.search.seeding import seed_spec
from smnas.search.space import StageTwoSpace

log = logging.getLogger(__name__)

MORPH_FAMILIES = ("basicblock", "bottleneck", "Xbottleneck")  # what smnas.models.morph grows
PHASES = ("serial", "parallel")


@dataclass(frozen=True)
class SPNASSettings:
    """One phase's settings (the config's ``spnas`` block, its ``space`` and one phase's keys).

    Attributes:
        phase: "serial" or "parallel".
        population: candidates trained per generation.
        space: block-count bounds (:class:`~smnas.models.encoding.EncodingBounds`), the start's
            base and FPN channels (the allowed values nearest the structure's), and the norm.
        cost: the cost column minimised beside mAP (``gmacs``, ``backbone_gmacs``, ``params``).
        max_ops: serial: most swaps/expands per child (the authors': 3).
        patience: serial: generations over which the front must gain before a reignite.
        min_gain: serial: the relative hypervolume gain below which the front has stalled.
        max_reignites: serial: reignites per search at most (the authors': 2).
        max_count: parallel: most copies per stage (the authors' code: 3).
        max_gmacs_ratio: parallel: the limit on a candidate backbone's MACs, as a multiple of
            the serial network's.
    """

    phase: str
    population: int
    space: StageTwoSpace
    cost: str = "gmacs"
    max_ops: int = 3
    patience: int = 1
    min_gain: float = 0.01
    max_reignites: int = 2
    max_count: int = 3
    max_gmacs_ratio: float = 1.5

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config spnas") -> "SPNASSettings":
        """From ``{"phase", "population", "space", "cost", ...phase keys}`` (the sample rule's
        ``settings`` param for an SP-NAS search)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SmnasError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        if d.get("phase") not in PHASES:
            raise SmnasError(f"{source}: phase {d.get('phase')!r}, expected serial or parallel")
        space = StageTwoSpace.from_dict(d["space"], f"{source}.space") if isinstance(d["space"], dict) else d["space"]
        return cls(**{**d, "space": space})


def start_spec(structure: DetectorSpec | str, space: StageTwoSpace) -> DetectorSpec:
    """The serial phase's start network inside ``structure``: its backbone's block layout (a
    ResNet-18 layout when its family cannot be grown, e.g. MobileNetV2's inverted residuals),
    base channels, FPN channels and stage lengths brought into ``space`` (as stage two's seed)."""
    structure = parse_spec(str(structure))
    if block_family(structure.backbone.name) not in MORPH_FAMILIES:
        structure = replace(structure, backbone=BackboneSpec("resnet18", structure.backbone.width))
    return seed_spec(structure, space)


def pretrained_weights(arch: DetectorSpec | str, pretrained_dir: str = "results/pretrained") -> str:
    """The pretraining stage's weights of ``arch``'s backbone (as ``init: pretrain`` names them)."""
    spec = parse_spec(str(arch))
    return f"{pretrained_dir}/{backbone_key(spec.backbone.name, spec.backbone.width, spec.norm)}/weights.pt"


def _row(arch: DetectorSpec | str, parent: str, generation: int, init: str, weights: str,
         detector: str = "") -> dict[str, Any]:
    return {"arch": str(arch), "stage": "spnas", "generation": generation, "parent": parent, "init": init,
            "status": "pending", "reason": "", "weights": weights, "detector": detector}


def _serial_children(parents: list[str], n: int, rng, settings: SPNASSettings, taken: set[str]) -> list[tuple[str, str]]:
    """(parent, child) pairs: unseen children of ``parents`` in turn, until ``n`` or tries run out."""
    from smnas.search.spnas import serial_child

    out: list[tuple[str, str]] = []
    for t in range(50 * max(n, 1)):
        if len(out) >= n:
            break
        parent = parse_spec(parents[t % len(parents)])
        try:
            enc = serial_child(parse_encoding(parent.backbone.name), rng, settings.space.bounds, settings.max_ops)
        except SpecError as e:  # nothing applies to this parent inside the bounds: the next one
            log.debug("no serial child of %s: %s", parent, e)
            continue
        child = str(replace(parent, backbone=BackboneSpec(str(enc))).validate())
        if child not in taken:
            taken.add(child)
            out.append((str(parent), child))
    return out


def hypervolume_by_generation(population: pd.DataFrame, cost: str, last: int | None = None) -> list[float]:
    """The hypervolume of the front of everything evaluated up to each generation 0..``last``
    (default: the population's last), with one reference point for all: (mAP 0, 1.1 x the
    largest cost evaluated)."""
    if last is None:
        last = int(population["generation"].max()) if len(population) else -1
    ok = population[population["status"] == "ok"]
    if ok.empty:
        return [0.0] * (last + 1)
    ref = [0.0, 1.1 * float(ok[cost].max())]
    out = []
    for g in range(last + 1):
        upto = ok[ok["generation"] <= g]
        out.append(hypervolume(np.column_stack([-upto["map"].to_numpy(float), upto[cost].to_numpy(float)]), ref))
    return out


def stalled(population: pd.DataFrame, generation: int, settings: SPNASSettings) -> tuple[bool, str]:
    """Whether generation ``generation`` should reignite (its parents pretrained again), and why.

    The rule: ``generation - 1 - patience >= 0``; the hypervolume of the front after generation
    ``generation - 1`` exceeds the one ``patience`` generations earlier by at most ``min_gain``
    of the earlier; none of those ``patience`` generations was itself a reignite; and fewer
    than ``max_reignites`` reignites so far.
    """
    last, before = generation - 1, generation - 1 - settings.patience
    if before < 0:
        return False, f"fewer than {settings.patience + 1} generations evaluated"
    reignited = sorted({int(g) for g in population.loc[population["init"] == "reignited", "generation"]})
    if len(reignited) >= settings.max_reignites:
        return False, f"{len(reignited)} reignites already (max {settings.max_reignites})"
    if any(g > before for g in reignited):
        return False, f"generation {reignited[-1]} was a reignite; waiting {settings.patience} generation(s)"
    hv = hypervolume_by_generation(population, settings.cost, last)
    gain = hv[last] - hv[before]
    why = f"hypervolume {hv[before]:.4g} -> {hv[last]:.4g} over generations {before}..{last}"
    return gain <= settings.min_gain * hv[before], why


def serial_generation(generation: int, settings: SPNASSettings, seed: int, key: str, structure: str,
                      population: str | Path | None, candidates_dir: str,
                      pretrained_dir: str = "results/pretrained") -> list[dict[str, Any]]:
    """Rows of a serial-phase generation (see the module docstring), each with the ``weights``
    file its child inherits from and its ``init`` (pretrained, inherited or reignited)."""
    rng = generation_rng(seed, key, generation)
    n = settings.population
    if generation == 0:
        start = start_spec(structure, settings.space)
        weights = pretrained_weights(start, pretrained_dir)
        rows = [_row(start, "", 0, "pretrained", weights)]
        for parent, child in _serial_children([str(start)], n - 1, rng, settings, {str(start)}):
            rows.append(_row(child, parent, 0, "pretrained", weights))
        return rows[:n]
    pop = pd.read_parquet(population)
    reignite, why = stalled(pop, generation, settings)
    log.info("%s generation %d: %s; %s", key, generation, why, "reignite" if reignite else "no reignite")
    parents = select_parents(pop, n)
    if not parents:
        raise SmnasError(f"{key} generation {generation}: no evaluated network to grow from in {population}")
    rows = []
    for parent, child in _serial_children(parents, n, rng, settings, set(pop["arch"])):
        model = f"{candidates_dir}/{spec_hash(parent)}/model.pt"
        if reignite:  # the backbone pretrained again; neck and heads still the parent's
            rows.append(_row(child, parent, generation, "reignited", pretrained_weights(parent, pretrained_dir), model))
        else:
            rows.append(_row(child, parent, generation, "inherited", model))
    return rows


def serial_best(population: pd.DataFrame) -> str:
    """The serial search's most accurate front network (ties: cheaper gmacs, then arch)."""
    front = population[(population["status"] == "ok") & (population["front_rank"] == 0)]
    if front.empty:
        raise SmnasError("the serial phase has no evaluated network: the parallel phase has nothing to widen")
    return str(front.sort_values(["map", "gmacs", "arch"], ascending=[False, True, True])["arch"].iloc[0])


def parallel_generation(generation: int, settings: SPNASSettings, seed: int, key: str,
                        population: str | Path, candidates_dir: str) -> list[dict[str, Any]]:
    """Rows of a parallel-phase generation: ``population`` draws of parallel counts on the
    serial best network, under the MACs limit, never an architecture drawn before.

    ``population``: generation 0, the serial search's last population (the parent is its best);
    later, this search's own previous population (the parent is its rows' parent).
    """
    from smnas.search.spnas import parallel_stage_gmacs, sample_parallel

    pop = pd.read_parquet(population)
    parent = serial_best(pop) if generation == 0 else str(pop["parent"].iloc[0])
    spec = parse_spec(parent)
    enc = parse_encoding(spec.backbone.name)
    serial, _ = parallel_stage_gmacs(str(enc.serial), spec.input_size)
    limit = settings.max_gmacs_ratio * serial
    rng = generation_rng(seed, key, generation)
    taken, rows = set(pop["arch"]) | {parent}, []
    weights = f"{candidates_dir}/{spec_hash(parent)}/model.pt"
    for _ in range(50 * settings.population):
        if len(rows) >= settings.population:
            break
        try:
            child = str(replace(spec, backbone=BackboneSpec(str(sample_parallel(
                enc, rng, limit, spec.input_size, settings.max_count)))))
        except SpecError as e:
            log.warning("%s generation %d: %s", key, generation, e)
            break
        if child not in taken:
            taken.add(child)
            rows.append(_row(child, parent, generation, "inherited", weights))
    log.info("%s generation %d: %d parallel candidates on %s (limit %.4g GMACs, serial %.4g)",
             key, generation, len(rows), parent, limit, serial)
    return rows


def write_parent_files(rows: list[dict[str, Any]], candidates_dir: str | Path) -> None:
    """``{candidates_dir}/{hash}/parent.json`` of every pending row: the parent's architecture,
    the weights file the child inherits from (``weights``; after a reignite also the parent's
    trained detector, ``detector``, for the neck and heads), and how it started. Left alone when
    it exists (a candidate is trained once, from what it was first sampled with)."""
    for row in rows:
        if row["status"] != "pending":
            continue
        path = Path(candidates_dir) / spec_hash(row["arch"]) / "parent.json"
        if not path.exists():
            parent = row["parent"] or row["arch"]  # the start network inherits its own pretraining
            with atomic_open(path) as f:
                json.dump({"arch": parent, "weights": row["weights"], "detector": row.get("detector", ""),
                           "init": row["init"]}, f, indent=2)
