"""The function behind each workflow rule, called with the rule's named inputs, outputs and params.

Each function takes exactly the names its rule declares (``rules/*.smk``; the table is
:data:`smnas.workflow.rules.JOBS`, and ``tests/test_jobs.py`` checks that every rule's names bind),
turns the config's plain values into the typed objects the package takes, and writes the rule's
outputs atomically. Nothing here needs Snakemake, so each is unit-tested directly.

torch and pandas are imported inside the functions: the fork server preloads them, and a job
that runs without it pays only for what it uses.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _one(path: str | list[str] | None) -> str | None:
    """A single optional input: a path, or None where the rule declared none (``[]``)."""
    if isinstance(path, (list, tuple)):
        if len(path) > 1:
            raise ValueError(f"expected at most one file, got {path}")
        return str(path[0]) if path else None
    return str(path) if path else None


def _read_arch(path: str | Path) -> str:
    return Path(path).read_text().strip()


# ---- data ----------------------------------------------------------------------------------

def make_dataset(coco_train: str, coco_val: str, voc_test: str, bdd_train: str, bdd_val: str,
                 seed: int, builtin: dict[str, Any]) -> None:
    """The built-in dataset in its three layouts under the folder that holds ``coco/``; its
    scene keys (``object_size``, ``max_objects``, ...) set how hard the scenes are."""
    from smnas.data.scenes import SceneOptions
    from smnas.data.synthetic import make_dataset as make

    root = Path(coco_train).parents[2]  # {root}/coco/annotations/instances_train.json
    make(root, seed=seed, num_train=builtin["num_train"], num_val=builtin["num_val"],
         image_size=tuple(builtin["image_size"]), scene=SceneOptions.from_config(builtin))
    missing = [p for p in (coco_train, coco_val, voc_test, bdd_train, bdd_val) if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"make_dataset wrote {root} but not {missing}")


def make_classification(manifest: str, seed: int, builtin: dict[str, Any]) -> None:
    """Classification crops of the built-in shapes, ImageFolder layout, beside ``manifest``."""
    from smnas.data.classification import make_classification_dataset

    make_classification_dataset(Path(manifest).parent, seed=seed, num_train=builtin["num_train"],
                                num_val=builtin["num_val"], image_size=builtin["image_size"])
    _check_written(manifest)


def convert_voc(json: str, root: str, year: str, split: str) -> None:
    """A Pascal VOC split (``year`` 2007, 2012 or 2007+2012) as COCO JSON."""
    from smnas.data.coco import write_coco
    from smnas.data.voc import voc_to_coco

    write_coco(voc_to_coco(root, str(year), split), json)


def convert_bdd(labels: str, json: str, images: str) -> None:
    """BDD100K det_20 labels as COCO JSON (the 10 detection classes)."""
    import warnings

    from smnas.data.bdd import bdd_to_coco
    from smnas.data.coco import write_coco

    logging.captureWarnings(True)  # the count of skipped categories goes to the log
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        write_coco(bdd_to_coco(labels, images), json)


# ---- a generation --------------------------------------------------------------------------

def sample(population: list[str], groups: str | list[str], train_json: str, table: str, stage: str, group: str,
           generation: int, seed: int, settings: dict[str, Any], detector: dict[str, Any],
           candidates_dir: str, strategy: str = "evolution", timing: dict[str, Any] | None = None,
           val_json: str | list[str] = ()) -> None:
    """Write a generation's candidates table and each pending candidate's arch.txt.

    ``strategy`` is "evolution", or "random" for the random-search baseline. Stage two reads its
    group's structure from ``groups`` and prunes by the cost
    ``settings["cost"]`` computed for ``train_json``'s classes and the ``detector`` options.
    An evolution's screen (``settings["screen"]`` > 1) is given each child's cost before training:
    computed (GMACs), or with ``timing`` (a latency_ms cost: ``device``, ``num_images``, ``runs``
    and the search ``data``) timed untrained on the first val images
    (:func:`~smnas.engine.candidate.time_untrained`); ``val_json`` is only a dependency.
    """
    import pandas as pd

    from smnas.engine.cost import search_cost
    from smnas.search.tables import write_table
    from smnas.workflow.config import detector_options, search_space
    from smnas.workflow.generations import StageSettings, sample_generation, write_arch_files

    if stage == "spnas":
        _sample_spnas(population, groups, table, group, generation, seed, settings, candidates_dir)
        return
    typed = StageSettings(settings["population"], search_space(stage, settings["space"]), settings["cost"],
                          strategy, settings.get("screen", 1), settings.get("max_ops", 1))
    structure, cost, measure = None, None, None
    screened = typed.screen > 1 and generation > 0 and strategy == "evolution"
    # the class count (a file read) only where a cost is computed or a child timed
    opts = detector_options({"detector": detector}, _num_classes(train_json)) if stage == "stage2" or screened else None
    if stage == "stage2":
        cost = None if typed.cost == "latency_ms" else search_cost(typed.cost, opts)  # latency: no POP
        structure = pd.read_parquet(_one(groups)).set_index("group").loc[group, "structure"]
    if screened and cost is None:  # the screen is given each child's cost: computed, or timed untrained
        if typed.cost != "latency_ms":
            measure = search_cost(typed.cost, opts)
        elif timing:
            measure = _untrained_timer(timing, opts)
    df = sample_generation(stage, generation, typed, seed, population=_one(population), group=group,
                           structure=structure, cost=cost, measure=measure)
    write_arch_files(df, candidates_dir)
    write_table(df, table)


def _untrained_timer(timing: dict[str, Any], opts: Any) -> Any:
    """``measure(spec) -> ms``: a child timed untrained on the first val images, as ``time`` times it."""
    from smnas.engine.candidate import DataPaths, latency_images, time_untrained

    images = latency_images(DataPaths(**timing["data"]), timing["num_images"])

    def measure(spec: Any) -> float:
        ms = time_untrained(spec, opts, images, device=timing["device"], runs=timing["runs"], threads=1)
        log.info("timed untrained: %s %.1f ms", spec, ms)
        return ms

    return measure


def _sample_spnas(population: list[str], groups: str | list[str], table: str, group: str, generation: int,
                  seed: int, settings: dict[str, Any], candidates_dir: str) -> None:
    """An SP-NAS generation (:mod:`smnas.workflow.spnas`): ``group`` is "C0/serial" or "C0/parallel"."""
    import pandas as pd

    from smnas.search.tables import write_table
    from smnas.workflow.config import spnas_settings
    from smnas.workflow.generations import candidates_table, write_arch_files
    from smnas.workflow.spnas import parallel_generation, serial_generation, write_parent_files

    name, _, phase = group.partition("/")
    typed = spnas_settings(settings)
    key = f"spnas/{group}"
    if phase == "serial":
        structure = pd.read_parquet(_one(groups)).set_index("group").loc[name, "structure"]
        rows = serial_generation(generation, typed, seed, key, structure, _one(population), candidates_dir)
    else:
        rows = parallel_generation(generation, typed, seed, key, _one(population), candidates_dir)
    for row in rows:
        row.update(group=name)
        log.info("%s %s (parent %s, %s from %s)", key, row["arch"], row["parent"] or "-", row["init"], row["weights"])
    df = candidates_table(rows)
    write_arch_files(df, candidates_dir)
    write_parent_files(rows, candidates_dir)
    write_table(df, table)


def groups(stage1_population: str, groups: str, space: dict[str, Any], stage1_cost: str) -> None:
    """Stage two's groups: structures picked along the stage-one front, one search each; from
    ``stage1_population`` (stage one's last, every rank), so that the next fronts fill in where
    the first has fewer members than ``structures`` (a tiny run's front can be one model)."""
    import pandas as pd

    from smnas.search.seeding import stage2_groups
    from smnas.search.tables import write_table
    from smnas.workflow.config import search_space

    table = stage2_groups(pd.read_parquet(stage1_population), search_space("stage2", space), stage1_cost)
    for row in table.itertuples():
        log.info("group %s: %s (seed %s)", row.group, row.structure, row.seed)
    write_table(table, groups)


def rank(candidates: str, metrics: list[str], previous: list[str], population: str, cost: str,
         retimed: str | list[str] | None = None) -> None:
    """Everything evaluated up to this generation, ranked into Pareto fronts; ``retimed``: the
    retime job's measurements of the front (when the cost is measured time)."""
    from smnas.search.tables import write_table
    from smnas.workflow.generations import rank_generation

    write_table(rank_generation(candidates, metrics, previous, cost, _read_samples(retimed)), population)


def _read_samples(retimed: str | list[str] | None) -> dict[str, list[float]]:
    """A retime job's ``retimed.json`` (architecture -> measurements in ms); {} where none."""
    import json

    return json.loads(Path(_one(retimed)).read_text()) if _one(retimed) else {}


def retime(candidates: str, metrics: list[str], previous: list[str], previous_retimed: str | list[str],
           retimed: str, data: dict[str, str], options: dict[str, Any], runs: int, num_images: int,
           measurements: int, candidates_dir: str) -> None:
    """The front of this generation timed again until each member has ``measurements``
    measurements (:func:`smnas.search.remeasure.remeasure_front`); writes every re-timed
    architecture's measurements so far (``retimed.json``; the earlier generations' included)."""
    from smnas.engine.candidate import DataPaths, latency_images, load_model
    from smnas.engine.device_lock import DeviceLock
    from smnas.engine.measure import measure_latency
    from smnas.io import atomic_write_json
    from smnas.models.spec import parse_spec, spec_hash
    from smnas.search.remeasure import remeasure_front
    from smnas.workflow.config import detector_options
    from smnas.workflow.generations import rank_generation

    paths, device = DataPaths(**data), options["device"]
    samples = _read_samples(previous_retimed)
    population = rank_generation(candidates, metrics, previous, "latency_ms")
    opts = detector_options(options, _num_classes(paths.train_json))
    images = latency_images(paths, num_images)

    def measure(arch: str) -> float:
        model = load_model(parse_spec(arch), opts, Path(candidates_dir) / spec_hash(arch), device)
        return measure_latency(model, images, device=device, runs=runs, threads=1).median_ms

    # The whole re-timing holds the device: loading the next model beside a measurement (another
    # retime job's, say) slowed it 1.5x on 2 cores; it takes seconds.
    with DeviceLock(device).exclusive():
        samples = remeasure_front(population, samples, measure, measurements)
    atomic_write_json(retimed, samples, indent=2)


def front(populations: list[str], front: str, plot: str, cost: str, title: str) -> None:
    """A search's Pareto front table and the plot of its fronts by generation."""
    from smnas.report import write_front

    write_front(populations, cost, front, plot, title)


def union_front(fronts: list[str], front: str, plot: str, cost: str, labels: list[str] | None = None,
                title: str = "stage2: each group's front and the union") -> None:
    """A modular search's front: the non-dominated set of its searches' fronts (stage two's
    groups; SP-NAS's groups and phases, ``labels``); each front and the union on one plot (the
    paper's Figure 4, per group)."""
    import pandas as pd

    from smnas.report import plot_group_fronts
    from smnas.search.tables import write_table
    from smnas.workflow.generations import union_front as union

    tables = [pd.read_parquet(f) for f in fronts]
    both = union(tables, cost)
    write_table(both, front)
    plot_group_fronts(tables, both, cost, plot, labels, title)


# ---- one model -----------------------------------------------------------------------------

def train(arch: str, train_json: str, val_json: str, model: str, status: str, data: dict[str, str],
          options: dict[str, Any], weights: str | list[str] = (), init: str | list[str] = (), gpus: int = 1,
          threads: int = 1) -> None:
    """Train one model (a candidate, a final or a transfer model) into the folder of ``model``.

    ``weights``: the backbone's initial weights (pretrained), or none. ``init``: the whole
    detector's initial weights (an SP-NAS child's, from :func:`inherit`), or none. ``gpus`` > 1:
    data-parallel on that many devices of this node, through ``torchrun`` (global batch = batch
    size x gpus).
    """
    if gpus > 1:
        from smnas.workflow.launch import run_distributed

        run_distributed("train", gpus, arch=arch, train_json=train_json, val_json=val_json, model=model,
                        status=status, data=data, options=options, weights=weights, init=init)
        return
    import torch

    from smnas.engine.candidate import DataPaths, train_candidate
    from smnas.engine.distributed import dist_env
    from smnas.models.spec import parse_spec
    from smnas.workflow.config import detector_options, train_config

    torch.set_num_threads(threads)
    text, paths = _read_arch(arch), DataPaths(**data)
    jitter = options.get("scale_jitter")
    opts = detector_options(options, _num_classes(paths.train_json), _one(weights))
    train_candidate(parse_spec(text), paths, train_config(options), opts, Path(model).parent,
                    device=options["device"], progress=False, scale_jitter=tuple(jitter) if jitter else None,
                    init_state=_one(init))
    if dist_env().is_main:  # under torchrun only rank 0 writes
        _check_written(model, status)


def inherit(arch: str, parent: str, weights: str | list[str], train_json: str, init: str, options: dict[str, Any],
            detector: str | list[str] = ()) -> None:
    """An SP-NAS child's initial detector weights (``init``): its parent's (``parent.json`` names
    the parent's architecture; ``weights`` is the parent's trained ``model.pt`` or a pretrained
    backbone; after a reignite, ``detector`` is the parent's ``model.pt``, whose neck and heads
    are taken first) carried across the morph (:func:`smnas.models.morph.inherit_detector`);
    layers the morph creates start as the method says, the rest as a fresh build with the run's
    seed."""
    import json

    import torch

    from smnas.io import atomic_path
    from smnas.models.build import build_detector
    from smnas.models.encoding import parse_encoding
    from smnas.models.morph import inherit_detector
    from smnas.models.spec import parse_spec
    from smnas.workflow.config import detector_options

    info = json.loads(Path(parent).read_text())
    child, source = parse_spec(_read_arch(arch)), parse_spec(info["arch"])
    torch.manual_seed(options["seed"])
    model = build_detector(child, detector_options(options, _num_classes(train_json)))
    morph = parse_encoding(source.backbone.name), parse_encoding(child.backbone.name)
    for path in filter(None, (_one(detector), _one(weights))):  # the backbone file last: it wins
        report = inherit_detector(torch.load(path, map_location="cpu", weights_only=True), morph[0], model, morph[1])
        log.info("%s <- %s (%s, %s): %s", child, source, info["init"], path, report)
    with atomic_path(init) as tmp:
        torch.save(model.state_dict(), tmp)


def load_trained(folder: str | Path, detector: dict[str, Any], device: str = "cpu") -> Any:
    """The trained detector in a model folder as the rules write it (``arch.txt``, ``train.json``,
    ``model.pt``), built with a run's ``detector`` config block, in eval mode on ``device``. Not a
    rule's job: for the benches that time or inspect a run's models afterwards."""
    import json

    from smnas.engine.candidate import load_model
    from smnas.models.spec import parse_spec
    from smnas.workflow.config import detector_options

    folder = Path(folder)
    num_classes = json.loads((folder / "train.json").read_text())["num_classes"]
    opts = detector_options({"detector": detector}, num_classes)
    return load_model(parse_spec(_read_arch(folder / "arch.txt")), opts, folder, device)


def time(arch: str, model: str, status: str, latency: str, data: dict[str, str], options: dict[str, Any],
         runs: int, num_images: int) -> None:
    """Batch-1 inference time of a trained model on the target device over the first
    ``num_images`` val images of ``data``, ``runs`` passes (``latency.json``)."""
    import json

    from smnas.engine.candidate import DataPaths, time_candidate
    from smnas.models.spec import parse_spec
    from smnas.workflow.config import detector_options

    num_classes = json.loads(Path(status).read_text())["num_classes"]
    time_candidate(parse_spec(_read_arch(arch)), detector_options(options, num_classes), Path(model).parent,
                   DataPaths(**data), num_images=num_images, device=options["device"], runs=runs, threads=1)
    _check_written(latency)


def evaluate(arch: str, model: str, status: str, metrics: str, data: dict[str, str], options: dict[str, Any],
             metric: str = "coco", latency: str | None = None) -> None:
    """COCO AP of a trained model on the val split (``metric="voc"`` adds Pascal VOC's mAP at
    IoU 0.5), merged with its training record and its timing (``latency.json``, when the rule
    times the model) into ``metrics.json``."""
    import torch

    from smnas.engine.candidate import DataPaths, evaluate_trained
    from smnas.models.spec import parse_spec
    from smnas.workflow.config import detector_options

    if metric not in ("coco", "voc"):
        raise ValueError(f"metric must be 'coco' or 'voc', got {metric!r}")
    torch.set_num_threads(1)
    paths = DataPaths(**data)
    evaluate_trained(parse_spec(_read_arch(arch)), paths, detector_options(options, _num_classes(paths.train_json)),
                     Path(model).parent, device=options["device"], progress=False, voc_metric=metric == "voc")
    _check_written(metrics)


def _num_classes(train_json: str | Path) -> int:
    from smnas.data.coco import load_coco

    return len(load_coco(train_json, check_images=False)["categories"])


def _check_written(*paths: str) -> None:
    """A job's outputs must be where its rule says (the engine names files by convention)."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"the job finished but did not write {missing}")


# ---- pretraining ---------------------------------------------------------------------------

def pretrain(data: str | list[str], weights: str, metrics: str, key: str, data_root: str, train: dict[str, Any],
             seed: int, device: str, gpus: int = 1, threads: int = 1) -> None:
    """Pretrain backbone ``key`` (:func:`smnas.models.registry.backbone_key`) as a classifier on
    ``data_root`` (ImageFolder layout); ``gpus`` > 1: data-parallel through ``torchrun``."""
    if gpus > 1:
        from smnas.workflow.launch import run_distributed

        run_distributed("pretrain", gpus, data=data, weights=weights, metrics=metrics, key=key, data_root=data_root,
                        train=train, seed=seed, device=device)
        return
    import torch

    from smnas.engine.pretrain import PretrainConfig, pretrain_backbone
    from smnas.models.registry import parse_backbone_key

    torch.set_num_threads(threads)
    name, width, norm = parse_backbone_key(key)
    cfg = PretrainConfig.from_dict({"seed": seed, **train}, "config pretrain.train")
    result = pretrain_backbone(name, width, data_root, weights, Path(weights).parent / "work", cfg, device=device,
                               norm=norm, out_metrics=metrics, progress=False)
    top1, classes = result.get("top1"), list(result.get("classes") or [])
    if top1 is not None and classes and top1 <= 1.5 / len(classes):
        log.warning("pretraining %s ended near chance (top-1 %.3f over %d classes): the weights are written, "
                    "but models starting from them start from little; lower pretrain.train.lr", key, top1, len(classes))


# ---- final models and the report -----------------------------------------------------------

def final_arch(front: str | list[str], arch: str, name: str, picks: int, cost: str,
               paper_input_size: list[int] | None, pick: str = "spread") -> None:
    """Write final model ``name``'s architecture (:func:`smnas.workflow.finals.final_arch`) from
    the modular front(s) ``front``: stage two's, SP-NAS's, or the non-dominated set of both;
    ``pick`` is config final.pick (absent from the rule's params while it is the default)."""
    import pandas as pd

    from smnas.io import atomic_open
    from smnas.workflow.finals import final_arch as choose

    from smnas.workflow.generations import union_front

    paths = [front] if isinstance(front, str) else list(front)  # one modular method's front, or both
    table = union_front([pd.read_parquet(p) for p in paths], cost) if paths else None
    spec = choose(name, table, picks, cost, tuple(paper_input_size) if paper_input_size else None, pick)
    with atomic_open(arch) as f:
        f.write(f"{spec}\n")
    log.info("final model %s: %s", name, spec)


def baseline_arch(arch: str, name: str, width: float, fpn_channels: int, head_fc: int,
                  input_size: list[int]) -> None:
    """Write hand-designed baseline ``name``'s architecture at the search's scale."""
    from smnas.io import atomic_open
    from smnas.models.baselines import baseline_spec

    spec = baseline_spec(name, width, fpn_channels, head_fc, tuple(input_size))
    with atomic_open(arch) as f:
        f.write(f"{spec}\n")
    log.info("baseline %s: %s", name, spec)


def agreement_arch(candidate: str, arch: str) -> None:
    """A search candidate's architecture in BN, as the final recipe trains it."""
    from smnas.io import atomic_open
    from smnas.models.spec import parse_spec

    with atomic_open(arch) as f:
        f.write(f"{parse_spec(_read_arch(candidate)).with_norm('bn')}\n")


def report_plots(populations: list[str], final: list[str], baselines: list[str], voc: list[str], bdd: list[str],
                 correlation: str, correlation_table: str, metrics: str, speed_accuracy: str) -> None:
    """Backbone-factor correlations (all populations), the final/baseline/transfer metrics table,
    and the speed/accuracy plot of the final models beside the baselines (when they ran)."""
    import pandas as pd

    from smnas.report import (
        factor_correlations, metrics_table, plot_factor_correlations, plot_speed_accuracy, write_csv,
    )

    population = pd.concat([pd.read_parquet(p) for p in populations], ignore_index=True)
    corr = factor_correlations(population)
    write_csv(corr, correlation_table)
    plot_factor_correlations(corr, correlation)
    table = metrics_table([*final, *baselines, *voc, *bdd])
    write_csv(table, metrics)
    plot_speed_accuracy(pd.read_parquet(populations[0]), table, speed_accuracy)
