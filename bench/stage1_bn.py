"""Stage one the paper's way, in BN from pretrained backbones: its seed-to-seed ranking and its
agreement with the final recipe, on the stage-one candidates of a bench/evidence.py run.

    .venv/bin/python bench/stage1_bn.py --run /tmp/evidence/seed0/results --out /tmp/stage1_bn
    .venv/bin/python bench/stage1_bn.py --run ... --out ... --summarize    # the table only

Written when the search's stage one trained from scratch with GN+WS (5 epochs at batch 1); it
measured the paper's start (ImageNet weights) that is now the default. This bench trains the same
candidates as the run's last stage-one population, switched to BN, from the backbones the run
pretrained for its final models and its `agreement` target (``results/pretrained/``: the final
recipe's initialisation), for ``--epochs`` (5) at ``--batch-size`` (4) and ``--lr`` (0.02), one
training per seed, through the
workflow's own calls (``train_candidate``, ``evaluate_trained``). It prints each candidate's mAP per
seed beside its GN+WS search-time mAP and its final-recipe mAP (``results/agreement/``), Kendall tau
between seeds, and Kendall tau of each recipe against the final one. Needs a run with
``--agreement-seeds`` for that seed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = {"epochs": 5, "batch_size": 4, "lr": 0.02, "lr_min": 1e-4, "warmup_iters": 20}


def candidates(run: Path) -> pd.DataFrame:
    """The run's last stage-one population (ok rows): arch, search-time map, final-recipe map."""
    from smnas.models.spec import spec_hash

    pops = sorted((run / "stage1").glob("gen*/population.parquet"), key=lambda p: int(p.parent.name[3:]))
    if not pops:
        raise SystemExit(f"{run}: no stage1/gen*/population.parquet (a bench/evidence.py seed's results/)")
    pop = pd.read_parquet(pops[-1])
    pop = pop[pop["status"] == "ok"]
    finals = []
    for arch in pop["arch"]:
        path = run / "agreement" / spec_hash(arch) / "metrics.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run bench/evidence.py with --agreement-seeds for this seed")
        finals.append(json.loads(path.read_text())["map"])
    return pd.DataFrame({"arch": pop["arch"].tolist(), "search": pop["map"].tolist(), "final": finals})


def train_one(run: Path, arch: str, seed: int, out: Path, detector: dict, recipe: dict = RECIPE) -> dict:
    """One BN training from the run's pretrained backbone; metrics.json in ``out`` (kept)."""
    from smnas.engine.candidate import DataPaths, evaluate_trained, train_candidate
    from smnas.engine.train import TrainConfig
    from smnas.models.spec import parse_spec
    from smnas.workflow.config import detector_options

    path = out / "metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    spec = parse_spec(arch).with_norm("bn")
    weights = run / "pretrained" / f"{spec.backbone.name}@{spec.backbone.width:g}" / "weights.pt"
    if not weights.exists():
        raise SystemExit(f"{weights} is missing: the run pretrained no {spec.backbone.name} in BN")
    data = DataPaths.coco_layout(run / "data" / "synthetic" / "coco")
    opts = detector_options({"detector": detector}, 6, str(weights))
    t0 = time.perf_counter()
    train_candidate(spec, data, TrainConfig(seed=seed, **recipe), opts, out, progress=False)
    row = evaluate_trained(spec, data, opts, out, progress=False)
    row.update(search_arch=arch, seed=seed, wall_seconds=time.perf_counter() - t0)
    row.pop("spans", None)
    path.write_text(json.dumps(row, indent=2) + "\n")
    (out / "model.pt").unlink(missing_ok=True)
    return row


def summarize(table: pd.DataFrame, rows: list[dict]) -> None:
    from scipy.stats import kendalltau

    runs = pd.DataFrame(rows)
    per_seed = runs.pivot_table(index="search_arch", columns="seed", values="map")
    seeds = list(per_seed.columns)
    t = table.set_index("arch").join(per_seed, how="inner")
    t["bn_mean"], t["bn_sd"] = t[seeds].mean(axis=1), t[seeds].std(axis=1)
    pd.set_option("display.width", 200)
    print(t.round(3).to_string())
    t = t.dropna(subset=seeds)  # the taus over candidates trained with every seed
    print(f"over the {len(t)} candidates trained with every seed:")
    for a, b in itertools.combinations(seeds, 2):
        print(f"Kendall tau between seeds {a} and {b}: {kendalltau(t[a], t[b]).statistic:+.2f}")
    for s in seeds:
        print(f"BN seed {s} against the final recipe: {kendalltau(t[s], t['final']).statistic:+.2f}")
    print(f"BN mean over seeds against the final recipe: {kendalltau(t['bn_mean'], t['final']).statistic:+.2f}; "
          f"the run's GN+WS search against it: {kendalltau(t['search'], t['final']).statistic:+.2f}")
    print(f"BN: best mean mAP {t['bn_mean'].max():.3f}, spread (sd of means) {t['bn_mean'].std():.4f}, "
          f"seed sd {t['bn_sd'].mean():.4f}, {runs['wall_seconds'].mean():.0f} s per training")


def main(argv: list[str] | None = None) -> None:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--run", type=Path, required=True, help="a bench/evidence.py seed's results/ folder")
    p.add_argument("--out", type=Path, required=True, help="one folder per training (kept; a rerun resumes)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--summarize", action="store_true", help="only print the table of --out")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    p.add_argument("--lr", type=float, default=RECIPE["lr"])
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from smnas.models.spec import spec_hash

    recipe = dict(RECIPE, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    table = candidates(args.run)
    detector = yaml.safe_load((args.run.parent / "base.yaml").read_text())["detector"]
    rows = []
    for seed in args.seeds:
        for arch in table["arch"]:
            out = args.out / f"seed{seed}" / spec_hash(arch)
            if args.summarize and not (out / "metrics.json").exists():
                continue
            row = train_one(args.run, arch, seed, out, detector, recipe)
            rows.append(row)
            if not args.summarize:
                print(f"seed {seed} {arch}: mAP {row['map']:.4f} in {row['wall_seconds']:.0f} s", flush=True)
    summarize(table, rows)


if __name__ == "__main__":
    main()
