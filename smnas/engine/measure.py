"""Cost measurements: inference latency on the target device, and MACs / parameter counts.

Latency follows SPEC.md (batch 1, the candidate's input size): warm-up runs, then the median of
many timed runs; CUDA-synchronised on a GPU, a pinned thread count on the CPU. The device's name
is recorded with the figure, because a latency means nothing without it.

MACs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts FLOPs of matmul and
convolution ops as 2 x multiply-accumulates; we report MACs (FLOPs / 2), the convention of the
ResNet and SM-NAS papers (ResNet-50 at 224x224 ~ 4.1 GMACs).
"""
from __future__ import annotations

import contextlib
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Latency:
    """A latency figure and how it was taken."""

    median_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    device: str  # e.g. "cpu: AMD EPYC 7B13 (2 threads)" or "cuda: NVIDIA H100 80GB HBM3"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_name(device: torch.device, threads: int | None = None) -> str:
    """A human-readable name of ``device`` to store beside every latency."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {cpu} ({threads or torch.get_num_threads()} threads)"


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None`` leaves it as is)."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int],
    device: str | torch.device = "cpu",
    warmup: int = 3,
    runs: int = 20,
    threads: int | None = 1,
) -> Latency:
    """Median wall time of one forward pass at batch 1.

    Args:
        model: a detector in the torchvision convention, called as ``model([image])``.
        input_size: ``(width, height)`` of the input image (the model's own transform may resize).
        device: where to run. On CUDA every run is bracketed by ``torch.cuda.synchronize``.
        warmup: untimed runs first (allocator, cuDNN autotuning, caches).
        runs: timed runs; the median is robust to the odd scheduler hiccup.
        threads: CPU intra-op threads during timing (pinned so figures compare); ignored on CUDA.

    Returns:
        A Latency with the median, mean and min in milliseconds and the device's name.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    device = torch.device(device)
    model = model.to(device).eval()
    width, height = input_size
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, height, width, generator=gen).to(device)  # (3, H, W)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with pinned_threads(threads if device.type == "cpu" else None):
        for i in range(warmup + runs):
            sync()
            t0 = time.perf_counter()
            model([image])
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000.0)
        name = device_name(device, threads if device.type == "cpu" else None)
    return Latency(statistics.median(times), statistics.fmean(times), min(times), runs, name)


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, *inputs: Any) -> int:
    """Multiply-accumulates of one ``module(*inputs)`` call, via FlopCounterMode (FLOPs / 2).

    Ops the counter does not know (RoIAlign, NMS, elementwise) are not counted, as in the papers.
    """
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2
