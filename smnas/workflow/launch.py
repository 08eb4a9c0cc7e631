"""Data-parallel jobs: run a job function on several devices of one node through ``torchrun``.

    run_distributed("train", 8, arch=..., model=..., ...)   # 8 processes, one per GPU

The job's own process starts ``torchrun --standalone --nproc-per-node N`` (inside a SLURM job it
runs within the job's allocation of N GPUs), which runs :mod:`smnas.workflow.rank` in each process; each calls the job
function with ``gpus=1``, and :mod:`smnas.engine.distributed` takes it from there:
process group (NCCL on GPUs, gloo on the CPU), DistributedDataParallel, a DistributedSampler, and
outputs written by rank 0 alone. The job fails if any process fails.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def run_distributed(function: str, nproc: int, **kwargs: Any) -> None:
    """Run ``smnas.workflow.jobs.<function>(**kwargs, gpus=1)`` in ``nproc`` processes."""
    if nproc < 2:
        raise ValueError(f"run_distributed needs 2 or more processes, got {nproc}")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(kwargs, f)
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "smnas.workflow.rank", function, f.name]
        proc = subprocess.run(cmd)
        if proc.returncode:
            raise RuntimeError(f"torchrun of {function} on {nproc} processes exited with status {proc.returncode}")
    finally:
        Path(f.name).unlink(missing_ok=True)
