"""Evaluate one candidate architecture: train, predict, COCO mAP, latency, MACs.

This is the unit of work of every search generation (a Snakemake job, or ``smnas train``).
A failed training (non-finite loss) is returned as ``status: failed`` with its reason.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from smnas.data.coco import load_coco
from smnas.data.dataset import DetectionDataset
from smnas.engine.inference import predict
from smnas.engine.measure import count_macs, count_params, measure_latency
from smnas.engine.train import TrainConfig, train
from smnas.evaluation import coco_evaluate, write_detections
from smnas.io import atomic_write_json
from smnas.models.build import DetectorOptions, build_detector, build_features
from smnas.models.spec import DetectorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPaths:
    """Where a split's COCO JSON and images are."""

    train_json: str
    train_images: str
    val_json: str
    val_images: str


def model_cost(spec: DetectorSpec, num_classes: int) -> dict[str, Any]:
    """Parameters and MACs of the backbone alone and of the whole detector at ``spec.input_size``.

    MACs of the whole detector count the backbone, neck and heads on one image (RoI ops that the
    counter does not know are left out); ``backbone_*`` exclude any classifier.
    """
    width, height = spec.input_size
    image = torch.rand(3, height, width)
    backbone = build_features(spec).body
    detector = build_detector(spec, DetectorOptions(num_classes=num_classes))
    return {
        "spec": str(spec),
        "backbone_params": count_params(backbone),
        "backbone_gmacs": count_macs(backbone, image[None]) / 1e9,
        "params": count_params(detector),
        "gmacs": count_macs(detector, [image]) / 1e9,
    }


def backbone_cost(encoding: str, input_size: tuple[int, int], norm: str = "bn") -> dict[str, Any]:
    """Parameters and MACs of a backbone encoding alone at ``input_size`` (width, height)."""
    from smnas.models.backbones import build_backbone

    width, height = input_size
    backbone = build_backbone(encoding, norm=norm)
    params = count_params(backbone)
    gmacs = count_macs(backbone, torch.rand(1, 3, height, width)) / 1e9
    return {"spec": encoding, "backbone_params": params, "backbone_gmacs": gmacs, "params": params, "gmacs": gmacs}


def evaluate_candidate(
    spec: DetectorSpec,
    data: DataPaths,
    train_cfg: TrainConfig,
    opts: DetectorOptions,
    workdir: str | Path,
    device: str = "cpu",
    latency_runs: int = 10,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``spec`` on ``data`` and measure it; write ``metrics.json`` and ``detections.json``.

    Returns:
        A flat dict: arch, status (ok/failed), reason, map, map50, map75, maps, mapm, mapl,
        latency_ms, device, gmacs, params, backbone_gmacs, backbone_params, train_seconds, epochs.
    """
    workdir = Path(workdir)
    train_coco = load_coco(data.train_json, data.train_images)
    val_coco = load_coco(data.val_json, data.val_images)
    train_set = DetectionDataset(train_coco, data.train_images, hflip_prob=0.5)
    val_set = DetectionDataset(val_coco, data.val_images)
    if opts.num_classes != train_set.num_classes:
        raise ValueError(f"DetectorOptions.num_classes={opts.num_classes} but {data.train_json} has {train_set.num_classes} categories")
    torch.manual_seed(train_cfg.seed)  # the same initial weights for the same spec and seed
    model = build_detector(spec, opts)
    result = train(model, train_set, train_cfg, workdir / "train", device=device, progress=progress)
    row: dict[str, Any] = {"arch": str(spec), "status": result.status, "reason": result.reason,
                           "train_seconds": result.seconds, "epochs": result.epochs}
    row.update({k: v for k, v in model_cost(spec, opts.num_classes).items() if k != "spec"})
    if result.status == "ok":
        dets = predict(model, val_set, device=device, progress=progress)
        write_detections(dets, workdir / "detections.json")
        stats = coco_evaluate(val_coco, dets)
        row.update(map=stats["AP"], map50=stats["AP50"], map75=stats["AP75"],
                   maps=stats["APs"], mapm=stats["APm"], mapl=stats["APl"])
        lat = measure_latency(model, spec.input_size, device=device, runs=latency_runs)
        row.update(latency_ms=lat.median_ms, device=lat.device)
        torch.save(model.state_dict(), workdir / "model.pt")
    row["train"] = asdict(train_cfg)
    atomic_write_json(workdir / "metrics.json", row, indent=2)
    log.info("%s: %s map=%.4f latency=%.1fms", spec, row["status"], row.get("map", float("nan")), row.get("latency_ms", float("nan")))
    return row
