"""Where a detector's inference time goes: per-part latency of trained models, side by side.

    .venv/bin/python bench/latency_parts.py RUN/results/baselines/faster_r18_fpn RUN/results/final/front0
    .venv/bin/python bench/latency_parts.py --rounds 7 --csv parts.csv MODEL_DIR ...

Each MODEL_DIR is a trained model's folder as the workflow writes it (``arch.txt``,
``train.json``, ``model.pt``, and ``metrics.json`` for its mAP): ``results/final/<name>``,
``results/baselines/<name>``, ``results/stage1/candidates/<name>``. The models are timed as
``smnas.engine.measure.measure_latency`` times them (batch 1, one thread, the first
``--images`` val images, each model's own transform), in ``--rounds`` rounds that each time every
model once in a new random order, so a slow spell of this machine hits them all alike. Forward
hooks split each image's time into the parts of a torchvision detector:

- ``backbone``: the trunk (``backbone.body``); ``neck``: the FPN (``backbone.neck``);
- ``rpn``: proposals (RPN or GA-RPN: head convolutions, anchors, decoding, NMS);
- ``roi``: the R-CNN heads (``roi_heads``: RoIAlign, the box head and predictor of every cascade
  stage, per-class NMS), with ``roi_align`` and ``box_head`` (FC layers) shown apart;
- ``dense``: a one-stage head's convolutions (RetinaNet);
- ``other``: the rest of the forward (normalisation and resize, anchors and post-processing of
  one-stage models, rescaling boxes to the image).

``fixed`` = total - backbone - neck: the time that does not shrink with a lighter backbone or a
smaller neck. It bounds how much faster any model with the same kind of head can be (a model
whose backbone and neck cost nothing would still take ``fixed``). The hooks themselves cost a few
microseconds each; ``total`` is measured with them in place, as are the parts. ``bench/evidence.py``
re-times without hooks.

Models are timed in the layout ``measure_latency`` uses on the CPU (channels-last weights);
``--memory-formats contiguous channels_last`` times every model once per layout (``MODEL@layout``),
the comparison behind that default.

``--test-proposals 64 32 16`` (before the other options or ``--``) times every model once per
count (``MODEL@N``), each built with N RPN proposals per image at test time (pre-NMS candidates
scaled alike) and scored again on the val split, since the count moves mAP too. The counts are
inference settings: nothing is retrained.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smnas.engine.candidate import DataPaths, latency_images  # noqa: E402
from smnas.engine.measure import MEMORY_FORMATS, default_memory_format, pinned_threads  # noqa: E402
from smnas.workflow.jobs import load_trained  # noqa: E402

# (column, path of the submodule in the detector); a missing path is skipped.
PARTS = [("backbone", "backbone.body"), ("neck", "backbone.neck"), ("rpn", "rpn"), ("roi", "roi_heads"),
         ("dense", "head")]
# Inside roi_heads: torchvision's names, and a cascade's lists of per-stage heads (smnas.models.cascade).
SUBPARTS = {"box_roi_pool": "roi_align", "box_head": "box_head", "box_predictor": "box_head",
            "box_heads": "box_head", "box_predictors": "box_head"}


def _submodule(model: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _hook(module: torch.nn.Module, column: str, record: dict[str, float]) -> None:
    start: list[float] = []
    module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))
    module.register_forward_hook(lambda *_: record.__setitem__(column, record[column] + time.perf_counter() - start.pop()))


def load(folder: Path, detector: dict, memory_format: str = "contiguous") -> tuple[torch.nn.Module, dict[str, float]]:
    """The trained detector of ``folder``, its weights in ``memory_format``, with timing hooks; the
    dict they add seconds into."""
    model = load_trained(folder, detector).to(memory_format=MEMORY_FORMATS[memory_format])
    record: dict[str, float] = defaultdict(float)
    for column, path in PARTS:
        if (m := _submodule(model, path)) is not None:
            _hook(m, column, record)
    roi = _submodule(model, "roi_heads")
    for name, m in roi.named_children() if roi is not None else ():
        if name in SUBPARTS:  # a ModuleList (a cascade's stages) has no forward: hook each stage
            for part in m if isinstance(m, torch.nn.ModuleList) else [m]:
                _hook(part, SUBPARTS[name], record)
    return model, record


def with_test_proposals(detector: dict, n: int) -> dict:
    """The ``detector`` block with ``n`` RPN proposals per image at test time (the builder halves
    the training counts for test), its pre-NMS candidates per level scaled alike."""
    from smnas.models.build import DetectorOptions

    post = int(detector.get("rpn_post_nms_top_n", DetectorOptions.rpn_post_nms_top_n))
    pre = int(detector.get("rpn_pre_nms_top_n", DetectorOptions.rpn_pre_nms_top_n))
    return {**detector, "rpn_post_nms_top_n": 2 * n, "rpn_pre_nms_top_n": max(1, round(pre * 2 * n / post))}


def val_scorer(data: Path):
    """``score(model)``: COCO mAP on the val split of the COCO-layout folder ``data`` (read once)."""
    from smnas.data.coco import load_coco
    from smnas.data.dataset import DetectionDataset
    from smnas.engine.inference import predict
    from smnas.evaluation import coco_evaluate

    paths = DataPaths.coco_layout(data)
    val = load_coco(paths.val_json, paths.val_images)
    dataset = DetectionDataset(val, paths.val_images)
    return lambda model: coco_evaluate(val, predict(model, dataset, progress=False))["AP"]


def time_parts(models: dict[str, tuple[torch.nn.Module, dict[str, float]]], images: list[torch.Tensor],
               rounds: int, seed: int = 0) -> pd.DataFrame:
    """Median per-image milliseconds of each part (and the total) over ``rounds`` x images."""
    rng, names = np.random.default_rng(seed), list(models)
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with torch.inference_mode(), pinned_threads(1):
        for name in names:  # warm-up
            for image in images[:3]:
                models[name][0]([image])
        for _ in range(rounds):
            for i in rng.permutation(len(names)):
                model, record = models[names[i]]
                for image in images:
                    record.clear()
                    start = time.perf_counter()
                    model([image])
                    total = time.perf_counter() - start
                    rows[names[i]].append({"total": total, **record})
    out = []
    for name in names:
        df = pd.DataFrame(rows[name]).fillna(0.0) * 1e3
        med = {c: float(df[c].median()) for c in df.columns}
        top = sum(med.get(c, 0.0) for c, _ in PARTS)
        med["other"] = max(med["total"] - top, 0.0)
        med["fixed"] = med["total"] - med.get("backbone", 0.0) - med.get("neck", 0.0)
        out.append({"model": name, **med, "min_total": float(df["total"].min()), "max_total": float(df["total"].max())})
    return pd.DataFrame(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("models", nargs="+", type=Path, help="trained model folders (arch.txt, train.json, model.pt)")
    p.add_argument("--data", type=Path, help="COCO-layout folder of the val images (default: the first model's "
                                             "results/data/synthetic/coco)")
    p.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml",
                   help="its detector block builds the models (default: config/config.yaml)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--csv", type=Path, help="also write the table here")
    p.add_argument("--test-proposals", type=int, nargs="+", default=None, metavar="N",
                   help="each model with N RPN proposals per image at test time, for each N (default: the "
                        "config's, half its rpn_post_nms_top_n); the mAP is measured again")
    p.add_argument("--memory-formats", nargs="+", choices=sorted(MEMORY_FORMATS), default=[default_memory_format("cpu")],
                   help="time each model with its weights in each layout (default: measure_latency's on the CPU, "
                        "channels_last)")
    args = p.parse_args()
    detector = yaml.safe_load(args.config.read_text())["detector"]
    data = args.data
    if data is None:
        results = next((q for q in args.models[0].resolve().parents if q.name == "results"), None)
        if results is None:
            p.error(f"{args.models[0]} is not under a results/ folder: give --data")
        data = results / "data" / "synthetic" / "coco"
    models, labels = {}, {}
    score = val_scorer(data) if args.test_proposals else None
    for folder in args.models:
        for need in ("arch.txt", "train.json", "model.pt"):
            if not (folder / need).exists():
                p.error(f"{folder}: no {need} (a trained model's folder is expected)")
        arch = (folder / "arch.txt").read_text().strip()
        for n, layout in ((n, f) for n in args.test_proposals or [None] for f in args.memory_formats):
            name = (f"{folder.parent.name}/{folder.name}" + (f"@{n}" if n else "")
                    + (f"@{layout}" if len(args.memory_formats) > 1 else ""))
            models[name] = load(folder, detector if n is None else with_test_proposals(detector, n), layout)
            if n is not None:
                labels[name] = (score(models[name][0]), arch)
            else:
                metrics = folder / "metrics.json"
                labels[name] = (json.loads(metrics.read_text()).get("map") if metrics.exists() else None, arch)
    images = latency_images(DataPaths.coco_layout(data), args.images)
    table = time_parts(models, images, args.rounds)
    table.insert(1, "mAP", [labels[n][0] for n in table["model"]])
    table["arch"] = [labels[n][1] for n in table["model"]]
    cols = ["model", "mAP", "total", "min_total", "max_total", "backbone", "neck", "rpn", "roi", "roi_align",
            "box_head", "dense", "other", "fixed"]
    cols = [c for c in cols if c in table.columns]
    print(f"per-image median ms, batch 1, one thread, {args.rounds} rounds x {len(images)} images, "
          f"{torch.get_num_threads()} threads available, weights {' / '.join(args.memory_formats)}")
    shown = table[cols].fillna(0.0).assign(mAP=[f"{m:.4f}" if m is not None and m == m else "" for m in table["mAP"]])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for name, (_, arch) in labels.items():
        print(f"  {name}: {arch}")
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
