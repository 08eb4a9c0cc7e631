"""Pretraining a backbone as an image classifier, so that detectors start from its weights.

    key = backbone_key("resnet18", 0.25)                         # "resnet18@0.25"
    metrics = pretrain_backbone("resnet18", 0.25, data_root="data/shapes-cls",
                                out_weights=f"pretrained/{key}.pt", workdir=f"pretrained/{key}",
                                cfg=PretrainConfig(optim=TrainConfig(epochs=30, batch_size=64, lr=0.1)))
    build_detector(spec, DetectorOptions(num_classes=6, backbone_weights=f"pretrained/{key}.pt"))

The SM-NAS paper (Yao et al., AAAI 2020) starts its stage-one backbones from ImageNet weights
and pre-trains its final searched backbones on ImageNet before fine-tuning on COCO. Here the
backbone (any name or encoding :func:`smnas.models.backbones.build_backbone` takes) gets a
global average pool and a linear classifier on its last level (P4, stride 32), as torchvision's
ResNet, and trains with :func:`smnas.engine.train.train`: SGD, warm-up, cosine or step
schedule, per-epoch checkpoints that resume exactly, and data-parallel under torchrun. The
output is the *backbone's* state_dict, keys exactly as ``build_backbone(...).state_dict()``, so
``DetectorOptions(backbone_weights=path)`` loads it (classifier dropped).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from smnas.data.classification import classification_transforms, load_image_folders
from smnas.engine.device_lock import DeviceLock
from smnas.engine.distributed import barrier, broadcast_object, init_distributed
from smnas.engine.train import TrainConfig, train
from smnas.errors import SmnasError
from smnas.io import atomic_path, atomic_write_json
from smnas.models.backbones import build_backbone
from smnas.models.build import IMAGE_MEAN, IMAGE_STD
from smnas.models.norm import NormKind
from smnas.models.registry import backbone_key

log = logging.getLogger(__name__)


def _imagenet_recipe() -> TrainConfig:
    # torchvision's ResNet ImageNet recipe: 90 epochs, 256 images (8 GPUs x 32), lr 0.1, x0.1 at
    # epochs 30 and 60, weight decay 1e-4, no warm-up, no gradient clipping.
    return TrainConfig(epochs=90, batch_size=32, lr=0.1, lr_min=0.0, weight_decay=1e-4, warmup_iters=0,
                       grad_clip=None, schedule="step", milestones=(30, 60))


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pretraining run (defaults: torchvision's ImageNet ResNet recipe)."""

    optim: TrainConfig = field(default_factory=_imagenet_recipe)  # epochs, batch, lr, schedule, seed
    image_size: int = 224  # side of the training crops and of the centre crop at evaluation
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (Inception's)
    augment: bool = True  # random crops and flips in training; False: evaluation's resize+crop
    label_smoothing: float = 0.0
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", tuple(float(v) for v in self.crop_scale))
        if self.image_size < 8:
            raise ValueError(f"PretrainConfig.image_size must be >= 8, got {self.image_size}")
        lo, hi = self.crop_scale if len(self.crop_scale) == 2 else (0.0, -1.0)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"PretrainConfig.crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, "
                             f"got {self.crop_scale}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"PretrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.eval_batch_size < 1:
            raise ValueError(f"PretrainConfig.eval_batch_size must be >= 1, got {self.eval_batch_size}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "pretrain") -> "PretrainConfig":
        """One flat dict (a config block): TrainConfig's keys go to ``optim``, the rest here.

        Keys not set keep the defaults above (TrainConfig's from the ImageNet recipe, whose
        milestones a ``schedule: cosine`` drops); an unknown key or a bad value is a SmnasError
        naming ``where``.
        """
        optim_keys = {f.name for f in fields(TrainConfig)}
        own_keys = {f.name for f in fields(cls)} - {"optim"}
        unknown = sorted(set(values) - optim_keys - own_keys)
        if unknown:
            raise SmnasError(f"{where}: unknown key(s) {unknown}; valid: {sorted(optim_keys | own_keys)}")
        optim = {**asdict(_imagenet_recipe()), **{k: v for k, v in values.items() if k in optim_keys}}
        if values.get("schedule") == "cosine" and "milestones" not in values:
            optim["milestones"] = ()  # the recipe's steps do not apply to a cosine schedule
        try:
            return cls(optim=TrainConfig(**optim), **{k: v for k, v in values.items() if k in own_keys})
        except (TypeError, ValueError) as e:
            raise SmnasError(f"{where}: {e}") from None


class BackboneClassifier(nn.Module):
    """A backbone, global average pooling of its last level, a linear layer: an image classifier.

    Args:
        backbone: a module with ``levels`` whose forward returns the levels by name.
        num_classes: outputs K.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.last = backbone.levels[-1].name
        self.fc = nn.Linear(backbone.levels[-1].channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised images -> logits (B, K)."""
        feats = self.backbone(x)[self.last]  # (B, C, H/32, W/32)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1))


class _ClassificationLoss(nn.Module):
    """The classifier in train()'s convention: ``model(images, targets)`` -> dict of losses."""

    def __init__(self, classifier: BackboneClassifier, label_smoothing: float) -> None:
        super().__init__()
        self.classifier, self.label_smoothing = classifier, label_smoothing

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        logits = self.classifier(torch.stack(images))  # (B, K)
        labels = torch.stack([t["label"] for t in targets])  # (B,)
        return {"loss_cls": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}


class _WithTargets(Dataset):
    """(image, label) items as train() wants them: (image, {"label": Int64Tensor[]})."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, label = self.dataset[index]
        return image, {"label": torch.tensor(label, dtype=torch.int64)}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: Dataset, device: str | torch.device = "cpu",
                        batch_size: int = 64) -> dict[str, float]:
    """Top-1 and top-5 accuracy of ``model`` on ``dataset`` (in eval mode).

    Args:
        model: maps (B, 3, H, W) to logits (B, K).
        dataset: yields (FloatTensor[3, H, W], int label).
        device: where to run.
        batch_size: images per forward.

    Returns:
        ``{"top1", "top5", "images"}``: accuracies in [0, 1] (top-5 is top-K when K < 5).
    """
    model.eval()
    correct1 = correct5 = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(images.to(device))  # (B, K)
        labels = labels.to(device)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(dim=1).sum())
        total += len(labels)
    return {"top1": correct1 / max(total, 1), "top5": correct5 / max(total, 1), "images": total}


def pretrain_backbone(
    backbone: str,
    width: float,
    data_root: str | Path,
    out_weights: str | Path,
    workdir: str | Path,
    cfg: PretrainConfig = PretrainConfig(),
    device: str = "cpu",
    norm: NormKind = "bn",
    out_metrics: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``backbone`` as a classifier on ``data_root/{train,val}``; write its weights.

    Reruns resume from ``workdir/last.pt`` (a finished run only evaluates and writes again).
    Under torchrun every process calls this alike; rank 0 evaluates and writes.

    Args:
        backbone: a named backbone or an encoding (see :func:`backbone_key`).
        width: channel multiplier of a named backbone (1.0 for an encoding).
        data_root: ImageFolder layout ``train/<class>/*`` and ``val/<class>/*`` (see
            :mod:`smnas.data.classification`; ImageNet's layout).
        out_weights: the backbone's state_dict (CPU tensors), written atomically.
        workdir: checkpoints (``last.pt``).
        cfg: optimisation and augmentation settings; ``cfg.optim.seed`` seeds the initial weights.
        device: ``"cpu"`` or ``"cuda"``.
        norm: ``"bn"`` (what detectors fine-tune from) or ``"gnws"``.
        out_metrics: the JSON written beside (default ``workdir/metrics.json``).
        progress: tqdm bars (default: when stderr is a terminal).

    Returns:
        What ``out_metrics`` holds: backbone (the key), top1, top5 (val), val_images,
        train_images, classes, status, epochs, seconds, eval_seconds, world_size, history
        (mean loss per epoch), train (the TrainConfig), image_size.

    Raises:
        SmnasError: bad data or backbone name (before anything is written); a non-finite loss
        (the checkpoint of the last good epoch stays, no output is written).
    """
    key = backbone_key(backbone, width, norm)
    env, dev = init_distributed(device)
    mean_std = (IMAGE_MEAN, IMAGE_STD)  # the detectors' own normalisation, so features carry over
    train_set, val_set = load_image_folders(
        data_root, classification_transforms(cfg.image_size, cfg.augment, *mean_std, crop_scale=cfg.crop_scale),
        classification_transforms(cfg.image_size, False, *mean_std))
    torch.manual_seed(cfg.optim.seed)  # the same initial weights for the same backbone and seed
    classifier = BackboneClassifier(build_backbone(backbone, width, norm), len(train_set.classes))
    identity = {"backbone": key, "data": str(data_root), "train_images": len(train_set), "classes": train_set.classes,
                "pretrain": {k: v for k, v in asdict(cfg).items() if k != "optim"}}
    result = train(_ClassificationLoss(classifier, cfg.label_smoothing), _WithTargets(train_set), cfg.optim,
                   workdir, device=dev, progress=progress, lock=DeviceLock(str(dev)), identity=identity)
    if result.status != "ok":
        raise SmnasError(f"pretraining {key} failed: {result.reason} "
                         f"(checkpoint of epoch {result.epochs} in {workdir})")
    metrics = None
    if env.is_main:
        t0 = time.perf_counter()
        accuracy = evaluate_classifier(classifier, val_set, dev, cfg.eval_batch_size)
        metrics = {"backbone": key, "name": backbone, "width": width, "norm": norm, "status": result.status,
                   "top1": accuracy["top1"], "top5": accuracy["top5"], "val_images": accuracy["images"],
                   "train_images": len(train_set), "classes": train_set.classes, "epochs": result.epochs,
                   "seconds": result.seconds, "eval_seconds": time.perf_counter() - t0,
                   "world_size": result.world_size, "image_size": cfg.image_size,
                   "history": result.history, "spans": result.spans,  # Unix times, for bench/workflow.py
                   "train": {**asdict(cfg.optim), "milestones": list(cfg.optim.milestones)}}  # as JSON reads back
        with atomic_path(out_weights) as tmp:
            torch.save({k: v.detach().cpu() for k, v in classifier.backbone.state_dict().items()}, tmp)
        atomic_write_json(Path(out_metrics) if out_metrics is not None else Path(workdir) / "metrics.json",
                          metrics, indent=2)
        log.info("pretrained %s: top-1 %.3f top-5 %.3f in %.0f s", key, metrics["top1"], metrics["top5"],
                 result.seconds)
    barrier(env, dev)  # the weights exist before any process goes on to use them
    return broadcast_object(metrics, env)
