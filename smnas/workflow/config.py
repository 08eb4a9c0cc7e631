"""The workflow's configuration: checked once, at the edge, then handed on as typed settings.

``check_config`` runs before any job (``rules/common.smk``): the JSON schema
(``config/schema.yaml``), then what a schema cannot say (spaces that parse, paths that exist).
A bad config stops with one line that names the key, where it is and what is allowed.
The job functions (:mod:`smnas.workflow.jobs`) turn their params into the typed objects the
search and the engine take (:func:`search_space`, :func:`train_config`, :func:`detector_options`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from smnas.errors import SmnasError
from smnas.models.spec import parse_spec

if TYPE_CHECKING:
    from smnas.engine.train import TrainConfig
    from smnas.models.build import DetectorOptions
    from smnas.search.space import StageOneSpace, StageTwoSpace
    from smnas.workflow.spnas import SPNASSettings

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


class ConfigError(SmnasError):
    """The configuration breaks the schema or names something that is not there."""


def _where(path: Any) -> str:
    return "config " + (".".join(str(p) for p in path) if path else "(top level)")


def validate_schema(config: dict[str, Any], schema: str | Path = SCHEMA) -> None:
    """Check ``config`` against the JSON schema; raise ConfigError with the one error that matters.

    Example: ``config stage1: unknown key 'populaton'; allowed: cost, generations, init, population, screen, space, train``.
    """
    import jsonschema
    from jsonschema.exceptions import best_match

    with open(schema) as f:
        spec = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(spec)
    error = best_match(validator.iter_errors(config))
    if error is None:
        return
    where = _where(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    if error.validator == "required":
        raise ConfigError(f"{where}: {error.message}")
    raise ConfigError(f"{where}: {error.instance!r} is not valid: {error.message}")


def check_config(config: dict[str, Any], schema: str | Path = SCHEMA) -> None:
    """The schema, then checks a JSON schema cannot express; raise ConfigError before any job runs."""
    validate_schema(config, schema)
    search_space("stage1", config["stage1"]["space"])
    search_space("stage2", config["stage2"]["space"])
    data = config["data"]
    if "coco" not in data and "builtin" not in data:
        raise ConfigError("config data: give either data.builtin (the synthetic dataset) or data.coco (your paths)")
    if "builtin" in data:
        from smnas.data.scenes import SceneOptions

        try:
            SceneOptions.from_config(data["builtin"])
        except ValueError as e:
            raise ConfigError(f"config data.builtin: {e}".replace("SceneOptions: ", "")) from None
    for name, path in (config["detector"].get("backbone_weights") or {}).items():
        if not Path(path).is_file():
            raise ConfigError(f"config detector.backbone_weights.{name}: {path} does not exist (weights are never downloaded)")
    for key, path in data.get("coco", {}).items():
        if not Path(path).exists():
            raise ConfigError(f"config data.coco.{key}: {path} does not exist")
    for name in ("voc", "bdd"):
        for key, path in (config["transfer"].get(name) or {}).items():
            if key in ("root", "train_labels", "val_labels", "train_images", "val_images") and path and not Path(path).exists():
                raise ConfigError(f"config transfer.{name}.{key}: {path} does not exist")
    _check_init(config)
    _check_spnas(config)
    from smnas.models.paper import PAPER_MODELS

    unknown = [m for m in config["final"]["paper_models"] if m not in PAPER_MODELS]
    if unknown:
        raise ConfigError(f"config final.paper_models: unknown {unknown}; valid: {sorted(PAPER_MODELS)}")


def _check_init(config: dict[str, Any]) -> None:
    """Where backbones start from: the data pretraining needs, or a file per stage-one backbone."""
    data = config["pretrain"]["data"]
    if ("imagenet" in data) == ("builtin" in data):
        raise ConfigError("config pretrain.data: give either builtin (crops of the built-in shapes) or imagenet (a path)")
    if "imagenet" in data:
        for split in ("train", "val"):
            if not (Path(data["imagenet"]) / split).is_dir():
                raise ConfigError(f"config pretrain.data.imagenet: {Path(data['imagenet']) / split} is not a folder "
                                  "(expected ImageFolder layout: train/<class>/*, val/<class>/*)")
    if config["stage1"].get("init") == "weights":
        space = config["stage1"]["space"]
        if space.get("width", 1.0) != 1.0 or space.get("norm") != "bn":
            raise ConfigError("config stage1.init: weights (torchvision checkpoints) need stage1.space width 1.0 and norm bn")
        files = config["detector"].get("backbone_weights") or {}
        missing = [b for b in space["backbones"] if b not in files]
        if missing:
            raise ConfigError(f"config detector.backbone_weights: stage1.init is weights, but no file is set for "
                              f"{', '.join(missing)} (local torchvision ImageNet checkpoints)")


def modular_methods(config: dict[str, Any]) -> list[str]:
    """The modular searches the config runs: ["smnas"] (stage two, the default), ["spnas"], or both."""
    method = config.get("modular_method", "smnas")
    return ["smnas", "spnas"] if method == "both" else [method]


def _check_spnas(config: dict[str, Any]) -> None:
    if "spnas" not in modular_methods(config):
        return
    block = config.get("spnas")
    if block is None:
        raise ConfigError(f"config modular_method: {config['modular_method']} needs an spnas block (see config/config.yaml)")
    if config.get("modular_method") == "both" and block["cost"] != config["stage2"]["cost"]:
        raise ConfigError(f"config spnas.cost: {block['cost']!r}, but modular_method both compares its front with "
                          f"stage two's: set it to stage2.cost {config['stage2']['cost']!r}")
    for phase in ("serial", "parallel"):
        spnas_settings(spnas_phase_settings(block, phase))


def spnas_phase_settings(block: dict[str, Any], phase: str) -> dict[str, Any]:
    """The plain settings of one SP-NAS phase, as the sample rule passes them: the ``spnas``
    block's space and cost with the phase's keys (its ``generations`` stay in the workflow)."""
    keys = {k: v for k, v in block[phase].items() if k != "generations"}
    return {"phase": phase, "space": block["space"], "cost": block["cost"], **keys}


def spnas_settings(settings: dict[str, Any]) -> "SPNASSettings":
    """Typed SP-NAS settings from :func:`spnas_phase_settings`; ConfigError names the key."""
    from smnas.workflow.spnas import SPNASSettings

    source = f"config spnas.{settings.get('phase')}"
    try:
        return SPNASSettings.from_dict(dict(settings), source)
    except SmnasError as e:
        raise ConfigError(str(e).replace(f"{source}.space", "config spnas.space")) from None


def search_space(stage: str, space: dict[str, Any]) -> "StageOneSpace | StageTwoSpace":
    """The typed space of a stage from its config block ``{stage}.space``."""
    from smnas.search.space import StageTwoSpace, space_from_dict

    try:
        if stage == "stage1":
            return space_from_dict(space, "config stage1.space")
        return StageTwoSpace.from_dict(space, "config stage2.space")
    except SmnasError as e:
        raise ConfigError(str(e)) from None


def train_config(options: dict[str, Any]) -> "TrainConfig":
    """The TrainConfig of a job's ``options`` param (run seed and the stage's ``train`` block)."""
    from smnas.engine.train import TrainConfig

    return TrainConfig(seed=options["seed"], **options["train"])


def detector_options(options: dict[str, Any], num_classes: int, weights: str | None = None) -> "DetectorOptions":
    """DetectorOptions from the config's ``detector`` block; ``weights``: the backbone's initial
    weights (a file :func:`init_weights` chose), or None (from scratch)."""
    from smnas.models.build import DetectorOptions

    det = dict(options["detector"])
    det.pop("backbone_weights", None)  # torchvision files, chosen per model by init_weights
    return DetectorOptions(num_classes=num_classes, backbone_weights=weights, **det)


def transfer_image_dirs(dataset: str, cfg: dict[str, Any] | None, builtin: str) -> dict[str, str]:
    """Image folders of a transfer dataset's train and evaluation splits (config ``transfer.{dataset}``;
    unset paths fall back to the built-in variant under ``builtin``)."""
    cfg = cfg or {}
    if dataset == "voc":
        root = Path(cfg.get("root") or f"{builtin}/voc")
        devkit = root if (root / "VOC2007").exists() or root.name == "VOCdevkit" else root / "VOCdevkit"
        return {"train": str(devkit), "val": str(devkit)}
    return {"train": cfg.get("train_images") or f"{builtin}/bdd/images/100k/train",
            "val": cfg.get("val_images") or f"{builtin}/bdd/images/100k/val"}


def init_weights(mode: str, arch: str, torchvision: dict[str, str]) -> list[str]:
    """The backbone weights a model starts from, as a list of at most one path.

    Args:
        mode: ``scratch``; ``pretrain`` (the pretraining stage's output for this backbone at its
            width and norm: ``results/pretrained/{key}/weights.pt``); or ``weights`` (a local
            torchvision ImageNet file from ``detector.backbone_weights``, for BN models of width 1.0).
        arch: the model's spec string.
        torchvision: the config's ``detector.backbone_weights`` (backbone name -> file).

    Raises:
        ConfigError: ``weights`` for a model no file fits, naming the backbone and the key to set.
    """
    from smnas.models.registry import backbone_key

    if mode == "scratch":
        return []
    spec = parse_spec(arch)
    bb = spec.backbone
    if mode == "pretrain":
        return [f"results/pretrained/{backbone_key(bb.name, bb.width, spec.norm)}/weights.pt"]
    if mode != "weights":
        raise ConfigError(f"init {mode!r}: expected scratch, pretrain or weights")
    if bb.is_encoding or bb.width != 1.0 or spec.norm != "bn":
        raise ConfigError(f"init weights: {arch} has no torchvision checkpoint (named backbones at width 1.0 "
                          "with norm bn only); use init pretrain or scratch")
    if bb.name not in torchvision:
        raise ConfigError(f"config detector.backbone_weights.{bb.name}: not set, but init is weights "
                          f"(a local torchvision ImageNet checkpoint of {bb.name})")
    return [torchvision[bb.name]]
