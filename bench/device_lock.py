"""Does a latency measurement beside a running training job give the figure it gives alone?

    .venv/bin/python bench/device_lock.py [--device cuda] [--spec SPEC] [--runs 30] [--repeats 3]

Times one detector at batch 1 (1 thread, median of --runs) in three situations, --repeats times
each, interleaved, and prints a table:

- alone: nothing else runs (what the workflow used to guarantee by reserving every core);
- beside training, no lock: another process trains a detector on the other core meanwhile;
- beside training, with the lock: the same, but the trainer holds smnas's device lock shared per
  step and the measurement holds it exclusive (what the workflow does now).

The lock is worth having if the third row matches the first and the second does not. On a
2-core CPU the two processes share little but memory bandwidth; on a GPU they share the device.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import statistics
import tempfile
import time

import torch

from smnas.engine.device_lock import DeviceLock
from smnas.engine.measure import measure_latency, noise_images
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.spec import parse_spec

SPEC = "resnet50@0.25+fpn:P2-P5:c32+rpn+2fc:256+160x120+gnws"


def _trainer(spec: str, device: str, lock_dir: str | None, ready, stop) -> None:
    torch.set_num_threads(1)
    s = parse_spec(spec)
    model = build_detector(s, DetectorOptions(num_classes=6)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w, h = s.input_size
    images = [torch.rand(3, h, w, device=device) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]], device=device), "labels": torch.tensor([1], device=device)}
               for _ in images]
    lock = DeviceLock(device, lock_dir) if lock_dir else None
    ready.set()
    while not stop.is_set():
        with lock.shared() if lock else contextlib.nullcontext():
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()  # a step's work is done when the lock is released


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--spec", default=SPEC, help="detector to time (and to train beside it)")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    spec = parse_spec(args.spec)
    model = build_detector(spec, DetectorOptions(num_classes=6)).eval()
    lock_dir = tempfile.mkdtemp(prefix="smnas-lock-")
    ctx = mp.get_context("spawn")
    results: dict[str, list[float]] = {"alone": [], "beside training, no lock": [], "beside training, with the lock": []}
    for _ in range(args.repeats):
        for name in results:
            proc = stop = None
            if name != "alone":
                ready, stop = ctx.Event(), ctx.Event()
                proc = ctx.Process(target=_trainer, args=(args.spec, args.device, lock_dir if "with" in name else None, ready, stop))
                proc.start()
                ready.wait(120)
                time.sleep(2)  # let it get going
            lock = DeviceLock(args.device, lock_dir) if "with" in name else None
            with lock.exclusive() if lock else contextlib.nullcontext():
                lat = measure_latency(model, noise_images(spec.input_size), device=args.device, runs=args.runs, threads=1)
            results[name].append(lat.median_ms)
            if proc is not None:
                stop.set()
                proc.join(60)
    base = statistics.median(results["alone"])
    print(f"latency of {args.spec} on {lat.device}, batch 1, 1 thread, median of {args.runs} runs; {args.repeats} repeats, interleaved")
    print(f"{'situation':<34}{'median ms':>10}{'repeats (ms)':>28}{'vs alone':>10}")
    for name, vals in results.items():
        med = statistics.median(vals)
        print(f"{name:<34}{med:>10.1f}{' '.join(f'{v:.1f}' for v in vals):>28}{med / base:>10.2f}")


if __name__ == "__main__":
    main()
