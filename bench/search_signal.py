"""Search signal: do stage-one candidates rank the same way whatever the seed?

Trains one generation's candidates with several seeds through the workflow's own code path
(``smnas.engine.candidate.train_candidate`` then ``evaluate_trained``, as the rules' train and
evaluate jobs call them; the latency job is skipped unless ``--latency``) and reports, per
candidate, COCO mAP mean and sd over seeds and train seconds; over candidates, the spread (sd of
the means), the mean within-candidate sd, and Kendall's tau between every pair of seeds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/search_signal.py --out /tmp/signal/baseline
    .venv/bin/python bench/search_signal.py --out /tmp/signal/b2 --batch-size 2 --n 4 --seeds 0 1
    .venv/bin/python bench/search_signal.py --out /tmp/signal/baseline --summarize   # table only

Defaults are the main job's (``config/config.yaml``): its ``data.builtin`` dataset, its
``stage1.train`` schedule, its ``detector`` options, and 6 specs drawn with
``StageOneSpace.sample(6, seed=0)`` from its ``stage1.space``. Every option below overrides one
lever. The generated dataset is kept under ``--data-cache`` by its settings and reused by later
runs with the same settings; trained candidates are never reused across ``--out`` folders (a
rerun into the same folder resumes the runs that are missing, and refuses other settings).
Backbones start as the config's ``stage1.init`` says (``--init`` overrides it): from scratch, or
from the pretraining stage (``pretrain``), whose jobs (``make_classification``, ``pretrain``) run
once per backbone and settings under ``--data-cache``. ``--jobs 2`` trains two candidates at a
time, each in its own process with ``--threads`` threads.

Dataset difficulty: the config's ``data.builtin`` scene keys (``smnas.data.scenes.SceneOptions``:
``object_size``, ``large_share``, ``max_objects``, ``hue_spread``, ``noise``, ``distractors``) are
used, and each can be overridden: ``--scene max_objects=3 noise=0 distractors=false`` (the
older constant names ``MAX_OBJECTS``, ``_P_LARGE``, ``_HUE_SPREAD``, ``_NOISE`` are accepted for
them), the object size range with ``--object-size LO HI`` (fractions of the shorter image side;
the generator's default is 0.025 0.25 plus a ``large_share`` of 0.25 at 0.27-0.4). Tiny objects
can be taken out of both training and evaluation with ``--min-area`` (labelled ``iscrowd``: not
trained on and ignored by COCO evaluation, the objects stay in the pixels).

Outputs in ``--out``: ``settings.json``, ``runs.csv`` (one row per candidate and seed),
``summary.csv`` (one row per candidate), ``summary.json`` (everything, with the taus).

Is the seed noise training or measurement? ``--keep-models --val-noise 1024`` evaluates every
kept model again on 1024 fresh val images (the same scenes, the next data seed) and prints, per
candidate, the seed sd on them beside the seed sd on the run's own val split, and the sd of one
model's mAP over disjoint chunks of the run's val size (what the choice of val images alone
moves); ``valnoise.json`` holds the figures. A larger val split helps only if the seed sd falls.
"""
from __future__ import annotations

import sys

import argparse
import hashlib
import itertools
import json
import logging
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
from benchrun import open_run  # noqa: E402  (bench/ is on sys.path when run as a script)
SCENE_KNOBS = ("max_objects", "noise", "large_share", "hue_spread", "distractors")
# The scene constants' names before they became SceneOptions fields (earlier commands use them).
OLD_KNOBS = {"MAX_OBJECTS": "max_objects", "_NOISE": "noise", "_P_LARGE": "large_share",
             "_HUE_SPREAD": "hue_spread"}
log = logging.getLogger("signal")


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, type=Path, help="result folder (one configuration)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    p.add_argument("--summarize", action="store_true", help="only print the table of --out")
    g = p.add_argument_group("candidates")
    g.add_argument("--specs", nargs="+", default=None, help="spec strings (default: a sample of the config's space)")
    g.add_argument("--n", type=int, default=6, help="specs to sample when --specs is not given (default 6)")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of StageOneSpace.sample (default 0)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    g.add_argument("--input-size", type=_size, default=None,
                   help="WxH for every candidate (default: each spec's own)")
    g.add_argument("--width", type=float, default=None, help="backbone width for every candidate")
    g = p.add_argument_group("dataset (default: the config's data.builtin)")
    g.add_argument("--num-train", type=int, default=None)
    g.add_argument("--num-val", type=int, default=None)
    g.add_argument("--image-size", type=_size, default=None)
    g.add_argument("--data-seed", type=int, default=None, help="dataset seed (default: the config's seed)")
    g.add_argument("--scene", nargs="+", default=[], metavar="NAME=VALUE",
                   help=f"override the config's scene options: {', '.join(SCENE_KNOBS)}")
    g.add_argument("--object-size", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="log-uniform object size range as fractions of the shorter side (default: the config's)")
    g.add_argument("--min-area", type=float, default=0.0,
                   help="labels with fewer visible pixels become iscrowd (ignored in training and evaluation)")
    g.add_argument("--data-cache", type=Path, default=Path("/tmp/signal/data"))
    g = p.add_argument_group("training (default: the config's stage1.train)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--lr-min", type=float, default=None)
    g.add_argument("--warmup-iters", type=int, default=None)
    g = p.add_argument_group("detector (default: the config's detector block)")
    g.add_argument("--anchor-scale", type=float, default=None)
    g.add_argument("--proposals", type=int, default=None, help="rpn_post_nms_top_n (training; half at test)")
    g.add_argument("--pre-nms", type=int, default=None, help="rpn_pre_nms_top_n")
    g.add_argument("--box-batch", type=int, default=None, help="box_batch_size_per_image")
    g.add_argument("--init", choices=["scratch", "pretrain"], default=None,
                   help="backbones start from scratch or from the config's pretraining stage, at each "
                        "spec's width and norm (default: the config's stage1.init)")
    g.add_argument("--norm", choices=["bn", "gnws"], default=None, help="every candidate's norm (default: each spec's own)")
    g = p.add_argument_group("run")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--jobs", type=int, default=1, help="trainings at once, each in its own process (default 1)")
    g.add_argument("--latency", action="store_true", help="also time each candidate (the workflow's time job)")
    g.add_argument("--keep-models", action="store_true", help="keep model.pt and checkpoints")
    g.add_argument("--val-noise", type=int, default=0, metavar="N",
                   help="evaluate the kept models on N fresh val images too (needs --keep-models)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- settings

def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that defines the configuration measured, defaults from the config file."""
    from smnas.models.spec import parse_spec
    from smnas.search.space import space_from_dict

    cfg = yaml.safe_load(args.config.read_text())
    builtin = cfg["data"]["builtin"]
    data = {
        "seed": cfg["seed"] if args.data_seed is None else args.data_seed,
        "num_train": builtin["num_train"] if args.num_train is None else args.num_train,
        "num_val": builtin["num_val"] if args.num_val is None else args.num_val,
        "image_size": list(builtin["image_size"] if args.image_size is None else args.image_size),
        "scene": dict(sorted({**{k: builtin[k] for k in SCENE_KNOBS if k in builtin},
                              **_scene_overrides(args.scene)}.items())),
        "object_size": args.object_size or builtin.get("object_size"),
        "min_area": args.min_area,
    }
    train = dict(cfg["stage1"]["train"])
    for key in ("epochs", "batch_size", "lr", "lr_min", "warmup_iters"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    det = {k: v for k, v in cfg["detector"].items() if k != "backbone_weights"}
    for key, arg in (("anchor_scale", "anchor_scale"), ("rpn_post_nms_top_n", "proposals"),
                     ("rpn_pre_nms_top_n", "pre_nms"), ("box_batch_size_per_image", "box_batch")):
        if getattr(args, arg) is not None:
            det[key] = getattr(args, arg)
    if args.specs:
        specs = [parse_spec(s) for s in args.specs]
    else:
        space = space_from_dict(cfg["stage1"]["space"], str(args.config))
        specs = space.sample(args.n, seed=args.sample_seed)
    if args.width is not None:
        specs = [replace(s, backbone=replace(s.backbone, width=args.width)) for s in specs]
    if args.input_size is not None:
        specs = [replace(s, input_size=tuple(args.input_size)) for s in specs]
    if args.norm is not None:
        specs = [s.with_norm(args.norm) for s in specs]
    init = args.init or cfg["stage1"].get("init", "scratch")
    if init not in ("scratch", "pretrain"):
        raise SystemExit(f"{args.config}: stage1.init {init!r}: this bench measures scratch or pretrain")
    out = {"specs": [str(s) for s in specs], "seeds": list(args.seeds), "data": data, "train": train,
           "detector": det, "latency": args.latency, "init": init}
    if init == "pretrain":  # the pretraining stage's settings (rules/pretrain.smk), built-in crops only
        if "builtin" not in cfg["pretrain"]["data"]:
            raise SystemExit(f"{args.config}: pretrain.data: this bench pretrains on the built-in crops only")
        out["pretrain"] = {"seed": data["seed"], "data": cfg["pretrain"]["data"]["builtin"],
                           "train": cfg["pretrain"]["train"]}
    return out


def _scene_overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        name = OLD_KNOBS.get(name, name)
        if name not in SCENE_KNOBS:
            raise SystemExit(f"--scene: unknown option {name!r}; valid: {', '.join(SCENE_KNOBS)}")
        out[name] = (int(value) if name == "max_objects" else value.lower() in ("1", "true", "yes")
                     if name == "distractors" else float(value))
    return out


# ---------------------------------------------------------------- dataset

def dataset(data: dict[str, Any], cache: Path) -> Path:
    """The COCO-layout folder of these dataset settings, generated once per settings."""
    from smnas.data import synthetic
    from smnas.data.scenes import SceneOptions

    key = json.dumps({**data, "generator": synthetic.GENERATOR_VERSION}, sort_keys=True)
    root = cache / hashlib.sha1(key.encode()).hexdigest()[:12]
    done = root / "done.json"
    if done.exists():
        return root / "coco"
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    size = {"object_size": tuple(data["object_size"])} if data["object_size"] else {}
    scene = SceneOptions(**{OLD_KNOBS.get(k, k): v for k, v in data["scene"].items()}, **size)
    synthetic.make_dataset(root, seed=data["seed"], num_train=data["num_train"], num_val=data["num_val"],
                           image_size=tuple(data["image_size"]), variants=["coco"], scene=scene)
    if data["min_area"] > 0:
        for split in ("train", "val"):
            path = root / "coco" / "annotations" / f"instances_{split}.json"
            coco = json.loads(path.read_text())
            for ann in coco["annotations"]:
                if ann["area"] < data["min_area"]:
                    ann["iscrowd"] = 1
            path.write_text(json.dumps(coco) + "\n")
    stats = _label_stats(root / "coco")
    done.write_text(json.dumps({"settings": json.loads(key), "seconds": time.perf_counter() - t0, **stats},
                               indent=2) + "\n")
    log.info("dataset %s: %s (%.1f s)", root, stats, time.perf_counter() - t0)
    return root / "coco"


def _label_stats(coco_root: Path) -> dict[str, Any]:
    out = {}
    for split in ("train", "val"):
        coco = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        anns = [a for a in coco["annotations"] if not a.get("iscrowd")]
        areas = [a["bbox"][2] * a["bbox"][3] for a in anns]
        out[split] = {"images": len(coco["images"]), "labels": len(anns),
                      "ignored": len(coco["annotations"]) - len(anns),
                      "small": sum(a < 32 ** 2 for a in areas), "medium": sum(32 ** 2 <= a < 96 ** 2 for a in areas),
                      "large": sum(a >= 96 ** 2 for a in areas)}
    return out


# ---------------------------------------------------------------- pretrained backbones

def classification_data(pretrain: dict[str, Any], cache: Path) -> Path:
    """The manifest of the pretraining crops of these settings (written once, by one process)."""
    from smnas.workflow import jobs

    root = cache / "pretrained" / hashlib.sha1(json.dumps(pretrain, sort_keys=True).encode()).hexdigest()[:12]
    manifest = root / "classification" / "dataset.json"
    if not manifest.exists():
        jobs.make_classification(str(manifest), pretrain["seed"], pretrain["data"])
    return manifest


def pretrained(spec_text: str, pretrain: dict[str, Any], cache: Path) -> Path:
    """The backbone weights of ``spec_text`` from the pretraining stage (the workflow's own jobs:
    ``make_classification`` then ``pretrain``), trained once per settings and backbone under ``cache``."""
    from smnas.workflow import jobs

    manifest = classification_data(pretrain, cache)
    root = manifest.parent.parent
    key = _backbone(spec_text)
    weights = root / key / "weights.pt"
    if weights.exists():
        return weights
    t0 = time.perf_counter()
    jobs.pretrain(str(manifest), str(weights), str(root / key / "metrics.json"), key, str(manifest.parent),
                  pretrain["train"], pretrain["seed"], "cpu")
    top1 = json.loads((root / key / "metrics.json").read_text()).get("top1")
    log.info("pretrained %s: top-1 %s (%.0f s)", key, top1, time.perf_counter() - t0)
    return weights


# ---------------------------------------------------------------- runs

def run_one(spec_text: str, seed: int, settings: dict[str, Any], coco_root: Path, workdir: Path,
            keep_models: bool, weights: Path | None = None) -> dict[str, Any]:
    """Train and evaluate one candidate with one seed (the workflow's train and evaluate jobs)."""
    from smnas.data.coco import load_coco
    from smnas.engine.candidate import DataPaths, evaluate_trained, time_candidate, train_candidate
    from smnas.engine.train import TrainConfig
    from smnas.models.build import DetectorOptions
    from smnas.models.spec import parse_spec

    metrics_path = workdir / "metrics.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    data = DataPaths.coco_layout(coco_root)
    spec = parse_spec(spec_text)
    num_classes = len(load_coco(data.train_json, check_images=False)["categories"])
    opts = DetectorOptions(num_classes=num_classes, backbone_weights=str(weights) if weights else None,
                           **settings["detector"])
    cfg = TrainConfig(seed=seed, **settings["train"])
    t0 = time.perf_counter()
    trained = train_candidate(spec, data, cfg, opts, workdir, device="cpu", progress=False)
    if settings["latency"]:
        time_candidate(spec, opts, workdir, data, num_images=20, device="cpu", runs=1, threads=1)
    t1 = time.perf_counter()
    row = evaluate_trained(spec, data, opts, workdir, device="cpu", progress=False)
    row.update(seed=seed, eval_seconds=time.perf_counter() - t1, wall_seconds=time.perf_counter() - t0,
               final_loss=(trained.get("history") or [{}])[-1].get("loss"))
    row.pop("spans", None)
    metrics_path.write_text(json.dumps(row, indent=2) + "\n")
    if not keep_models:
        for name in ("model.pt", "train/last.pt", "detections.json"):
            (workdir / name).unlink(missing_ok=True)
    return row


def _backbone(spec_text: str) -> str:
    from smnas.models.registry import backbone_key
    from smnas.models.spec import parse_spec

    spec = parse_spec(spec_text)
    return backbone_key(spec.backbone.name, spec.backbone.width, spec.norm)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _pool(jobs: int, threads: int):
    """``jobs`` worker processes (spawned, ``threads`` torch threads each); 1: this process."""
    import multiprocessing
    from concurrent.futures import Executor, Future, ProcessPoolExecutor

    if jobs > 1:
        return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_set_threads, initargs=(threads,))

    class Inline(Executor):
        def submit(self, fn, /, *args, **kwargs):
            future = Future()
            future.set_result(fn(*args, **kwargs))
            return future

    return Inline()


def summarize(settings: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-candidate mean/sd of mAP and seconds; spread, within-sd and Kendall tau between seeds."""
    from scipy.stats import kendalltau

    specs, seeds = settings["specs"], settings["seeds"]
    by = {(r["arch"], r["seed"]): r for r in rows}
    cands = []
    for spec in specs:
        rs = [by[(spec, s)] for s in seeds if (spec, s) in by]
        maps = [_map(r) for r in rs]
        cands.append({
            "arch": spec, "runs": len(rs), "failed": sum(r["status"] != "ok" for r in rs),
            "map_mean": _mean(maps), "map_sd": _sd(maps), "maps": maps,
            "map50_mean": _mean([r.get("map50") or 0.0 for r in rs]),
            "train_seconds": _mean([r["train_seconds"] for r in rs]),
            "eval_seconds": _mean([r.get("eval_seconds", 0.0) for r in rs]),
            "final_loss": _mean([r["final_loss"] for r in rs if r.get("final_loss") is not None]),
        })
    full = [s for s in seeds if all((spec, s) in by for spec in specs)]
    taus = {}
    for a, b in itertools.combinations(full, 2):
        x = [_map(by[(spec, a)]) for spec in specs]
        y = [_map(by[(spec, b)]) for spec in specs]
        taus[f"{a}-{b}"] = float(kendalltau(x, y).statistic)
    means = [c["map_mean"] for c in cands if c["runs"]]
    within = [c["map_sd"] for c in cands if c["runs"] > 1]
    spread = _sd(means)
    return {
        "candidates": cands,
        "spread": spread,
        "within_sd": _mean(within),
        "snr": spread / _mean(within) if within and _mean(within) > 0 else None,
        "taus": taus,
        "tau_mean": _mean(list(taus.values())) if taus else None,
        "map_range": [min(means), max(means)] if means else None,
        "train_seconds_mean": _mean([c["train_seconds"] for c in cands if c["runs"]]),
        "complete_seeds": full,
    }


def _map(row: dict[str, Any]) -> float:
    return float(row["map"]) if row.get("status") == "ok" and row.get("map") is not None else 0.0


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def print_table(settings: dict[str, Any], summary: dict[str, Any], file=sys.stdout) -> None:
    t, d, det = settings["train"], settings["data"], settings["detector"]
    print(f"data: {d['num_train']}/{d['num_val']} images {d['image_size'][0]}x{d['image_size'][1]} seed {d['seed']}"
          + (f" scene {d['scene']}" if d["scene"] else "") + (f" object_size {d['object_size']}" if d["object_size"] else "")
          + (f" min_area {d['min_area']}" if d["min_area"] else ""), file=file)
    print(f"train: epochs {t['epochs']} batch {t['batch_size']} lr {t['lr']} warmup {t['warmup_iters']}, "
          f"backbones from {settings.get('init', 'scratch')}; "
          f"detector: {det}; seeds {settings['seeds']}", file=file)
    print(f"{'candidate':<62}{'mAP mean':>9}{'sd':>8}{'AP50':>7}  {'per seed':<22}{'train s':>8}{'eval s':>7}", file=file)
    for c in summary["candidates"]:
        per = " ".join(f"{m:.3f}" for m in c["maps"])
        fail = f" ({c['failed']} failed)" if c["failed"] else ""
        print(f"{c['arch']:<62}{c['map_mean']:>9.4f}{c['map_sd']:>8.4f}{c['map50_mean']:>7.3f}  {per:<22}"
              f"{c['train_seconds']:>8.1f}{c['eval_seconds']:>7.1f}{fail}", file=file)
    taus = "  ".join(f"{k}: {v:+.2f}" for k, v in summary["taus"].items())
    snr = summary["snr"]
    print(f"spread (sd of means) {summary['spread']:.4f}   mean within-candidate sd {summary['within_sd']:.4f}   "
          f"ratio {snr if snr is None else round(snr, 2)}", file=file)
    print(f"Kendall tau between seeds: {taus or '-'}   mean {summary['tau_mean'] if summary['tau_mean'] is None else round(summary['tau_mean'], 3)}",
          file=file)
    rng = summary["map_range"]
    print(f"mAP of the means: {rng[0]:.4f} .. {rng[1]:.4f}   train s per candidate {summary['train_seconds_mean']:.1f}",
          file=file)


def write_outputs(out: Path, settings: dict[str, Any], rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    import pandas as pd

    keep = ["arch", "seed", "status", "map", "map50", "map75", "maps", "mapm", "mapl", "train_seconds",
            "eval_seconds", "final_loss", "gmacs", "params", "latency_ms"]
    pd.DataFrame([{k: r.get(k) for k in keep} for r in rows]).to_csv(out / "runs.csv", index=False)
    pd.DataFrame([{k: v for k, v in c.items() if k != "maps"} for c in summary["candidates"]]).to_csv(
        out / "summary.csv", index=False)
    (out / "summary.json").write_text(json.dumps({"settings": settings, **summary}, indent=2) + "\n")


def val_noise(settings: dict[str, Any], out: Path, n: int, cache: Path) -> dict[str, Any]:
    """Every kept model of ``out`` evaluated on ``n`` fresh val images (data seed + 1): per run
    the mAP on all of them and on disjoint chunks of the run's val size; written (and resumed)
    as ``valnoise.json``."""
    from smnas.data.coco import load_coco
    from smnas.data.dataset import DetectionDataset
    from smnas.engine.candidate import DataPaths, load_model
    from smnas.engine.inference import predict
    from smnas.evaluation import coco_evaluate
    from smnas.models.build import DetectorOptions
    from smnas.models.spec import parse_spec

    data = dict(settings["data"], seed=settings["data"]["seed"] + 1, num_train=8, num_val=n)
    paths = DataPaths.coco_layout(dataset(data, cache))
    val = load_coco(paths.val_json, paths.val_images)
    ids, size = [im["id"] for im in val["images"]], settings["data"]["num_val"]
    chunks = [set(ids[i:i + size]) for i in range(0, len(ids) - size + 1, size)]
    path = out / "valnoise.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    if done.get("n") != n:
        done = {"n": n, "chunk": size, "runs": {}}
    opts = DetectorOptions(num_classes=len(val["categories"]), **settings["detector"])
    for i, spec in enumerate(settings["specs"]):
        for seed in settings["seeds"]:
            name, workdir = f"c{i}_s{seed}", out / "runs" / f"c{i}_s{seed}"
            if name in done["runs"] or not (workdir / "model.pt").exists():
                continue
            dets = predict(load_model(parse_spec(spec), opts, workdir), DetectionDataset(val, paths.val_images),
                           progress=False)
            per = []
            for chunk in chunks:
                gt = dict(val, images=[im for im in val["images"] if im["id"] in chunk],
                          annotations=[a for a in val["annotations"] if a["image_id"] in chunk])
                per.append(coco_evaluate(gt, [d for d in dets if d["image_id"] in chunk])["AP"])
            done["runs"][name] = {"arch": spec, "seed": seed, "map": coco_evaluate(val, dets)["AP"], "chunks": per}
            log.info("%s on %d fresh val images: map %.4f, chunk sd %.4f", name, n, done["runs"][name]["map"],
                     _sd(per))
            path.write_text(json.dumps(done, indent=1) + "\n")
    return done


def print_val_noise(settings: dict[str, Any], summary: dict[str, Any], noise: dict[str, Any], file=sys.stdout) -> None:
    runs = noise["runs"]
    print(f"\nmeasurement noise: {noise['n']} fresh val images, chunks of {noise['chunk']}", file=file)
    print(f"{'candidate':<62}{'seed sd (own val)':>18}{'seed sd (fresh)':>16}{'chunk sd':>10}", file=file)
    for i, cand in enumerate(summary["candidates"]):
        rs = [runs[f"c{i}_s{s}"] for s in settings["seeds"] if f"c{i}_s{s}" in runs]
        if rs:
            print(f"{cand['arch']:<62}{cand['map_sd']:>18.4f}{_sd([r['map'] for r in rs]):>16.4f}"
                  f"{_mean([_sd(r['chunks']) for r in rs]):>10.4f}", file=file)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.val_noise and not args.keep_models:
        raise SystemExit("--val-noise N evaluates the kept models again: add --keep-models")
    settings = open_run(args, settings_from)
    rows = []
    if not args.summarize:
        coco_root = dataset(settings["data"], args.data_cache)
        with _pool(args.jobs, args.threads) as pool:
            weights = {spec: None for spec in settings["specs"]}
            if settings["init"] == "pretrain":  # one pretraining per backbone, before the trainings
                classification_data(settings["pretrain"], args.data_cache)
                keys = {_backbone(spec): spec for spec in settings["specs"]}
                done = dict(zip(keys, pool.map(pretrained, keys.values(), [settings["pretrain"]] * len(keys),
                                               [args.data_cache] * len(keys))))
                weights = {spec: done[_backbone(spec)] for spec in settings["specs"]}
            # seed-major: complete seed columns come first
            tasks = [(i, seed, spec) for seed in settings["seeds"] for i, spec in enumerate(settings["specs"])]
            futures = [pool.submit(run_one, spec, seed, settings, coco_root, args.out / "runs" / f"c{i}_s{seed}",
                                   args.keep_models, weights[spec]) for i, seed, spec in tasks]
            for (i, seed, spec), future in zip(tasks, futures):
                row = future.result()
                log.info("c%d seed %d: map %.4f train %.1f s  %s", i, seed, _map(row), row["train_seconds"], spec)
    for i, spec in enumerate(settings["specs"]):
        for seed in settings["seeds"]:
            path = args.out / "runs" / f"c{i}_s{seed}" / "metrics.json"
            if path.exists():
                rows.append(json.loads(path.read_text()))
    summary = summarize(settings, rows)
    write_outputs(args.out, settings, rows, summary)
    print_table(settings, summary)
    if args.val_noise:
        print_val_noise(settings, summary, val_noise(settings, args.out, args.val_noise, args.data_cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
