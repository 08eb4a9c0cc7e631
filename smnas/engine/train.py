"""The training loop every candidate goes through.

    result = train(model, dataset, TrainConfig(epochs=5, lr=0.04), workdir="results/x/train")

SGD with momentum and weight decay, linear warm-up then, per iteration, cosine decay (the SM-NAS
paper's search stages: cosine 0.04 -> 0.0001) or steps (its final models' 2x schedule: 24
epochs, lr x0.1 after epochs 16 and 22: ``TrainConfig(schedule="step", milestones=(16, 22))``).
A checkpoint is written atomically after every epoch with the model, optimizer, scheduler and
every RNG state, so a training killed at any point resumes from its last finished epoch and ends
with exactly the weights an uninterrupted run would have (CPU, same seed). A non-finite loss
stops the candidate: the result says ``status="failed"`` and why, and nothing is raised, so a
search generation goes on.

Started under ``torchrun`` the same call trains data-parallel on the node's devices
(:mod:`smnas.engine.distributed`): global batch ``batch_size x WORLD_SIZE``, lr as given, rank 0
writes the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from smnas.data.dataset import collate
from smnas.engine.device_lock import DeviceLock
from smnas.engine.distributed import DistEnv, all_true, barrier, gather_objects, init_distributed, mean_over_ranks
from smnas.errors import SmnasError
from smnas.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
RUN_RECORD = "run.json"  # beside last.pt: which run wrote it (see run_identity)
SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (defaults: the paper's stage one)."""

    epochs: int = 5  # paper stage one: 5 epochs per candidate
    batch_size: int = 2  # per device (per torchrun process); the paper's 16 is 8 GPUs x 2
    lr: float = 0.04  # peak lr after warm-up (paper: 0.04 stage one, 0.24 GN+WS stage two)
    lr_min: float = 1e-4  # cosine floor (paper: 0.0001); unused by "step"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100  # linear warm-up protects the first steps at a high lr
    warmup_factor: float = 1e-3  # lr at iteration 0 is lr * warmup_factor
    grad_clip: float | None = 10.0  # max grad norm; detection losses spike early on
    seed: int = 0
    num_workers: int = 0  # 0 keeps a CPU run bit-exact on resume
    schedule: str = "cosine"  # after warm-up: "cosine" (search stages) or "step" (final models)
    milestones: tuple[int, ...] = ()  # "step": lr *= gamma after each of these epochs; 2x: (16, 22)
    gamma: float = 0.1  # "step": the factor at each milestone (paper, as Detectron's 2x: 0.1)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ValueError(f"TrainConfig needs lr > 0 and 0 <= lr_min <= lr, got {self.lr}, {self.lr_min}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        # A YAML list arrives as a list: keep the config hashable and its repr canonical.
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if any(isinstance(m, bool) or not isinstance(m, int) for m in self.milestones):
            raise ValueError(f"TrainConfig.milestones must be integers (epochs), got {self.milestones!r}")
        if self.milestones and self.schedule != "step":
            raise ValueError(f"TrainConfig.milestones {self.milestones} apply to schedule='step' only, "
                             f"not {self.schedule!r}")
        ok = all(0 < m < self.epochs for m in self.milestones) and all(
            a < b for a, b in zip(self.milestones, self.milestones[1:]))
        if not ok:
            raise ValueError(f"TrainConfig.milestones must increase strictly within 1..{self.epochs - 1} "
                             f"(epochs={self.epochs}), got {self.milestones}")
        if not self.gamma > 0:
            raise ValueError(f"TrainConfig.gamma must be > 0, got {self.gamma}")


@dataclass
class TrainResult:
    """What a training run reports. ``status`` is ``"ok"`` or ``"failed"`` (see ``reason``)."""

    status: str
    epochs: int  # epochs completed
    seconds: float  # training wall time, summed over resumed parts
    images_per_second: float
    reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)  # mean losses per epoch (over processes)
    # Unix-time [start, end] of each epoch's loop, over resumed parts (for bench/workflow.py)
    spans: list[list[float]] = field(default_factory=list)
    world_size: int = 1  # data-parallel processes (torchrun); the global batch is batch_size x this

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_lambda(cfg: TrainConfig, total_iters: int) -> Callable[[int], float]:
    """Multiplicative lr factor at iteration ``it`` (0-based), for ``LambdaLR``.

    A linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters``, then ``cfg.schedule``:
    cosine from 1 to ``lr_min / lr`` at ``total_iters``, or steps: times ``gamma`` from the first
    iteration after each milestone epoch (with ``total_iters / epochs`` iterations per epoch).
    A milestone inside the warm-up (tiny runs) multiplies the ramp.

    Args:
        cfg: the schedule settings.
        total_iters: iterations of the whole run, ``epochs x`` iterations per epoch.

    Returns:
        ``factor(it) -> float``; the lr of iteration ``it`` is ``cfg.lr * factor(it)``.
    """
    warmup = min(cfg.warmup_iters, max(total_iters - 1, 0))
    floor = cfg.lr_min / cfg.lr
    per_epoch = total_iters / cfg.epochs
    steps = [round(m * per_epoch) for m in cfg.milestones]

    def ramp(it: int) -> float:
        if it >= warmup:
            return 1.0
        alpha = it / warmup
        return cfg.warmup_factor * (1 - alpha) + alpha

    def step(it: int) -> float:
        return ramp(it) * cfg.gamma ** sum(it >= s for s in steps)

    def cosine(it: int) -> float:
        if it < warmup:
            return ramp(it)
        progress = (it - warmup) / max(total_iters - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return step if cfg.schedule == "step" else cosine


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


def _save_checkpoint(path: Path, model, optimizer, scheduler, epoch, rngs, history, seconds, spans) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "rng": rngs[0],
        "history": history,
        "seconds": seconds,
        "spans": spans,
        "world_size": len(rngs),
    }
    if len(rngs) > 1:  # each process's own augmentation and sampling streams, by rank
        state["rng_ranks"] = rngs
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


def run_identity(model: nn.Module, cfg: TrainConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the optimisation settings, a digest of the
    initial weights (every tensor's name, shape and bytes: the architecture as the code builds it,
    the seed, pretrained or inherited weights) and the caller's ``extra`` (data, augmentation), as
    plain JSON types."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().reshape(-1).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{flat.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return json.loads(json.dumps({"train": asdict(cfg), "initial_weights": digest.hexdigest(), **(extra or {})}))


def _forget_other_run(workdir: Path, identity: dict[str, Any], env: DistEnv, device: torch.device) -> None:
    """A ``last.pt`` written by another run (another architecture in a reused folder, new settings
    or pretrained weights after a config change, a model the code now builds differently) is
    deleted, never resumed: a resume would silently finish the old run. Then ``run.json`` records
    this run. Every process decides before the main one deletes."""
    ckpt, record = workdir / CHECKPOINT, workdir / RUN_RECORD
    old = json.loads(record.read_text()) if record.exists() else None
    stale = ckpt.exists() and old != identity
    barrier(env, device)
    if not env.is_main:
        barrier(env, device)
        return
    if stale:
        why = ("no run.json says which run wrote it" if old is None else "it was written by a run with another "
               + ", ".join(k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)))
        log.warning("%s: %s; starting afresh", ckpt, why)
        ckpt.unlink()
    atomic_write_json(record, identity, indent=1)
    barrier(env, device)


def train(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    workdir: str | Path,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    lock: DeviceLock | None = None,
    identity: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` (torchvision detection convention) on ``dataset``, resuming if possible.

    Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) every process calls this with
    the same arguments: each trains on its share of every epoch (``DistributedSampler`` seeded
    with ``cfg.seed``; a share is padded with repeats when the dataset does not divide), the
    gradients are averaged, and rank 0 alone writes ``last.pt`` while the others wait. A
    checkpoint resumes only on as many processes as wrote it.

    Args:
        model: returns a dict of losses from ``model(images, targets)`` in train mode.
        dataset: yields ``(image FloatTensor[3, H, W], target dict)`` (see DetectionDataset).
        cfg: optimisation settings.
        workdir: holds ``last.pt``; if it exists and was written by the same run (``run.json``:
            :func:`run_identity`), the run resumes after its epoch, else it starts afresh.
        device: where to train (under torchrun ``"cuda"`` means ``cuda:LOCAL_RANK``).
        progress: show a tqdm bar (default: when stderr is a terminal; rank 0 only).
        on_epoch_end: called as ``on_epoch_end(epoch, mean_losses)`` after each checkpoint, in
            every process.
        lock: held shared for every step (batch loading included), so that a latency
            measurement elsewhere on the machine has the device alone (see DeviceLock).
        identity: what else defines the run beside ``cfg`` and the initial weights (data,
            augmentation, the architecture's name), JSON-serialisable.

    Returns:
        A TrainResult; ``model`` holds the trained weights (on ``device``) when status is "ok".
    """
    workdir = Path(workdir)
    env, device = init_distributed(device)
    if env.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    progress = env.is_main and (sys.stderr.isatty() if progress is None else progress)
    _forget_other_run(workdir, run_identity(model, cfg, identity), env, device)
    model.to(device)
    sampler_gen = torch.Generator()
    loader = _make_loader(dataset, cfg, env, sampler_gen)
    optimizer = _make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, cfg.epochs * len(loader)))
    ckpt_path = workdir / CHECKPOINT
    start_epoch, history, seconds, spans = _resume_or_seed(ckpt_path, model, optimizer, scheduler,
                                                           sampler_gen, cfg, env)
    # DDP broadcasts rank 0's weights once, then averages gradients in every backward.
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if env.distributed else model
    images_seen = 0
    for epoch in range(start_epoch, cfg.epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)  # a new shuffle per epoch, the same on every process
        t0, start = time.perf_counter(), time.time()
        means, failure, n_images = _run_epoch(net, loader, optimizer, scheduler, cfg, epoch, device, progress,
                                              lock, env)
        elapsed = time.perf_counter() - t0
        spans.append([start, time.time()])
        seconds += elapsed
        images_seen += n_images * env.world_size
        if failure:
            log.error("epoch %d/%d: %s", epoch + 1, cfg.epochs, failure)
            return TrainResult("failed", epoch, seconds, images_seen / max(seconds, 1e-9), failure, history, spans,
                               env.world_size)
        history.append(mean_over_ranks(means, env, device))
        rngs = gather_objects(_rng_state(sampler_gen), env)
        if env.is_main:
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, epoch + 1, rngs, history, seconds, spans)
        barrier(env, device)  # no process runs ahead of a checkpoint that might not get written
        _log_epoch(epoch, cfg, history[-1], optimizer, n_images * env.world_size / max(elapsed, 1e-9), env)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history[-1])
    ips = len(dataset) * cfg.epochs / max(seconds, 1e-9)
    return TrainResult("ok", cfg.epochs, seconds, ips, "", history, spans, env.world_size)


def _make_loader(dataset: Dataset, cfg: TrainConfig, env: DistEnv, sampler_gen: torch.Generator) -> DataLoader:
    if env.distributed:
        sampler: Any = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=False)
    else:
        sampler = RandomSampler(dataset, generator=sampler_gen)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=cfg.num_workers, drop_last=False)


def _resume_or_seed(ckpt_path: Path, model, optimizer, scheduler, sampler_gen, cfg: TrainConfig,
                    env: DistEnv) -> tuple[int, list, float, list]:
    """Load ``last.pt`` if there is one, else seed every RNG. Returns (epoch, history, seconds, spans)."""
    if not ckpt_path.exists():
        seed_everything(cfg.seed + env.rank)  # rank 0 as a single process; others augment differently
        sampler_gen.manual_seed(cfg.seed)
        return 0, [], 0.0, []
    # On the CPU whatever ``device``: the RNG states must be CPU tensors (torch.set_rng_state
    # refuses others), and the model and optimizer copy theirs to their parameters' device.
    state = load_checkpoint(ckpt_path)
    written_by = state.get("world_size", 1)
    if written_by != env.world_size:
        raise SmnasError(f"{ckpt_path}: written by a run on {written_by} process(es), now resumed on "
                         f"{env.world_size}: the global batch and schedule would change; resume with "
                         f"{written_by} or delete the checkpoint to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng_ranks"][env.rank] if env.distributed else state["rng"], sampler_gen)
    log.info("resuming %s after epoch %d/%d", ckpt_path, state["epoch"], cfg.epochs)
    return state["epoch"], state["history"], state["seconds"], state.get("spans", [])


def _log_epoch(epoch: int, cfg: TrainConfig, means: dict[str, float], optimizer, ips: float, env: DistEnv) -> None:
    if not env.is_main:
        return
    log.info(
        "epoch %d/%d loss %.4f (%s) lr %.5f %.1f img/s",
        epoch + 1, cfg.epochs, means["loss"],
        " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in means.items() if k != "loss"),
        optimizer.param_groups[0]["lr"], ips,
    )


def _run_epoch(model, loader, optimizer, scheduler, cfg, epoch, device, progress, lock=None, env=DistEnv()):
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
        finite = bool(torch.isfinite(loss))
        if not all_true(finite, env, device):  # every process stops at the same step, none hangs
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()) if not finite else \
                f"on another process (rank {env.rank} had {loss.item():.4g})"
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
