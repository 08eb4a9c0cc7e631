"""Inference time and GMACs of every stage-one module combination at one laptop input size.

All combinations are measured in the same run, on this CPU, batch 1, pinned threads, median of
``--runs`` timed runs after warm-up. Prints a table sorted by latency.

    .venv/bin/python bench/stage1_modules.py [--size 256x192] [--runs 5] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch

from smnas.engine.measure import count_macs, measure_latency, noise_images
from smnas.models.build import DetectorOptions, build_detector
from smnas.search.space import StageOneSpace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="256x192")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    space = StageOneSpace(input_sizes=((w, h),))
    opts = DetectorOptions(num_classes=6, anchor_scale=4, rpn_post_nms_top_n=256)
    rows = []
    for spec in space:
        torch.manual_seed(0)
        model = build_detector(spec, opts).eval()
        lat = measure_latency(model, noise_images((w, h)), warmup=2, runs=args.runs, threads=args.threads)
        with torch.no_grad():
            gmacs = count_macs(model, [torch.rand(3, h, w)]) / 1e9
        rows.append((str(spec), lat.median_ms, gmacs))
        device = lat.device
    print(f"device: {device}; input {w}x{h}; {len(rows)} combinations; median of {args.runs} runs")
    print(f"{'spec':<70}{'latency ms':>12}{'GMACs':>10}")
    for spec, ms, g in sorted(rows, key=lambda r: r[1]):
        print(f"{spec:<70}{ms:>12.1f}{g:>10.3f}")


if __name__ == "__main__":
    main()
