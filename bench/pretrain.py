"""Pretrained backbones against training from scratch: final E0, and stage-one candidates.

Two comparisons, side by side in one run on the built-in data, through the workflow's own
engine calls (``pretrain_backbone``, then ``train_candidate`` and ``evaluate_trained`` as the
rules' train and evaluate jobs call them; no latency job):

- final: the paper's E0 (``PAPER_MODELS["E0"]`` at ``final.paper_input_size``, in BN) trained
  with the final recipe (``final.train``, ``final.scale_jitter``, the ``detector`` block) from
  its backbone pretrained as a classifier (norm bn) and from scratch, same epochs;
- stage1: stage-one candidates (``stage1.train``, GN+WS, width 0.25 as ``stage1.space``) from
  their backbones pretrained with norm gnws and from scratch: mAP per candidate and the rank
  order under each; per condition, the spread of the candidates' means against the seed noise
  and Kendall's tau between seeds (is the search signal stronger with pretraining?).

    OMP_NUM_THREADS=1 .venv/bin/python bench/pretrain.py --out /tmp/pretrain_bench/run
    .venv/bin/python bench/pretrain.py --out DIR --seeds 0 1 2 --parts stage1
    .venv/bin/python bench/pretrain.py --out /tmp/pretrain_bench/quick --quick   # smoke test, ~20 s
    .venv/bin/python bench/pretrain.py --out DIR --summarize                      # tables only

Pretraining (``smnas.engine.pretrain``) runs on the built-in classification data
(``make_classification_dataset``: 7 classes, 200 train and 50 val 64-px crops per class): SGD
batch 32, lr 0.1 cosine to 0, 50 warm-up iterations, RandomResizedCrop scale (0.5, 1), seed 0.
The width-0.25 backbones train 15 epochs (resnet18@0.25: ~1 min on one core). E0's backbone
(64 base channels) costs ~7x as much per image on the CPU (~16x the FLOPs), so it trains 6
epochs (``--final-pretrain-epochs``) to stay at ~2 minutes: it is the less trained of the two.
One pretraining per backbone, shared by all detection seeds (its own seed noise is not measured).
The recipe does not suit every backbone: resnext50@0.25+gnws diverges at lr 0.1 (top-1 at
chance; 0.65 at lr 0.05) and mobilenetv2@0.25+gnws reaches only ~0.5 top-1 (0.33 at lr 0.05);
the pretraining table flags a top-1 near chance.

Every training of a pair uses the same seed: the same head initialisation and data order; only
the backbone's initial weights differ. Within a seed the two conditions alternate (scratch first
on even seeds, pretrained first on odd ones) so that the machine's load drifts onto both.

Caching: the datasets, the pretrained weights (``--out/pretrained/{backbone_key}.pt``, with
``{backbone_key}/metrics.json`` and ``bench.json``) and each finished run (``runs/.../metrics.json``) are kept; a
rerun into the same ``--out`` does only what is missing (new seeds, an interrupted training
resumes). A folder of other settings is refused.

Outputs in ``--out``: ``settings.json``, ``pretrain.csv`` (one row per backbone), ``runs.csv``
(one row per training), ``final.csv`` and ``stage1.csv`` (per model and condition),
``summary.json`` (everything).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
from benchrun import open_run  # noqa: E402  (bench/ is on sys.path when run as a script)
INITS = ("scratch", "pretrained")
STAGE1_SPECS = (  # from config stage1.space: four backbones, the three head families
    "resnet18@0.25+fpn:P1-P4:c32+rpn+2fc:256+160x120+gnws",
    "resnet50@0.25+fpn:P2-P5:c32+garpn+cascade4:256+160x120+gnws",
    "mobilenetv2@0.25+fpn:P1-P4:c32+none+retina+160x120+gnws",
    "resnet34@0.25+fpn:P1-P5:c32+rpn+cascade3:256+128x96+gnws",
)  # not resnext50@0.25+gnws: at this recipe (lr 0.1) its pretraining diverges to chance top-1
PRETRAIN = {"batch_size": 32, "lr": 0.1, "schedule": "cosine", "lr_min": 0.0, "warmup_iters": 50,
            "image_size": 64, "crop_scale": [0.5, 1.0], "seed": 0}
log = logging.getLogger("pretrain_bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, type=Path, help="result folder (one configuration)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    p.add_argument("--parts", nargs="+", choices=("final", "stage1"), default=["final", "stage1"])
    p.add_argument("--specs", nargs="+", default=list(STAGE1_SPECS), help="stage-one candidates")
    p.add_argument("--pretrain-epochs", type=int, default=15, help="width-0.25 backbones (default 15)")
    p.add_argument("--final-pretrain-epochs", type=int, default=6, help="E0's backbone (default 6)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny data, 1 epoch everywhere, two candidates, seed 0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-models", action="store_true", help="keep model.pt and checkpoints")
    p.add_argument("--summarize", action="store_true", help="only print the tables of --out")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a run depends on, from the config and the options (``--quick`` shrinks it)."""
    from smnas.models.paper import PAPER_MODELS
    from smnas.workflow.finals import final_arch

    cfg = yaml.safe_load(args.config.read_text())
    paper_size = cfg["final"]["paper_input_size"]
    e0 = str(final_arch("E0", None, 1, "gmacs", tuple(paper_size) if paper_size else None))
    data = {**cfg["data"]["builtin"], "seed": cfg["seed"]}
    cls_data = {"num_train": 200, "num_val": 50, "image_size": 64, "seed": cfg["seed"]}
    final_train, stage1_train = dict(cfg["final"]["train"]), dict(cfg["stage1"]["train"])
    epochs = {"stage1": args.pretrain_epochs, "final": args.final_pretrain_epochs}
    specs, seeds = list(args.specs), list(args.seeds)
    if args.quick:
        data.update(num_train=16, num_val=8)
        cls_data.update(num_train=20, num_val=10)
        final_train["epochs"] = stage1_train["epochs"] = epochs["stage1"] = epochs["final"] = 1
        specs, seeds = specs[:2], seeds[:1]
    return {"e0": e0, "e0_paper": PAPER_MODELS["E0"], "data": data, "classification": cls_data,
            "detector": {k: v for k, v in cfg["detector"].items() if k != "backbone_weights"},
            "final": {"train": final_train, "scale_jitter": cfg["final"]["scale_jitter"]},
            "stage1": {"train": stage1_train, "specs": specs},
            "pretrain": {"common": PRETRAIN, "epochs": epochs}, "seeds": seeds, "parts": list(args.parts),
            "quick": args.quick, "threads": args.threads}


def fixed_settings(values: dict[str, Any]) -> dict[str, Any]:
    """What a rerun into the same folder must keep; seeds, parts and candidates may change
    (runs are kept by spec and seed, pretrained weights by backbone key)."""
    return {**{k: v for k, v in values.items() if k not in ("seeds", "parts")},
            "stage1": {**values["stage1"], "specs": None}}


# ---------------------------------------------------------------- data and pretraining

def datasets(settings: dict[str, Any], out: Path) -> tuple[Any, Path]:
    """The detection splits (DataPaths) and the classification root, generated once."""
    from smnas.data.classification import make_classification_dataset
    from smnas.data.synthetic import make_dataset
    from smnas.engine.candidate import DataPaths

    det, cls = out / "data" / "detection", out / "data" / "classification"
    if not (det / "done.json").exists():
        d = settings["data"]
        make_dataset(det, seed=d["seed"], num_train=d["num_train"], num_val=d["num_val"],
                     image_size=tuple(d["image_size"]), variants=["coco"])
        (det / "done.json").write_text(json.dumps(d) + "\n")
    if not (cls / "dataset.json").exists():
        make_classification_dataset(cls, **settings["classification"])
    return DataPaths.coco_layout(det / "coco"), cls


def pretrain_config(settings: dict[str, Any], part: str) -> Any:
    from smnas.engine.pretrain import PretrainConfig

    return PretrainConfig.from_dict({**settings["pretrain"]["common"], "epochs": settings["pretrain"]["epochs"][part]},
                                    where=f"bench pretrain ({part})")


def backbones(settings: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """(part, name, width, norm) of every backbone the chosen parts pretrain, E0's first."""
    from smnas.models.spec import parse_spec

    out = []
    if "final" in settings["parts"]:
        spec = parse_spec(settings["e0"])
        out.append(("final", spec.backbone.name, spec.backbone.width, spec.norm))
    if "stage1" in settings["parts"]:
        for text in settings["stage1"]["specs"]:
            spec = parse_spec(text)
            item = ("stage1", spec.backbone.name, spec.backbone.width, spec.norm)
            if item not in out:
                out.append(item)
    return out


def pretrain_one(settings: dict[str, Any], part: str, name: str, width: float, norm: str, cls_root: Path,
                 out: Path) -> dict[str, Any]:
    """Pretrain one backbone into ``out/pretrained/{key}.pt`` unless it is there with these settings."""
    from dataclasses import asdict

    from smnas.engine.pretrain import backbone_key, pretrain_backbone

    key = backbone_key(name, width, norm)
    cfg = pretrain_config(settings, part)
    weights, workdir = out / "pretrained" / f"{key}.pt", out / "pretrained" / key
    want = {**asdict(cfg.optim), "milestones": list(cfg.optim.milestones)}
    bench_json = workdir / "bench.json"
    if weights.exists() and bench_json.exists():
        row = json.loads(bench_json.read_text())
        if row["train"] != want or row["image_size"] != cfg.image_size:
            raise SystemExit(f"{weights}: pretrained with other settings ({bench_json}); use a new --out")
        return row
    t0 = time.perf_counter()
    metrics = pretrain_backbone(name, width, cls_root, weights, workdir, cfg, norm=norm, progress=False)
    row = {**{k: v for k, v in metrics.items() if k != "classes"}, "num_classes": len(metrics["classes"]),
           "part": part, "weights": str(weights),
           "wall_seconds": time.perf_counter() - t0, "load": os.getloadavg()[0]}
    bench_json.write_text(json.dumps(row, indent=2) + "\n")
    log.info("pretrained %s: top-1 %.3f in %.0f s", key, row["top1"], row["wall_seconds"])
    return row


# ---------------------------------------------------------------- detection runs

def run_one(settings: dict[str, Any], part: str, spec_text: str, init: str, seed: int, data: Any,
            weights: Path, workdir: Path, keep_models: bool) -> dict[str, Any]:
    """Train and evaluate one detector with one seed, from ``weights`` or from scratch."""
    from smnas.engine.candidate import evaluate_trained, train_candidate
    from smnas.engine.train import TrainConfig
    from smnas.models.build import DetectorOptions
    from smnas.models.spec import parse_spec

    path = workdir / "metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    spec = parse_spec(spec_text)
    opts = DetectorOptions(num_classes=6, backbone_weights=str(weights) if init == "pretrained" else None,
                           **settings["detector"])
    cfg = TrainConfig(seed=seed, **settings[part]["train"])
    jitter = settings["final"]["scale_jitter"] if part == "final" else None
    t0 = time.perf_counter()
    trained = train_candidate(spec, data, cfg, opts, workdir, progress=False,
                              scale_jitter=tuple(jitter) if jitter else None)
    t1 = time.perf_counter()
    row = evaluate_trained(spec, data, opts, workdir, progress=False)
    row.pop("spans", None)
    row.update(part=part, init=init, seed=seed, eval_seconds=time.perf_counter() - t1,
               wall_seconds=time.perf_counter() - t0, load=os.getloadavg()[0],
               final_loss=(trained.get("history") or [{}])[-1].get("loss"))
    path.write_text(json.dumps(row, indent=2) + "\n")
    if not keep_models:
        for name in ("model.pt", "train/last.pt", "detections.json"):
            (workdir / name).unlink(missing_ok=True)
    return row


def plan(settings: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    """(seed, part, spec, init) in run order: seed-major, the two conditions alternating."""
    runs = []
    for seed in settings["seeds"]:
        inits = INITS if seed % 2 == 0 else INITS[::-1]
        for part in ("final", "stage1"):
            if part not in settings["parts"]:
                continue
            for spec in ([settings["e0"]] if part == "final" else settings["stage1"]["specs"]):
                runs += [(seed, part, spec, init) for init in inits]
    return runs


def run_dir(out: Path, part: str, spec: str, init: str, seed: int) -> Path:
    from smnas.models.spec import spec_hash

    return out / "runs" / part / spec_hash(spec) / init / f"seed{seed}"


# ---------------------------------------------------------------- summary

def _map(row: dict[str, Any]) -> float:
    return float(row["map"]) if row.get("status") == "ok" and row.get("map") is not None else 0.0


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def _tau(x: list[float], y: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic) if len(x) > 1 else float("nan")


def model_rows(rows: list[dict[str, Any]], specs: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per model: both conditions' mean/sd/per-seed mAP, paired differences, seconds."""
    by = {(r["arch"], r["init"], r["seed"]): r for r in rows}
    out = []
    for spec in specs:
        row: dict[str, Any] = {"arch": spec}
        for init in INITS:
            rs = [by[(spec, init, s)] for s in seeds if (spec, init, s) in by]
            maps = [_map(r) for r in rs]
            row.update({f"{init}_runs": len(rs), f"{init}_failed": sum(r["status"] != "ok" for r in rs),
                        f"{init}_map": _mean(maps), f"{init}_sd": _sd(maps), f"{init}_maps": maps,
                        f"{init}_map50": _mean([r.get("map50") or 0.0 for r in rs]),
                        f"{init}_train_s": _mean([r["train_seconds"] for r in rs]),
                        f"{init}_eval_s": _mean([r["eval_seconds"] for r in rs])})
        paired = [s for s in seeds if all((spec, i, s) in by for i in INITS)]
        diffs = [_map(by[(spec, "pretrained", s)]) - _map(by[(spec, "scratch", s)]) for s in paired]
        row.update(diff=_mean(diffs), diff_sd=_sd(diffs), diffs=diffs)
        out.append(row)
    return out


def rank_signal(models: list[dict[str, Any]], rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per condition: ranks of the means, spread vs seed noise, Kendall tau between seeds."""
    by = {(r["arch"], r["init"], r["seed"]): _map(r) for r in rows}
    specs = [m["arch"] for m in models]
    res: dict[str, Any] = {}
    for init in INITS:
        means = [m[f"{init}_map"] for m in models]
        order = sorted(range(len(specs)), key=lambda i: -means[i])
        full = [s for s in seeds if all((a, init, s) in by for a in specs)]
        taus = {f"{a}-{b}": _tau([by[(x, init, a)] for x in specs], [by[(x, init, b)] for x in specs])
                for a, b in itertools.combinations(full, 2)}
        within = [m[f"{init}_sd"] for m in models if m[f"{init}_runs"] > 1]
        spread = _sd(means)
        res[init] = {"ranks": {specs[i]: r + 1 for r, i in enumerate(order)}, "spread": spread,
                     "within_sd": _mean(within), "ratio": spread / _mean(within) if within else float("nan"),
                     "taus": taus, "tau_mean": _mean(list(taus.values()))}
    res["tau_scratch_vs_pretrained"] = _tau([m["scratch_map"] for m in models], [m["pretrained_map"] for m in models])
    return res


def print_tables(settings: dict[str, Any], pre: list[dict[str, Any]], final: list[dict[str, Any]],
                 stage1: list[dict[str, Any]], sig: dict[str, Any] | None, seeds: list[int], file=sys.stdout) -> None:
    p = settings["pretrain"]
    print(f"\nPretraining ({settings['classification']['num_train']} train / {settings['classification']['num_val']} "
          f"val crops per class, 7 classes, {p['common']['image_size']} px; batch {p['common']['batch_size']} "
          f"lr {p['common']['lr']} cosine)", file=file)
    print(f"{'backbone':<34}{'epochs':>7}{'top-1':>7}{'top-5':>7}{'train s':>9}{'wall s':>8}{'load':>6}  used by",
          file=file)
    for r in pre:
        note = "  (top-1 near chance)" if r["top1"] < 1.5 / r.get("num_classes", 7) else ""
        print(f"{r['backbone']:<34}{r['epochs']:>7}{r['top1']:>7.3f}{r['top5']:>7.3f}{r['seconds']:>9.1f}"
              f"{r['wall_seconds']:>8.1f}{r['load']:>6.1f}  {r['used_by']}{note}", file=file)
    t = settings["final"]["train"]
    for title, models in ((f"Final E0 ({t['epochs']} epochs, batch {t['batch_size']}, lr {t['lr']}, jitter "
                           f"{settings['final']['scale_jitter']}, BN)", final),
                          ("Stage one ({epochs} epochs, batch {batch_size}, lr {lr}, GN+WS)".format(
                              **settings["stage1"]["train"]), stage1)):
        if not models:
            continue
        print(f"\n{title}; seeds {seeds}", file=file)
        print(f"{'model':<62}{'init':<11}{'mAP':>8}{'sd':>8}{'AP50':>7}  {'per seed':<26}{'train s':>8}{'eval s':>7}",
              file=file)
        for m in models:
            for init in INITS:
                per = " ".join(f"{x:.4f}" for x in m[f"{init}_maps"])
                fail = f" ({m[f'{init}_failed']} failed)" if m[f"{init}_failed"] else ""
                print(f"{m['arch'] if init == 'scratch' else '':<62}{init:<11}{m[f'{init}_map']:>8.4f}"
                      f"{m[f'{init}_sd']:>8.4f}{m[f'{init}_map50']:>7.3f}  {per:<26}{m[f'{init}_train_s']:>8.1f}"
                      f"{m[f'{init}_eval_s']:>7.1f}{fail}", file=file)
            diffs = " ".join(f"{d:+.4f}" for d in m["diffs"])
            print(f"{'':<62}{'diff':<11}{m['diff']:>+8.4f}{m['diff_sd']:>8.4f}{'':>7}  {diffs:<26}", file=file)
    if sig:
        print("\nStage-one signal (ranks by mean mAP; spread = sd of the candidates' means; "
              "noise = mean per-candidate sd over seeds)", file=file)
        for init in INITS:
            s = sig[init]
            taus = "  ".join(f"{k}: {v:+.2f}" for k, v in s["taus"].items()) or "-"
            ranks = ", ".join(f"{r}:{a.split('+')[0]}+{a.split('+')[3]}" for a, r in
                              sorted(s["ranks"].items(), key=lambda kv: kv[1]))
            print(f"{init:<11} ranks {ranks}\n{'':<11} spread {s['spread']:.4f}  noise {s['within_sd']:.4f}  "
                  f"ratio {s['ratio']:.2f}  tau between seeds {taus}", file=file)
        print(f"Kendall tau, scratch ranks vs pretrained ranks (of the means): "
              f"{sig['tau_scratch_vs_pretrained']:+.2f}", file=file)


def write_outputs(out: Path, settings: dict[str, Any], pre: list[dict[str, Any]], rows: list[dict[str, Any]],
                  final: list[dict[str, Any]], stage1: list[dict[str, Any]], sig: dict[str, Any] | None) -> None:
    import pandas as pd

    keep = ["part", "arch", "init", "seed", "status", "map", "map50", "map75", "maps", "mapm", "mapl",
            "train_seconds", "eval_seconds", "wall_seconds", "load", "final_loss", "gmacs", "params"]
    pd.DataFrame([{k: r.get(k) for k in keep} for r in rows]).to_csv(out / "runs.csv", index=False)
    pd.DataFrame([{k: v for k, v in r.items() if k not in ("history", "train")} for r in pre]).to_csv(
        out / "pretrain.csv", index=False)
    for name, models in (("final", final), ("stage1", stage1)):
        if models:
            flat = [{k: (" ".join(f"{x:.4f}" for x in v) if isinstance(v, list) else v) for k, v in m.items()}
                    for m in models]
            pd.DataFrame(flat).to_csv(out / f"{name}.csv", index=False)
    (out / "summary.json").write_text(json.dumps({"settings": settings, "pretrain": pre, "final": final,
                                                  "stage1": stage1, "signal": sig}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = open_run(args, settings_from, fixed_settings)
    from smnas.models.spec import parse_spec

    pre = {}
    if not args.summarize:
        data, cls_root = datasets(settings, args.out)
        for part, name, width, norm in backbones(settings):
            row = pretrain_one(settings, part, name, width, norm, cls_root, args.out)
            pre[(name, width, norm)] = row
        for seed, part, spec, init in plan(settings):
            s = parse_spec(spec)
            weights = Path(pre[(s.backbone.name, s.backbone.width, s.norm)]["weights"])
            row = run_one(settings, part, spec, init, seed, data, weights, run_dir(args.out, part, spec, init, seed),
                          args.keep_models)
            log.info("%s %s seed %d %s: map %.4f train %.0f s", part, init, seed, spec, _map(row), row["train_seconds"])
    from smnas.engine.pretrain import backbone_key

    used: dict[str, list[str]] = {}
    for part, name, width, norm in backbones(settings):
        used.setdefault(backbone_key(name, width, norm), []).append(part)
    pre_rows = [{**r, "used_by": ",".join(used.get(r["backbone"], ["-"]))}
                for r in (json.loads(p.read_text()) for p in sorted((args.out / "pretrained").glob("*/bench.json")))]
    rows = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*/*/*/seed*/metrics.json"))]
    seeds = sorted({r["seed"] for r in rows})
    final = model_rows([r for r in rows if r["part"] == "final"], [settings["e0"]], seeds) \
        if any(r["part"] == "final" for r in rows) else []
    stage1 = model_rows([r for r in rows if r["part"] == "stage1"], settings["stage1"]["specs"], seeds) \
        if any(r["part"] == "stage1" for r in rows) else []
    sig = rank_signal(stage1, [r for r in rows if r["part"] == "stage1"], seeds) if stage1 else None
    write_outputs(args.out, settings, pre_rows, rows, final, stage1, sig)
    print_tables(settings, pre_rows, final, stage1, sig, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
