"""Training throughput (images/s): smnas.engine.train against a bare torchvision-style loop.

Same model (fresh copy of the same initial weights), same data, same batch size, one process,
measured side by side and interleaved (A, B, A, B) because this machine is noisy.

    .venv/bin/python bench/train_throughput.py [--spec SPEC] [--images 48] [--rounds 2]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from smnas.data.coco import load_coco
from smnas.data.dataset import DetectionDataset, collate
from smnas.data.synthetic import make_dataset
from smnas.engine.train import TrainConfig, train
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.spec import parse_spec


def bare_loop(model, dataset, batch_size: int) -> float:
    """The loop of torchvision's detection reference (SGD, no checkpointing, no logging)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate)
    t0 = time.perf_counter()
    for images, targets in loader:
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(dataset) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="resnet18@0.25+fpn:P1-P4:c32+rpn+2fc:256+192x144+gnws")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_dataset(tmp, num_train=args.images, num_val=1, image_size=(192, 144), variants=["coco"])
        coco = load_coco(paths["coco_train_json"], paths["coco_train_images"])
        data = DetectionDataset(coco, paths["coco_train_images"])
        torch.manual_seed(0)
        base = build_detector(parse_spec(args.spec), DetectorOptions(num_classes=data.num_classes, anchor_scale=4,
                                                                     rpn_post_nms_top_n=256, box_batch_size_per_image=128))
        ours, bare = [], []
        for r in range(args.rounds):
            bare.append(bare_loop(copy.deepcopy(base), data, args.batch_size))
            cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.01, warmup_iters=0)
            res = train(copy.deepcopy(base), data, cfg, f"{tmp}/run{r}", progress=False)
            ours.append(res.images_per_second)
    print(f"spec: {args.spec}  images: {args.images}  batch: {args.batch_size}  threads: {args.threads}")
    print(f"{'loop':<28}{'images/s (median)':>18}{'runs':>30}")
    for name, xs in (("bare torchvision loop", bare), ("smnas.engine.train", ours)):
        print(f"{name:<28}{sorted(xs)[len(xs) // 2]:>18.2f}{'  '.join(f'{x:.2f}' for x in xs):>30}")
    print(f"ratio smnas / bare: {sorted(ours)[len(ours) // 2] / sorted(bare)[len(bare) // 2]:.3f}")


if __name__ == "__main__":
    main()
