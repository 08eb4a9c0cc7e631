"""The training loop every candidate goes through.

    result = train(model, dataset, TrainConfig(epochs=5, lr=0.04), workdir="results/x/train")

SGD with momentum and weight decay, linear warm-up then cosine decay per iteration (the paper's
stage one: cosine 0.04 -> 0.0001). A checkpoint is written atomically after every epoch with the
model, optimizer, scheduler and every RNG state, so a training killed at any point resumes from its last
finished epoch and ends with exactly the weights an uninterrupted run would have (CPU, same
seed). A non-finite loss stops the candidate: the result says ``status="failed"`` and why,
and nothing is raised, so a search generation goes on.
"""
from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from smnas.data.dataset import collate
from smnas.engine.device_lock import DeviceLock
from smnas.io import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (defaults: the paper's stage one)."""

    epochs: int = 5  # paper stage one: 5 epochs per candidate
    batch_size: int = 2  # per device; the paper's 16 is 8 GPUs x 2
    lr: float = 0.04  # peak lr after warm-up (paper: 0.04 stage one, 0.24 GN+WS stage two)
    lr_min: float = 1e-4  # cosine floor (paper: 0.0001)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100  # linear warm-up protects the first steps at a high lr
    warmup_factor: float = 1e-3  # lr at iteration 0 is lr * warmup_factor
    grad_clip: float | None = 10.0  # max grad norm; detection losses spike early on
    seed: int = 0
    num_workers: int = 0  # 0 keeps a CPU run bit-exact on resume

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ValueError(f"TrainConfig needs lr > 0 and 0 <= lr_min <= lr, got {self.lr}, {self.lr_min}")


@dataclass
class TrainResult:
    """What a training run reports. ``status`` is ``"ok"`` or ``"failed"`` (see ``reason``)."""

    status: str
    epochs: int  # epochs completed
    seconds: float  # training wall time, summed over resumed parts
    images_per_second: float
    reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)  # mean losses per epoch
    # Unix-time [start, end] of each epoch's loop, over resumed parts (for bench/workflow.py)
    spans: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_lambda(cfg: TrainConfig, total_iters: int) -> Callable[[int], float]:
    """Multiplicative lr factor at iteration ``it``: linear warm-up, then cosine to lr_min."""
    warmup = min(cfg.warmup_iters, max(total_iters - 1, 0))
    floor = cfg.lr_min / cfg.lr

    def factor(it: int) -> float:
        if it < warmup:
            alpha = it / warmup
            return cfg.warmup_factor * (1 - alpha) + alpha
        progress = (it - warmup) / max(total_iters - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _rng_state(sampler_gen: torch.Generator) -> dict[str, Any]:
    # Tensors and plain Python values only, so that the checkpoint loads with weights_only=True:
    # numpy's state holds an ndarray, which that loader refuses; its key goes in as a list of ints.
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}
    return {
        "torch": torch.get_rng_state(),
        "numpy": numpy_state,
        "python": random.getstate(),
        "sampler": sampler_gen.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any], sampler_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):  # a tuple is the ndarray form of checkpoints written before
        numpy_state = {**numpy_state, "state": {**numpy_state["state"],
                                                "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32)}}
    np.random.set_state(numpy_state)
    random.setstate(state["python"])
    sampler_gen.set_state(state["sampler"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _save_checkpoint(path: Path, model, optimizer, scheduler, epoch, sampler_gen, history, seconds, spans) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "rng": _rng_state(sampler_gen),
        "history": history,
        "seconds": seconds,
        "spans": spans,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# What a checkpoint written before the RNG state went in as plain types holds besides tensors:
# numpy's RNG key, an ndarray. Allowed while loading one, so that runs interrupted before an
# upgrade still resume; torch's documentation names these for loading numpy arrays.
_LEGACY_CHECKPOINT_GLOBALS: list[Any] = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import _reconstruct
_LEGACY_CHECKPOINT_GLOBALS.append(_reconstruct)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint (``last.pt``) without running code from it.

    ``weights_only=True``: a checkpoint is a file in a shared results folder, and unpickling it
    in full would run whatever it names. Checkpoints hold tensors and plain Python values only;
    those written before that also hold numpy's RNG key, and the numpy types it needs are allowed.

    Args:
        path: the checkpoint file.
        device: where its tensors go (keep the CPU to restore RNG states from them).

    Returns:
        The state :func:`train` saved: model, optimizer, scheduler, epoch, rng, history, seconds, spans.
    """
    with torch.serialization.safe_globals(_LEGACY_CHECKPOINT_GLOBALS):
        return torch.load(path, map_location=device, weights_only=True)


def train(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    workdir: str | Path,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    lock: DeviceLock | None = None,
) -> TrainResult:
    """Train ``model`` (torchvision detection convention) on ``dataset``, resuming if possible.

    Args:
        model: returns a dict of losses from ``model(images, targets)`` in train mode.
        dataset: yields ``(image FloatTensor[3, H, W], target dict)`` (see DetectionDataset).
        cfg: optimisation settings.
        workdir: holds ``last.pt``; if it exists the run resumes after its epoch.
        device: where to train.
        progress: show a tqdm bar (default: when stderr is a terminal).
        on_epoch_end: called as ``on_epoch_end(epoch, mean_losses)`` after each checkpoint.
        lock: held shared for every step (batch loading included), so that a latency
            measurement elsewhere on the machine has the device alone (see DeviceLock).

    Returns:
        A TrainResult; ``model`` holds the trained weights (on ``device``) when status is "ok".
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    progress = sys.stderr.isatty() if progress is None else progress
    model.to(device)
    sampler_gen = torch.Generator()
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=RandomSampler(dataset, generator=sampler_gen),
        collate_fn=collate, num_workers=cfg.num_workers, drop_last=False,
    )
    optimizer = _make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, cfg.epochs * len(loader)))
    start_epoch, history, seconds, spans = 0, [], 0.0, []
    ckpt_path = workdir / CHECKPOINT
    if ckpt_path.exists():
        # On the CPU whatever ``device``: the RNG states must be CPU tensors (torch.set_rng_state
        # refuses others), and the model and optimizer copy theirs to their parameters' device.
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], sampler_gen)
        start_epoch, history, seconds = state["epoch"], state["history"], state["seconds"]
        spans = state.get("spans", [])
        log.info("resuming %s after epoch %d/%d", ckpt_path, start_epoch, cfg.epochs)
    else:
        seed_everything(cfg.seed)
        sampler_gen.manual_seed(cfg.seed)

    images_seen = 0
    for epoch in range(start_epoch, cfg.epochs):
        t0, start = time.perf_counter(), time.time()
        means, failure, n_images = _run_epoch(model, loader, optimizer, scheduler, cfg, epoch, device, progress, lock)
        elapsed = time.perf_counter() - t0
        spans.append([start, time.time()])
        seconds += elapsed
        images_seen += n_images
        if failure:
            log.error("epoch %d/%d: %s", epoch + 1, cfg.epochs, failure)
            return TrainResult("failed", epoch, seconds, images_seen / max(seconds, 1e-9), failure, history, spans)
        history.append(means)
        _save_checkpoint(ckpt_path, model, optimizer, scheduler, epoch + 1, sampler_gen, history, seconds, spans)
        log.info(
            "epoch %d/%d loss %.4f (%s) lr %.5f %.1f img/s",
            epoch + 1, cfg.epochs, means["loss"],
            " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in means.items() if k != "loss"),
            optimizer.param_groups[0]["lr"], n_images / max(elapsed, 1e-9),
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, means)
    ips = len(dataset) * cfg.epochs / max(seconds, 1e-9)
    return TrainResult("ok", cfg.epochs, seconds, ips, "", history, spans)


def _run_epoch(model, loader, optimizer, scheduler, cfg, epoch, device, progress, lock=None):
    """One pass over ``loader``. Returns (mean losses, failure reason or "", images seen)."""
    model.train()
    sums: dict[str, float] = {}
    steps = n_images = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for images, targets in (lock.steps(bar) if lock is not None else bar):
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            return sums, f"non-finite loss at epoch {epoch + 1} step {steps + 1}: {detail}", n_images
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        steps += 1
        n_images += len(images)
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
    return {k: v / max(steps, 1) for k, v in sums.items()}, "", n_images
