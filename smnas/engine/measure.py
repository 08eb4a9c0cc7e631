"""Cost measurements: inference latency on the target device, and MACs / parameter counts.

Latency is taken as in the SM-NAS paper (Yao et al., AAAI 2020): inference time at batch 1,
averaged over test images. The images are real validation images, because a two-stage
detector's work depends on the content (how many proposals survive NMS, GA-RPN above all); a
noise image (:func:`noise_images`) is only for callers without data. Warm-up forwards come
first, then every image is timed once per pass; we report the median per-image forward (robust
to the odd scheduler hiccup) beside the mean. CUDA-synchronised on a GPU, a pinned thread count
on the CPU. The device's name is recorded with the figure, because a latency means nothing
without it.

On the CPU the model is timed with its 4-d weights in channels-last memory order
(:func:`memory_layout`), the faster layout for every detector of our spaces measured so far: at
the laptop scale's 16-128 channels PyTorch runs most convolutions on its fallback kernel, which
is 2-3x quicker over channels-last tensors, and the stem's max-pooling 7x quicker; untrained
models of both stage-one and baseline shapes took 1.0-1.2x less time, never more
(``bench/latency_parts.py --memory-formats``, docs/evidence.md section 7). A deployment gets the
same speed with ``model.to(memory_format=torch.channels_last)``. On CUDA the model is timed as
built (contiguous), a layout not yet compared there.

MACs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts FLOPs of matmul and
convolution ops as 2 x multiply-accumulates; we report MACs (FLOPs / 2), the convention of the
ResNet and SM-NAS papers (ResNet-50 at 224x224 ~ 4.1 GMACs).
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Latency:
    """A latency figure and how it was taken: per-image forward times at batch 1."""

    median_ms: float
    mean_ms: float
    min_ms: float
    runs: int  # passes over the images; len(images) * runs forwards were timed
    images: int  # distinct images timed
    device: str  # e.g. "cpu: AMD EPYC 7B13, AVX2 (2 threads)" or "cuda: NVIDIA H100 80GB HBM3"
    memory_format: str  # the weights' layout while timed: "channels_last" or "contiguous"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_isa() -> str:
    """The vector instruction set PyTorch's CPU kernels use here, e.g. ``"AVX512"`` (lowered by
    ``ATEN_CPU_CAPABILITY``), and oneDNN's cap when ``ONEDNN_MAX_CPU_ISA`` sets one (e.g.
    ``"AVX512, oneDNN AVX2"``).

    Part of a CPU's name because it changes results, not only speed: the same run, seed and
    versions trained Faster R-CNN R18-FPN to COCO mAP 0.307 on an AVX-512 machine and 0.278 with
    oneDNN capped at AVX2 (its convolutions round differently; docs/evidence.md section 8).
    """
    isa = torch.backends.cpu.get_cpu_capability()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{isa}, oneDNN {cap.upper()}" if cap and cap.upper() != "ALL" else isa


def device_name(device: torch.device, threads: int | None = None) -> str:
    """A human-readable name of ``device`` to store beside every latency (on the CPU with
    :func:`cpu_isa`)."""
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
    return f"cpu: {cpu}, {cpu_isa()} ({threads or torch.get_num_threads()} threads)"


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


def noise_images(input_size: tuple[int, int], n: int = 1) -> list[torch.Tensor]:
    """Seeded uniform-noise images, for timing a model when no data is at hand.

    A noise image gives a two-stage detector little to propose, so prefer real images
    (:func:`smnas.engine.candidate.latency_images`) for figures that are compared with mAP.

    Args:
        input_size: ``(width, height)``.
        n: how many images.

    Returns:
        ``n`` tensors ``Tensor[3, height, width]`` in [0, 1], the same for the same arguments.
    """
    width, height = input_size
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(3, height, width, generator=gen) for _ in range(n)]


MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "channels_last": torch.channels_last,
    "contiguous": torch.contiguous_format,
}


def default_memory_format(device: str | torch.device) -> str:
    """The layout a model is timed in on ``device``: channels_last on the CPU, contiguous elsewhere."""
    return "channels_last" if torch.device(device).type == "cpu" else "contiguous"


@contextlib.contextmanager
def memory_layout(model: nn.Module, memory_format: str) -> Iterator[nn.Module]:
    """``model`` with its 4-d parameters and buffers in ``memory_format`` inside the block, and
    contiguous again after it (the layout the builders, the trainer and ``model.pt`` use).

    Raises:
        ValueError: ``memory_format`` is not a key of :data:`MEMORY_FORMATS`.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {sorted(MEMORY_FORMATS)}, got {memory_format!r}")
    model.to(memory_format=MEMORY_FORMATS[memory_format])
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    device: str | torch.device = "cpu",
    warmup: int = 3,
    runs: int = 1,
    threads: int | None = 1,
    memory_format: str | None = None,
) -> Latency:
    """Wall time of one forward pass at batch 1, over the given images.

    Args:
        model: a detector in the torchvision convention, called as ``model([image])``; its own
            transform resizes each image to its input size, and that resize is timed with it.
        images: ``Tensor[3, H, W]`` float in [0, 1] each (as DetectionDataset gives them); moved
            to ``device`` before any timing.
        device: where to run. On CUDA every forward is bracketed by ``torch.cuda.synchronize``.
        warmup: untimed forwards first, cycling through ``images`` (allocator, cuDNN
            autotuning, caches).
        runs: passes over ``images``; each pass times every image once, in order, so
            ``len(images) * runs`` forwards are timed.
        threads: CPU intra-op threads during timing (pinned so figures compare); ignored on CUDA.
        memory_format: the weights' layout while timed (a key of :data:`MEMORY_FORMATS`; default
            :func:`default_memory_format`); the model is contiguous again afterwards.

    Returns:
        A Latency with the median, mean and min of the per-image forward times in milliseconds,
        the runs, the image count, the device's name and the layout.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if not images:
        raise ValueError("measure_latency needs at least one image")
    device = torch.device(device)
    layout = memory_format or default_memory_format(device)
    model = model.to(device).eval()
    images = [im.to(device) for im in images]  # (3, H, W) each; the copy is not part of inference
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with pinned_threads(threads if device.type == "cpu" else None), memory_layout(model, layout):
        for i in range(warmup):
            model([images[i % len(images)]])
        for _ in range(runs):
            for image in images:
                sync()  # nothing queued before may land in this image's time
                t0 = time.perf_counter()
                model([image])
                sync()
                times.append((time.perf_counter() - t0) * 1000.0)
        name = device_name(device, threads if device.type == "cpu" else None)
    return Latency(statistics.median(times), statistics.fmean(times), min(times), runs, len(images), name, layout)


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
