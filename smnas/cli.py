"""The ``smnas`` command line. ``smnas SUBCOMMAND --help`` explains each one.

    smnas make-dataset data/synthetic --seed 0
    smnas make-classification data/shapes-cls --seed 0
    smnas pretrain resnet18 --width 0.25 --data data/shapes-cls --out-weights resnet18@0.25.pt --workdir w
    torchrun --standalone --nproc-per-node 4 -m smnas.cli pretrain resnet50 --device cuda ...
    smnas convert voc VOCdevkit --year 2007 --split test --out voc07_test.json
    smnas convert bdd det_val.json --images bdd100k/images/100k/val --out bdd_val.json
    smnas evaluate --gt instances_val.json --dets detections.json --json
    smnas describe resnet50+fpn:P2-P5:c256+rpn+2fc+800x600+bn --json
    smnas space size --config config/paper.yaml
    smnas space sample 5 --seed 0
    smnas train SPEC --data data/synthetic/coco --out results/x --epochs 5
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from smnas.errors import SmnasError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 256x192, got {text!r}") from None


def cmd_make_dataset(args: argparse.Namespace) -> None:
    from smnas.data.synthetic import make_dataset

    paths = make_dataset(args.out_dir, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                         image_size=args.size, variants=args.variants, progress=not args.quiet)
    for key, path in sorted(paths.items()):
        print(f"{key}\t{path}")


def cmd_make_classification(args: argparse.Namespace) -> None:
    from smnas.data.classification import make_classification_dataset

    paths = make_classification_dataset(args.out_dir, seed=args.seed, num_train=args.num_train,
                                        num_val=args.num_val, image_size=args.size, variant=args.variant,
                                        background=not args.no_background, progress=not args.quiet)
    for key, path in sorted(paths.items()):
        print(f"{key}\t{path}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from smnas.engine.distributed import dist_env, shutdown_distributed
    from smnas.engine.pretrain import PretrainConfig, pretrain_backbone

    keys = ("epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "warmup_iters", "schedule",
            "milestones", "gamma", "seed", "num_workers", "image_size", "crop_scale", "label_smoothing")
    values = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.no_augment:
        values["augment"] = False
    if args.grad_clip is not None:
        values["grad_clip"] = args.grad_clip if args.grad_clip > 0 else None
    cfg = PretrainConfig.from_dict(values, "options")
    try:
        metrics = pretrain_backbone(args.backbone, args.width, args.data, args.out_weights, args.workdir, cfg,
                                    device=args.device, norm=args.norm, out_metrics=args.metrics)
    finally:
        shutdown_distributed()
    if dist_env().is_main:  # every process has the metrics; one prints them
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("history", "train")}, indent=2))


def cmd_convert_voc(args: argparse.Namespace) -> None:
    from smnas.data.coco import write_coco
    from smnas.data.voc import voc_image_dir, voc_to_coco

    coco = voc_to_coco(args.voc_root, args.year, args.split)
    write_coco(coco, args.out)
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes; "
          f"images under {voc_image_dir(args.voc_root, args.year)}")


def cmd_convert_bdd(args: argparse.Namespace) -> None:
    from smnas.data.bdd import bdd_to_coco
    from smnas.data.coco import write_coco

    coco = bdd_to_coco(args.labels, args.images)
    write_coco(coco, args.out)
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from smnas.evaluation import coco_evaluate, voc_map50

    stats = coco_evaluate(args.gt, args.dets)
    if args.voc:
        stats.update(voc_map50(args.gt, args.dets))
    if args.json:
        print(json.dumps(stats))
    else:
        for k, v in stats.items():
            print(f"{k:>10s}  {v:.4f}")


def cmd_describe(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from smnas.engine.cost import backbone_cost, detector_cost
    from smnas.models.build import DetectorOptions
    from smnas.models.encoding import is_encoding
    from smnas.models.spec import parse_spec

    if is_encoding(args.spec):
        if args.size is None:
            raise SmnasError(f"{args.spec} is a backbone encoding: give the input size with --size WxH")
        info = backbone_cost(args.spec, args.size)
    else:
        spec = parse_spec(args.spec)
        if args.size is not None:
            spec = replace(spec, input_size=args.size)
        info = detector_cost(spec, DetectorOptions(num_classes=args.num_classes))
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>16s}  {v:,.3f}" if isinstance(v, float) else f"{k:>16s}  {v:,}" if isinstance(v, int) else f"{k:>16s}  {v}")


def cmd_space(args: argparse.Namespace) -> None:
    from smnas.search.space import load_space

    space = load_space(args.config)
    if args.action == "size":
        print(space.size())
    else:
        for spec in space.sample(args.n, seed=args.seed):
            print(spec)


def cmd_train(args: argparse.Namespace) -> None:
    from smnas.data.coco import load_coco
    from smnas.engine.candidate import DataPaths, evaluate_candidate
    from smnas.engine.train import TrainConfig
    from smnas.models.build import DetectorOptions
    from smnas.models.spec import parse_spec

    data = DataPaths.coco_layout(args.data)
    num_classes = len(load_coco(data.train_json, check_images=False)["categories"])
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      warmup_iters=args.warmup_iters)
    opts = DetectorOptions(num_classes=num_classes, anchor_scale=args.anchor_scale,
                           rpn_post_nms_top_n=args.proposals, box_batch_size_per_image=128)
    row = evaluate_candidate(parse_spec(args.spec), data, cfg, opts, args.out, device=args.device)
    print(json.dumps({k: v for k, v in row.items() if k != "train"}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smnas", description=__doc__.split("\n\n")[0] + " Detector architecture search (SM-NAS).",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    s = sub.add_parser("make-dataset", help="write the built-in synthetic dataset (COCO, VOC and BDD100K layouts)",
                       description="Write the built-in synthetic detection dataset, deterministically from a seed.")
    s.add_argument("out_dir", type=Path, help="output folder; coco/, voc/ and bdd/ are made below it")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same files")
    s.add_argument("--num-train", type=int, default=240, help="train images per variant (default 240)")
    s.add_argument("--num-val", type=int, default=60, help="val images per variant (default 60)")
    s.add_argument("--size", type=_size, default=(256, 192), help="image WIDTHxHEIGHT (default 256x192)")
    s.add_argument("--variants", nargs="+", default=["coco", "voc", "bdd"], choices=["coco", "voc", "bdd"],
                   help="which layouts to write (default all)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_make_dataset)

    c = sub.add_parser("make-classification", help="write the built-in classification dataset (ImageFolder layout)",
                       description="Write object crops of the built-in dataset's scenes, one folder per shape class "
                                   "(and background), as OUT_DIR/{train,val}/CLASS/NNNNN.png, deterministically.")
    c.add_argument("out_dir", type=Path, help="output folder; train/, val/ and dataset.json are made in it")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same files")
    c.add_argument("--num-train", type=int, default=200, help="train crops per class (default 200)")
    c.add_argument("--num-val", type=int, default=50, help="val crops per class (default 50)")
    c.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    c.add_argument("--variant", choices=["coco", "voc", "bdd"], default="coco", help="visual domain (default coco)")
    c.add_argument("--no-background", action="store_true", help="no background class (shapes only)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_make_classification)

    pt = sub.add_parser("pretrain", help="pretrain a backbone as an image classifier (ImageFolder data)",
                        description="Train a backbone + pooling + linear classifier on DATA/{train,val}/CLASS/*; "
                                    "write the backbone's state_dict (loadable as DetectorOptions.backbone_weights) "
                                    "and metrics.json (top-1/top-5 on val). Reruns resume. Under torchrun, "
                                    "data-parallel: global batch = --batch-size x processes; the lr is not rescaled. "
                                    "Unset options keep torchvision's ImageNet recipe (90 epochs, lr 0.1, "
                                    "x0.1 at 30 and 60, 224 px).")
    pt.add_argument("backbone", help="a named backbone (resnet18...) or an encoding (basicblock_16_1-21-21-12)")
    pt.add_argument("--width", type=float, default=1.0, help="channel multiplier of a named backbone (default 1.0)")
    pt.add_argument("--norm", choices=["bn", "gnws"], default="bn", help="normalisation (default bn)")
    pt.add_argument("--data", required=True, type=Path, help="folder with train/ and val/, one sub-folder per class")
    pt.add_argument("--out-weights", required=True, type=Path, help="the backbone's state_dict (.pt)")
    pt.add_argument("--workdir", required=True, type=Path, help="checkpoints; reruns resume from it")
    pt.add_argument("--metrics", type=Path, default=None, help="metrics JSON (default WORKDIR/metrics.json)")
    pt.add_argument("--epochs", type=int)
    pt.add_argument("--batch-size", type=int, help="per process")
    pt.add_argument("--lr", type=float, help="peak lr (for the global batch)")
    pt.add_argument("--lr-min", type=float, help="cosine floor")
    pt.add_argument("--momentum", type=float)
    pt.add_argument("--weight-decay", type=float)
    pt.add_argument("--warmup-iters", type=int)
    pt.add_argument("--grad-clip", type=float, help="max gradient norm; 0 for none (default none)")
    pt.add_argument("--schedule", choices=["cosine", "step"])
    pt.add_argument("--milestones", type=int, nargs="*", help="step schedule: epochs after which lr *= gamma")
    pt.add_argument("--gamma", type=float)
    pt.add_argument("--image-size", type=int, help="crop side (default 224)")
    pt.add_argument("--crop-scale", type=float, nargs=2, metavar=("LO", "HI"), help="random crop area range")
    pt.add_argument("--no-augment", action="store_true", help="no random crops or flips")
    pt.add_argument("--label-smoothing", type=float)
    pt.add_argument("--num-workers", type=int, help="data loading processes per training process")
    pt.add_argument("--seed", type=int)
    pt.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each process its own GPU)")
    pt.set_defaults(func=cmd_pretrain)

    conv = sub.add_parser("convert", help="convert VOC or BDD100K labels to COCO JSON",
                          description="Convert a dataset's labels to a COCO instances JSON.")
    csub = conv.add_subparsers(dest="format", required=True, metavar="FORMAT")
    v = csub.add_parser("voc", help="Pascal VOC (VOCdevkit/VOC2007|VOC2012)",
                        description="Pascal VOC to COCO. Boxes are converted from 1-based inclusive pixels; "
                                    "difficult objects are kept with iscrowd=1 so COCO evaluation ignores them.")
    v.add_argument("voc_root", type=Path, help="the VOCdevkit folder (or the folder holding it)")
    v.add_argument("--year", required=True, help="2007, 2012, or 2007+2012")
    v.add_argument("--split", required=True, help="ImageSets/Main split name: train, val, trainval, test")
    v.add_argument("--out", required=True, type=Path, help="output COCO JSON")
    v.set_defaults(func=cmd_convert_voc)
    b = csub.add_parser("bdd", help="BDD100K det_20 labels",
                        description="BDD100K detection labels (det_20 JSON) to COCO; the 10 detection classes, "
                                    "other categories skipped with a counted warning.")
    b.add_argument("labels", type=Path, help="det_20 labels JSON (e.g. det_val.json)")
    b.add_argument("--images", required=True, type=Path, help="image folder of that split (sizes are read from it)")
    b.add_argument("--out", required=True, type=Path, help="output COCO JSON")
    b.set_defaults(func=cmd_convert_bdd)

    e = sub.add_parser("evaluate", help="COCO bbox evaluation of a detections file",
                       description="COCO bbox evaluation with pycocotools (AP, AP50, AP75, APs, APm, APl, AR).")
    e.add_argument("--gt", required=True, type=Path, help="ground-truth COCO instances JSON")
    e.add_argument("--dets", required=True, type=Path, help="detections as a COCO result JSON list")
    e.add_argument("--voc", action="store_true", help="also report VOC-style mAP at IoU 0.5")
    e.add_argument("--json", action="store_true", help="print one JSON object (values in [0, 1]; -1 where undefined)")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("describe", help="parameters and GMACs of a spec or a backbone encoding",
                       description="Build a detector spec (or a backbone encoding alone) and count its parameters "
                                   "and multiply-accumulates (torch.utils.flop_counter, FLOPs / 2).")
    d.add_argument("spec", help="a canonical spec (backbone+neck+rpn+head+WxH+norm) or a backbone encoding")
    d.add_argument("--size", type=_size, default=None, help="input WIDTHxHEIGHT (overrides the spec's; needed for an encoding)")
    d.add_argument("--num-classes", type=int, default=80, help="object classes for the head (default 80, COCO)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=cmd_describe)

    sp = sub.add_parser("space", help="size of, or samples from, a stage-one search space",
                        description="The stage-one search space of a configuration: its size, or random valid specs.")
    sp.add_argument("action", choices=["size", "sample"])
    sp.add_argument("n", nargs="?", type=int, default=10, help="how many specs to sample (sample only)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--config", type=Path, default=None, help="a YAML config with a stage1.space block (default: the laptop space)")
    sp.set_defaults(func=cmd_space)

    t = sub.add_parser("train", help="train and evaluate one spec on a COCO-layout dataset",
                       description="Train one candidate, then report COCO mAP, latency and MACs (metrics.json in --out).")
    t.add_argument("spec", help="canonical spec string")
    t.add_argument("--data", required=True, help="folder with annotations/instances_{train,val}.json and train/, val/")
    t.add_argument("--out", required=True, type=Path, help="work folder (checkpoints, metrics.json); reruns resume")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--lr", type=float, default=0.02)
    t.add_argument("--warmup-iters", type=int, default=50)
    t.add_argument("--anchor-scale", type=float, default=4.0, help="anchor side = scale x stride (default 4 for small images)")
    t.add_argument("--proposals", type=int, default=256, help="RPN proposals per image in training (half at test)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except SmnasError as e:
        print(f"smnas {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
