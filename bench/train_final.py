"""Train any architectures with a workflow run's final recipe, beside its final models and baselines.

    .venv/bin/python bench/train_final.py --run /tmp/evidence9/seed0 --out /tmp/final_extra \\
        "resnet18@0.25+fpn:P2-P5:c32+rpn+2fc:256+96x72+bn" \\
        "basicblock_16_1-1-1-1+fpn:P2-P5:c16+rpn+2fc:256+96x72+bn"
    .venv/bin/python bench/latency_parts.py --config /tmp/evidence9/seed0/base.yaml \\
        /tmp/evidence9/seed0/results/baselines/faster_r18_fpn /tmp/final_extra/*

A question such as "would R18-FPN at a smaller input be as accurate?" needs a model the search
did not pick, trained exactly as the run's final models were: the run's configuration
(``RUN/base.yaml`` and, when present, ``RUN/evidence.yaml`` over it: ``final.train``,
``final.scale_jitter``, ``detector``, ``seed``), its built-in data (``RUN/results/data``) and its
pretrained backbones (``RUN/results/pretrained/<key>``; a backbone the run did not pretrain is
pretrained into ``--out/pretrained/<key>`` with the run's ``pretrain`` block, as the workflow's
pretrain job does). Each spec is trained and evaluated by the workflow's own job functions
(``smnas.workflow.jobs.train`` and ``evaluate``) into ``--out/<spec with + and : as _>``, with
``arch.txt``, ``train.json``, ``model.pt`` and ``metrics.json`` as a final model's folder, so
``bench/latency_parts.py`` and ``bench/evidence.py``'s timing read it alike. A rerun resumes: a
finished model is not trained again unless its settings changed. The spec's norm must be ``bn``
(the final recipe's).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smnas.engine.candidate import DataPaths  # noqa: E402
from smnas.errors import SmnasError  # noqa: E402
from smnas.models.registry import backbone_key  # noqa: E402
from smnas.models.spec import parse_spec  # noqa: E402
from smnas.workflow import jobs  # noqa: E402


def merged_config(run: Path) -> dict:
    """``run/base.yaml`` with ``run/evidence.yaml`` (bench/evidence.py's overlay) over it."""
    base = run / "base.yaml"
    if not base.exists():
        raise SmnasError(f"{base}: not found; --run must be a folder bench/evidence.py wrote (base.yaml, results/)")
    cfg = yaml.safe_load(base.read_text())
    overlay = run / "evidence.yaml"
    if overlay.exists():
        for key, value in (yaml.safe_load(overlay.read_text()) or {}).items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def folder_name(spec: str) -> str:
    return re.sub(r"[+:@]", "_", spec)


def weights_for(spec_text: str, run: Path, out: Path, cfg: dict) -> str:
    """The pretrained backbone of ``spec_text``: the run's, or pretrained now into ``out``."""
    spec = parse_spec(spec_text)
    key = backbone_key(spec.backbone.name, spec.backbone.width, spec.norm)
    for root in (run / "results" / "pretrained", out / "pretrained"):
        if (root / key / "weights.pt").exists():
            return str(root / key / "weights.pt")
    target = out / "pretrained" / key
    target.mkdir(parents=True, exist_ok=True)
    print(f"pretraining {key} (the run has no such backbone) ...", flush=True)
    jobs.pretrain(data="", weights=str(target / "weights.pt"), metrics=str(target / "metrics.json"), key=key,
                  data_root=str(run / "results" / "data" / "classification"), train=cfg["pretrain"]["train"],
                  seed=cfg["seed"], device=cfg["device"])
    return str(target / "weights.pt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("specs", nargs="+", help="canonical spec strings, norm bn")
    p.add_argument("--run", type=Path, required=True, help="a bench/evidence.py seed folder (base.yaml, results/)")
    p.add_argument("--out", type=Path, required=True, help="one folder per spec is written here")
    args = p.parse_args()
    try:
        cfg = merged_config(args.run)
    except SmnasError as e:
        p.error(str(e))
    if "classification" not in {q.name for q in (args.run / "results" / "data").glob("*")}:
        p.error(f"{args.run}/results/data has no classification/ data (a run of the built-in dataset is expected)")
    for text in args.specs:
        try:
            spec = parse_spec(text)
        except SmnasError as e:
            p.error(f"spec {text!r}: {e}")
        if spec.norm != "bn":
            p.error(f"spec {text!r}: norm {spec.norm}; the final recipe trains in bn (end the spec with +bn)")
    data = asdict(DataPaths.coco_layout(args.run / "results" / "data" / "synthetic" / "coco"))
    options = {"seed": cfg["seed"], "device": cfg["device"], "train": cfg["final"]["train"],
               "detector": cfg["detector"]}
    for text in args.specs:
        folder = args.out / folder_name(str(parse_spec(text)))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "arch.txt").write_text(f"{parse_spec(text)}\n")
        weights = weights_for(text, args.run, args.out, cfg) if cfg["final"].get("init", "pretrain") == "pretrain" else ()
        print(f"training {text} with the final recipe of {args.run} ...", flush=True)
        jobs.train(str(folder / "arch.txt"), data["train_json"], data["val_json"], str(folder / "model.pt"),
                   str(folder / "train.json"), data, {**options, "scale_jitter": cfg["final"]["scale_jitter"]},
                   weights=weights, threads=1)
        jobs.evaluate(str(folder / "arch.txt"), str(folder / "model.pt"), str(folder / "train.json"),
                      str(folder / "metrics.json"), data, options)
        metrics = json.loads((folder / "metrics.json").read_text())
        print(f"{folder}: mAP {metrics['map']:.4f}", flush=True)


if __name__ == "__main__":
    main()
