"""SP-NAS against SM-NAS's stage two: the two modular methods at the same candidate budget.

    .venv/bin/python bench/modular.py --out runs/modular               # ~30-40 min on 2 cores
    .venv/bin/python bench/modular.py --out runs/modular --budget 12 --structures 1
    .venv/bin/python bench/modular.py --analyse runs/modular           # the table of an earlier run

One workflow run (config/config.yaml, plus an overlay written to ``OUT/modular.yaml``) runs stage
one, then both modular searches inside the same stage-one structures (``--structures`` groups):
SM-NAS's stage two (GN+WS from scratch, mutations, Partial Order Pruning) with ``--budget``
candidates per group (``stage2.generations`` x ``stage2.population``), and SP-NAS with the same
number split between its serial phase (``--budget - --parallel`` candidates: a pretrained start
network, swaps and expands with weight inheritance, reignites) and its parallel phase
(``--parallel`` candidates). Both see the same data, detector options, cost and device.

Printed per method: candidates trained, the hypervolume of its front (objectives -mAP and the
cost; one reference point for both: mAP 0 and 1.1 x the largest cost either evaluated), its most
accurate model, the best mAP at or under the other method's cheapest front cost, and the job
time it spent (Snakemake's benchmark files: training, timing, evaluation, weight inheritance,
and, for SP-NAS, the pretraining of its start networks and reignites; stage one is shared and
not counted). ``modular.png``: both fronts on one plot, ``modular.csv``: the table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smnas.models.registry import backbone_key  # noqa: E402
from smnas.models.spec import parse_spec, spec_hash  # noqa: E402
from smnas.search.pareto import hypervolume  # noqa: E402


def overlay(budget: int, parallel: int, structures: int, population: int, seed: int) -> dict:
    """Config keys that make both methods spend ``budget`` candidates per group."""
    if budget % population or (budget - parallel) % population or parallel % population:
        raise SystemExit(f"--budget {budget} and --parallel {parallel} must be multiples of --population {population}")
    return {
        "seed": seed,
        "modular_method": "both",
        "stage2": {"generations": budget // population, "population": population, "space": {"structures": structures}},
        "spnas": {"serial": {"generations": (budget - parallel) // population, "population": population},
                  "parallel": {"generations": parallel // population, "population": population}},
    }


def run(out: Path, base: Path, cfg: dict, cores: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "modular.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", str(cores),
           "--directory", str(out), "stage2", "spnas", "--configfile", str(base), str(path)]
    start = time.perf_counter()
    with open(out / "snakemake.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - start


def _seconds(path: Path) -> float:
    return float(pd.read_csv(path, sep="\t")["s"].sum()) if path.exists() else 0.0


def populations(res: Path) -> dict[str, pd.DataFrame]:
    """Everything each method evaluated (its groups' last populations; SP-NAS: both phases)."""
    def last(search: Path) -> pd.DataFrame:
        gens = sorted(search.glob("gen*/population.parquet"), key=lambda p: int(p.parent.name[3:]))
        return pd.read_parquet(gens[-1])

    sm = [last(p) for p in sorted((res / "stage2").glob("C*"))]
    sp = [last(p / phase) for p in sorted((res / "spnas").glob("C*")) for phase in ("serial", "parallel")]
    return {"SM-NAS stage two": pd.concat(sm, ignore_index=True), "SP-NAS": pd.concat(sp, ignore_index=True)}


def job_seconds(res: Path, method: str, pop: pd.DataFrame) -> float:
    """Job time of a method's candidates (and SP-NAS's own pretrainings) from the benchmark files."""
    stage = "stage2" if method.startswith("SM") else "spnas"
    trained = pop[pop["status"] != "pruned"]
    total = sum(_seconds(res / "benchmarks" / stage / f"{spec_hash(a)}.{step}.tsv")
                for a in trained["arch"] for step in ("train", "time", "evaluate", "inherit"))
    if stage == "spnas":
        pretrained = pd.concat([pop.loc[(pop["init"] == "pretrained") & (pop["parent"] == ""), "arch"],  # starts
                                pop.loc[pop["init"] == "reignited", "parent"]])  # parents pretrained again
        keys = {backbone_key(parse_spec(a).backbone.name, 1.0, parse_spec(a).norm) for a in pretrained}
        total += sum(_seconds(res / "benchmarks" / "pretrained" / f"{k}.tsv") for k in keys)
    return total


def table(res: Path, cost: str) -> pd.DataFrame:
    pops = populations(res)
    ok = {m: p[p["status"] == "ok"] for m, p in pops.items()}
    bound = 1.1 * max(float(p[cost].max()) for p in ok.values())
    fronts = {}
    for m, p in ok.items():
        F = np.column_stack([-p["map"].to_numpy(float), p[cost].to_numpy(float) / bound])
        dominated = [((F[:, 0] <= f[0]) & (F[:, 1] <= f[1]) & ((F[:, 0] < f[0]) | (F[:, 1] < f[1]))).any() for f in F]
        fronts[m] = p[~np.array(dominated)].sort_values(cost)
    rows = []
    for m, p in ok.items():
        other = fronts[next(o for o in ok if o != m)]
        best = p.sort_values(["map", cost], ascending=[False, True]).iloc[0]
        cheap = p[p[cost] <= float(other[cost].min())]
        F = np.column_stack([-p["map"].to_numpy(float), p[cost].to_numpy(float) / bound])
        rows.append({
            "method": m, "trained": int((pops[m]["status"] != "pruned").sum()), "pruned": int((pops[m]["status"] == "pruned").sum()),
            "failed": int((pops[m]["status"] == "failed").sum()),
            "hypervolume": hypervolume(F, [0.0, 1.0]), "front": len(fronts[m]),
            "best_map": float(best["map"]), f"best_{cost}": float(best[cost]), "best_arch": best["arch"],
            "best_map_at_other_cheapest": float(cheap["map"].max()) if len(cheap) else float("nan"),
            "job_seconds": job_seconds(res, m, pops[m]),
        })
    return pd.DataFrame(rows), fronts


def plot(pops: dict[str, pd.DataFrame], fronts: dict[str, pd.DataFrame], cost: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for (m, p), colour in zip(pops.items(), ("tab:blue", "tab:red")):
        ok = p[p["status"] == "ok"]
        ax.scatter(ok[cost], ok["map"], c=colour, alpha=0.35, s=18)
        f = fronts[m]
        ax.plot(f[cost], f["map"], "o-", c=colour, label=f"{m} front")
    ax.set_xlabel(cost)
    ax.set_ylabel("COCO mAP (val)")
    ax.set_title("modular search at one candidate budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def analyse(out: Path) -> pd.DataFrame:
    res = out / "results"
    base = yaml.safe_load((out / "base.yaml").read_text())
    cost = base["stage2"]["cost"]
    df, fronts = table(res, cost)
    plot(populations(res), fronts, cost, out / "modular.png")
    df.to_csv(out / "modular.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_colwidth", 70, "display.float_format", "{:.4g}".format):
        print(df.drop(columns=["best_arch"]).to_string(index=False))
        for row in df.itertuples():
            print(f"{row.method} best: {row.best_arch}")
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "modular", help="run folder (default: runs/modular)")
    ap.add_argument("--budget", type=int, default=8, help="candidates per group and method (default 8)")
    ap.add_argument("--parallel", type=int, default=2, help="of them, SP-NAS's parallel phase (default 2)")
    ap.add_argument("--population", type=int, default=2, help="candidates per generation (default 2)")
    ap.add_argument("--structures", type=int, default=1, help="stage-one structures searched (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml",
                    help="the base configuration (default: the main job's)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--analyse", action="store_true", help="only print the table of an earlier run in --out")
    args = ap.parse_args()
    if not args.analyse:
        cfg = overlay(args.budget, args.parallel, args.structures, args.population, args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "base.yaml").write_text(args.config.read_text())
        seconds = run(args.out, args.out / "base.yaml", cfg, args.cores)
        print(f"workflow: {seconds:.0f} s wall (stage one included) in {args.out}")
    analyse(args.out)


if __name__ == "__main__":
    main()
