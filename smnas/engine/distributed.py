"""Data-parallel training on the devices of one node, one process per device, under ``torchrun``.

    torchrun --standalone --nproc-per-node 4 -m smnas.cli pretrain resnet50 --device cuda ...

torchrun starts the processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the
rendezvous address) in each; :func:`smnas.engine.train.train` reads them through
:func:`init_distributed` and then trains data-parallel (PyTorch ``DistributedDataParallel``):
each process draws its share of every epoch from a ``DistributedSampler`` seeded with the run's
seed, gradients are averaged over processes after every backward, and only rank 0 writes
checkpoints and outputs while the others wait at a barrier. Without those variables (a plain
``python`` or Snakemake job) everything runs in one process, as before.

Global batch = ``batch_size`` x ``WORLD_SIZE``. The learning rate is the caller's: nothing
rescales it. Goyal et al. (2017, "Accurate, Large Minibatch SGD") scale it linearly with the
global batch, e.g. the SM-NAS paper's 0.04 at 16 images (8 GPUs x 2) is 0.02 at 8.

BatchNorm layers compute their statistics over each process's own share of the batch (as in
the torchvision references without ``--sync-bn``); GroupNorm (``norm="gnws"``) does not depend
on the batch, so with it a step on P processes x b images equals a step on one process with
P x b images up to float rounding.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

from smnas.errors import SmnasError

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a data-parallel job (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # device index on this node

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        The DistEnv; ``DistEnv()`` (one process) when none of the three is set.

    Raises:
        SmnasError: only some are set, or one is not an integer in range.
    """
    environ = os.environ if environ is None else environ
    present = [k for k in _ENV_VARS if k in environ]
    if not present:
        return DistEnv()
    if len(present) != len(_ENV_VARS):
        missing = [k for k in _ENV_VARS if k not in environ]
        raise SmnasError(f"environment sets {present} but not {missing}: start data-parallel jobs with torchrun, "
                         "which sets all three, or unset them for a single process")
    try:
        rank, world, local = (int(environ[k]) for k in _ENV_VARS)
    except ValueError:
        raise SmnasError(f"environment {', '.join(f'{k}={environ[k]!r}' for k in _ENV_VARS)}: "
                         "expected integers") from None
    if not (world >= 1 and 0 <= rank < world and 0 <= local <= rank):
        raise SmnasError(f"environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}: "
                         "expected 0 <= LOCAL_RANK <= RANK < WORLD_SIZE")
    return DistEnv(rank, world, local)


def init_distributed(device: str | torch.device = "cpu") -> tuple[DistEnv, torch.device]:
    """Join the job's process group (once per process) and pick this process's device.

    Backend ``nccl`` on CUDA (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``), ``gloo`` on the
    CPU. Calling it again in the same process returns the same answer without a new group.

    Args:
        device: ``"cpu"`` or ``"cuda"``; under torchrun a bare ``"cuda"`` becomes the local
            rank's device, and an explicit ``cuda:N`` must be that device.

    Returns:
        (env, device): where this process stands, and the device it trains on.
    """
    env, device = dist_env(), torch.device(device)
    if not env.distributed:
        return env, device
    if device.type == "cuda":
        if device.index is not None and device.index != env.local_rank:
            raise SmnasError(f"device {device} under torchrun: process LOCAL_RANK={env.local_rank} uses "
                             f"cuda:{env.local_rank}; pass --device cuda and let each process take its own")
        device, backend = torch.device("cuda", env.local_rank), "nccl"
        torch.cuda.set_device(device)
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise SmnasError(f"device {device}: data-parallel training runs on cuda (nccl) or cpu (gloo)")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                                device_id=device if backend == "nccl" else None)
    elif dist.get_world_size() != env.world_size:
        raise SmnasError(f"a process group of {dist.get_world_size()} processes is already set up, "
                         f"but WORLD_SIZE={env.world_size}")
    return env, device


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one (call once, at the job's end)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active(env: DistEnv) -> bool:
    return env.distributed and dist.is_initialized()


def barrier(env: DistEnv, device: torch.device) -> None:
    """Wait until every process of the job gets here (nothing to do in a single process)."""
    if _active(env):
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def all_true(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True when ``flag`` is true in every process, so that all take the same branch."""
    if not _active(env):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def mean_over_ranks(values: dict[str, float], env: DistEnv, device: torch.device) -> dict[str, float]:
    """Average each value over the processes (every process passes the same keys)."""
    if not _active(env) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist())}


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every process's ``obj``, by rank, in every process (``[obj]`` in a single process)."""
    if not _active(env):
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` in every process."""
    if not _active(env):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
