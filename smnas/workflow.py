"""The functions behind the workflow's scripts.

Every ``scripts/*.py`` only unpacks ``snakemake.input/output/params`` and calls one function here,
so all of the workflow's logic is importable and unit-tested without Snakemake.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pandas as pd

from smnas.errors import SmnasError
from smnas.io import atomic_open
from smnas.models.spec import DetectorSpec, parse_spec, spec_hash
from smnas.search.tables import make_table, rank_population, write_table

if TYPE_CHECKING:
    from smnas.engine.train import TrainConfig
    from smnas.models.build import DetectorOptions

# torch and the modules that need it are imported inside the functions that train or measure:
# Snakemake imports this module to plan the workflow, and planning must stay fast.

log = logging.getLogger(__name__)


def setup_logging(log_file: str | Path) -> None:
    """Send this process's log records to ``log_file`` (and stderr)."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(log_file, mode="w"), logging.StreamHandler()], force=True)


# ---- configuration -------------------------------------------------------------------------

def check_config(config: dict[str, Any]) -> None:
    """Checks a JSON schema cannot express; raise SmnasError before any job runs."""
    from smnas.search.space import space_from_dict

    space_from_dict(config["stage1"]["space"], "config stage1.space")
    stage2_space(config)
    data = config["data"]
    if "coco" not in data and "builtin" not in data:
        raise SmnasError("config data: give either data.builtin (the synthetic dataset) or data.coco (your paths)")
    for name, path in (config["detector"].get("backbone_weights") or {}).items():
        if not Path(path).is_file():
            raise SmnasError(f"config detector.backbone_weights.{name}: {path} does not exist (weights are never downloaded)")
    for key, path in data.get("coco", {}).items():
        if not Path(path).exists():
            raise SmnasError(f"config data.coco.{key}: {path} does not exist")
    for name in ("voc", "bdd"):
        for key, path in (config["transfer"].get(name) or {}).items():
            if key in ("root", "train_labels", "val_labels", "train_images", "val_images") and path and not Path(path).exists():
                raise SmnasError(f"config transfer.{name}.{key}: {path} does not exist")
    from smnas.models.paper import PAPER_MODELS

    unknown = [m for m in config["final"]["paper_models"] if m not in PAPER_MODELS]
    if unknown:
        raise SmnasError(f"config final.paper_models: unknown {unknown}; valid: {sorted(PAPER_MODELS)}")


def stage2_space(config: dict[str, Any]):
    from smnas.search.stage2 import StageTwoSpace

    return StageTwoSpace.from_dict(config["stage2"]["space"], "config stage2.space")


def train_config(options: dict[str, Any]) -> "TrainConfig":
    from smnas.engine.train import TrainConfig

    return TrainConfig(seed=options["seed"], **options["train"])


def detector_options(options: dict[str, Any], num_classes: int, arch: str | None = None) -> "DetectorOptions":
    """DetectorOptions from the config's ``detector`` block. ``backbone_weights`` maps backbone
    names to local ImageNet checkpoints; they initialise BN models of width 1.0 (``arch``)."""
    from smnas.models.build import DetectorOptions

    det = dict(options["detector"])
    weights = det.pop("backbone_weights", None) or {}
    path = None
    if arch is not None:
        spec = parse_spec(arch)
        if spec.norm == "bn" and spec.backbone.width == 1.0:
            path = weights.get(spec.backbone.name)
    return DetectorOptions(num_classes=num_classes, backbone_weights=path, **det)


def num_classes_of(train_json: str | Path) -> int:
    from smnas.data.coco import load_coco

    return len(load_coco(train_json, check_images=False)["categories"])


def lookup_arch(tables: Iterable[str | Path] | Callable[[], Iterable[str | Path]], hash_: str) -> str:
    """The architecture string of candidate ``hash_`` from the candidates tables.

    Called for every candidate job while Snakemake plans (3,000 times for 20 x 50 x 3 jobs), so the
    tables (or a callable listing them, called only when needed) are read into one index that is
    refreshed only when a hash is missing: a hash is a function of its architecture, so an entry
    never goes stale, and a new generation's table adds entries.
    """
    arch = _ARCH_INDEX.get(hash_)
    if arch is not None:
        return arch
    paths = [str(t) for t in (tables() if callable(tables) else tables)]
    for path in paths:
        mtime = Path(path).stat().st_mtime_ns
        if _ARCH_TABLES.get(path) != mtime:
            df = pd.read_parquet(path, columns=["arch", "hash"])
            _ARCH_INDEX.update(zip(df["hash"], df["arch"]))
            _ARCH_TABLES[path] = mtime
    arch = _ARCH_INDEX.get(hash_)
    if arch is None:
        raise SmnasError(f"candidate {hash_} is in none of the candidates tables {paths}")
    return arch


_ARCH_INDEX: dict[str, str] = {}  # candidate hash -> architecture string, from every table read
_ARCH_TABLES: dict[str, int] = {}  # table path -> mtime when read


# ---- one candidate -------------------------------------------------------------------------

def run_train(arch: str, data: dict[str, str], options: dict[str, Any], workdir: str | Path,
              threads: int = 1) -> dict[str, Any]:
    import torch

    from smnas.engine.candidate import DataPaths, train_candidate

    torch.set_num_threads(threads)
    paths = DataPaths(**data)
    jitter = options.get("scale_jitter")
    opts = detector_options(options, num_classes_of(paths.train_json), arch)
    return train_candidate(parse_spec(arch), paths, train_config(options), opts,
                           workdir, device=options["device"], progress=False,
                           scale_jitter=tuple(jitter) if jitter else None)


def run_time(arch: str, options: dict[str, Any], workdir: str | Path, runs: int) -> dict[str, Any]:
    from smnas.engine.candidate import time_candidate

    num_classes = json.loads((Path(workdir) / "train.json").read_text())["num_classes"]
    opts = detector_options(options, num_classes)
    return time_candidate(parse_spec(arch), opts, workdir, device=options["device"], runs=runs, threads=1)


def run_evaluate(arch: str, data: dict[str, str], options: dict[str, Any], workdir: str | Path,
                 voc_metric: bool = False) -> dict[str, Any]:
    """evaluate_trained, plus the VOC-style mAP at IoU 0.5 for Pascal VOC."""
    import torch

    from smnas.engine.candidate import DataPaths, evaluate_trained

    torch.set_num_threads(1)
    paths = DataPaths(**data)
    return evaluate_trained(parse_spec(arch), paths, detector_options(options, num_classes_of(paths.train_json)), workdir,
                            device=options["device"], progress=False, voc_metric=voc_metric)


# ---- data ----------------------------------------------------------------------------------

def convert_voc(root: str | Path, year: str, split: str, out: str | Path) -> None:
    from smnas.data.coco import write_coco
    from smnas.data.voc import voc_to_coco

    write_coco(voc_to_coco(root, str(year), split), out)


def convert_bdd(labels: str | Path, images: str | Path, out: str | Path) -> None:
    import warnings

    from smnas.data.bdd import bdd_to_coco
    from smnas.data.coco import write_coco

    logging.captureWarnings(True)  # the count of skipped categories goes to the log
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        write_coco(bdd_to_coco(labels, images), out)


# ---- generations ---------------------------------------------------------------------------

def rank_generation(candidates: str | Path, metrics: list[str | Path], previous: list[str | Path],
                    cost: str, out: str | Path) -> pd.DataFrame:
    """Population after generation g: the previous population, this generation's evaluated
    candidates (from their metrics.json) and its pruned ones, ranked into fronts."""
    table = pd.read_parquet(candidates)
    meta = table.set_index("arch")
    rows = []
    for path in metrics:
        row = json.loads(Path(path).read_text())
        info = meta.loc[row["arch"]]
        row.update(stage=info["stage"], generation=int(info["generation"]), parent=info["parent"])
        rows.append(row)
    for _, pruned in table[table["status"] == "pruned"].iterrows():
        rows.append({k: pruned[k] for k in ("arch", "stage", "generation", "parent", "status", "reason")}
                    | ({cost: pruned["cost"]} if "cost" in pruned and pd.notna(pruned["cost"]) else {}))
    new = make_table(rows)
    frames = [pd.read_parquet(p) for p in previous] + [new]
    population = pd.concat([f for f in frames if len(f)], ignore_index=True)
    population = rank_population(population, cost)
    write_table(population, out)
    return population


def sample_generation(stage: str, generation: int, config: dict[str, Any], population: list[str | Path],
                      stage1_front: str | Path | list, out: str | Path) -> pd.DataFrame:
    """Write generation ``generation``'s candidates table (the workflow's sample/mutate step).

    Stage one, g = 0: a seeded sample of the space. Stage two, g = 0: the stage-one front's
    structures with their backbones as encodings, and mutations of them. g > 0: mutations of the
    front of generation g-1, never an architecture evaluated before; stage two applies Partial
    Order Pruning (pruned rows are kept, with the reason, and are not trained).
    """
    from smnas.search.evolution import initial_generation, mutator, next_generation
    from smnas.search.space import space_from_dict
    from smnas.search.stage2 import backbone_gmacs

    cfg = config[stage]
    n, seed = cfg["population"], config["seed"]
    space = space_from_dict(config["stage1"]["space"]) if stage == "stage1" else stage2_space(config)
    cost = backbone_gmacs if stage == "stage2" and cfg["cost"] == "backbone_gmacs" else None
    if generation == 0 and stage == "stage1":
        rows = initial_generation(stage, n, seed, space1=space)
    elif generation == 0:
        front = pd.read_parquet(stage1_front)
        rows = initial_generation(stage, n, seed, front=front, space2=space, front_cost=config["stage1"]["cost"], cost=cost)
    else:
        pop = pd.read_parquet(population[0])
        rows = next_generation(pop, stage, generation, n, seed, mutator(space), set(pop["arch"]), cost=cost)
    table = candidates_table(rows)
    write_table(table, out)
    log.info("%s generation %d: %d pending, %d pruned", stage, generation,
             (table["status"] == "pending").sum(), (table["status"] == "pruned").sum())
    for _, row in table[table["status"] == "pruned"].iterrows():
        log.info("pruned %s: %s", row["arch"], row["reason"])
    return table


def candidates_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows with arch/stage/generation/parent/status/reason(/cost), plus the folder hash."""
    df = pd.DataFrame(rows, columns=["arch", "stage", "generation", "parent", "status", "reason", "cost"])
    df["generation"] = df["generation"].astype(int)
    df["hash"] = [spec_hash(a) for a in df["arch"]]
    df["cost"] = df["cost"].astype(float)
    return df


def transfer_image_dirs(dataset: str, cfg: dict[str, Any] | None, builtin: str) -> dict[str, str]:
    """Image folders of a transfer dataset's train and evaluation splits."""
    cfg = cfg or {}
    if dataset == "voc":
        root = Path(cfg.get("root") or f"{builtin}/voc")
        devkit = root if (root / "VOC2007").exists() or root.name == "VOCdevkit" else root / "VOCdevkit"
        return {"train": str(devkit), "val": str(devkit)}
    return {"train": cfg.get("train_images") or f"{builtin}/bdd/images/100k/train",
            "val": cfg.get("val_images") or f"{builtin}/bdd/images/100k/val"}


def write_final_arch(name: str, front: str | Path | None, final_cfg: dict[str, Any], out: str | Path) -> None:
    """Write final model ``name``'s architecture (see :func:`final_arch`) to ``out``."""
    spec = final_arch(name, front, final_cfg)
    with atomic_open(out) as f:
        f.write(f"{spec}\n")
    log.info("final model %s: %s", name, spec)


def final_arch(name: str, front: str | Path | None, final_cfg: dict[str, Any]) -> DetectorSpec:
    """The architecture of final model ``name``: ``front{i}`` of the stage-two front (ordered by
    cost, spread along it) or a paper model ``E0``..``E5``; switched to BatchNorm."""
    from smnas.models.paper import PAPER_MODELS

    if name.startswith("front"):
        df = pd.read_parquet(front).sort_values("map", ascending=False)
        i = int(name[len("front"):])
        if i >= len(df):
            raise SmnasError(f"final model {name}: the stage-two front has only {len(df)} models")
        spec = parse_spec(df["arch"].iloc[i])
    else:
        spec = parse_spec(PAPER_MODELS[name])
        size = final_cfg.get("paper_input_size")
        if size:
            spec = DetectorSpec(spec.backbone, spec.neck, spec.rpn, spec.head, tuple(size), spec.norm)
    return spec.with_norm("bn")


def write_report_tables(populations: list[str | Path], metrics: list[str | Path], plot: str | Path,
                        correlation_csv: str | Path, metrics_csv: str | Path) -> None:
    """Backbone-factor correlations (stage-two population) and the final/transfer metrics table."""
    from smnas.report import factor_correlations, metrics_table, plot_factor_correlations, write_csv

    population = pd.concat([pd.read_parquet(p) for p in populations], ignore_index=True)
    corr = factor_correlations(population)
    write_csv(corr, correlation_csv)
    plot_factor_correlations(corr, plot)
    write_csv(metrics_table(metrics), metrics_csv)
