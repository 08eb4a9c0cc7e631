"""Workflow benchmarks: the main job's wall time and overhead share, and planning time.

    .venv/bin/python bench/workflow.py main    # the default laptop search (config/config.yaml), fresh folder
    .venv/bin/python bench/workflow.py plan    # `snakemake -n` on a simulated 20 x 50 search

main: wall time of `snakemake --cores 2` from nothing (target: at most 15 minutes on 2 cores),
and the share spent outside training and evaluation (target: under 10%), two ways: of all job
time (1 - (seconds inside the training loops + the mAP and timing jobs) / seconds of all jobs, from
train.json and Snakemake's benchmark files), and of the 2-core wall time (which also counts cores
left idle, e.g. while a generation waits for its slowest candidate).
plan: tables for 20 generations x 50 candidates are simulated (no training); the time
`snakemake -n` takes to build the DAG of all 3,000 candidate jobs (target: under 10 s).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                    *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def bench_main(keep: Path | None, wall: float | None = None) -> None:
    workdir = keep or Path(tempfile.mkdtemp(prefix="smnas-main-"))
    if wall is None:  # else: analyse a finished run in --keep whose wall time was measured before
        wall = snakemake(workdir, "--cores", "2", "--configfile", str(REPO / "config/config.yaml"))
    jobs = {f: pd.read_csv(f, sep="\t")["s"].iloc[0] for f in workdir.glob("results/benchmarks/**/*.tsv")}
    job_total = sum(jobs.values())
    trainings = [*workdir.glob("results/stage*/candidates/*/train.json"), *workdir.glob("results/final/*/train.json"),
                 *workdir.glob("results/transfer/*/*/train.json")]
    train_inside = sum(json.loads(p.read_text())["seconds"] for p in trainings)
    eval_jobs = sum(v for f, v in jobs.items() if f.name.endswith(".evaluate.tsv"))
    time_jobs = sum(v for f, v in jobs.items() if f.name.endswith(".time.tsv"))
    inside = train_inside + eval_jobs + time_jobs  # SPEC: a candidate's evaluation = mAP + inference time
    print(f"{'quantity':<52}{'value':>12}")
    print(f"{'main job wall time (s), 2 cores':<52}{wall:>12.1f}")
    print(f"{'models trained':<52}{len(trainings):>12d}")
    print(f"{'sum of benchmarked job times (s)':<52}{job_total:>12.1f}")
    print(f"{'inside training loops (s)':<52}{train_inside:>12.1f}")
    print(f"{'evaluation jobs: mAP (s)':<52}{eval_jobs:>12.1f}")
    print(f"{'evaluation jobs: timing (s)':<52}{time_jobs:>12.1f}")
    print(f"{'share of job time outside training + evaluation':<52}{1 - inside / job_total:>12.1%}")
    print(f"{'share of wall x 2 cores outside training + evaluation':<52}{1 - inside / (2 * wall):>12.1%}")
    print(f"(results in {workdir})")


def bench_plan(generations: int, population: int) -> None:
    from smnas.models.spec import spec_hash
    from smnas.search.space import StageOneSpace
    from smnas.search.tables import make_table, rank_population, write_table

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
        cfg["stage1"].update(generations=generations, population=population)
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
        specs = StageOneSpace(input_sizes=tuple((w, w * 3 // 4) for w in range(64, 1024, 8))).sample(generations * population, seed=0)
        rows = []
        for g in range(generations):
            gen = [{"arch": str(s), "stage": "stage1", "generation": g, "parent": "", "status": "pending", "reason": "",
                    "cost": float("nan"), "hash": spec_hash(s)} for s in specs[g * population:(g + 1) * population]]
            path = workdir / f"results/stage1/gen{g}/candidates.parquet"
            path.parent.mkdir(parents=True)
            pd.DataFrame(gen).to_parquet(path)
            rows += [dict(r, status="ok", map=0.1, gmacs=1.0, latency_ms=1.0) for r in gen]
            write_table(rank_population(make_table(rows), "latency_ms"), workdir / f"results/stage1/gen{g}/population.parquet")
        # sample outputs exist, candidate outputs do not: the DAG holds every candidate's jobs
        args = ["stage1", "-n", "--cores", "2", "--configfile", str(workdir / "config.yaml")]
        times = [snakemake(workdir, *args) for _ in range(2)]
    print(f"{'planning':<52}{'seconds':>12}")
    print(f"{f'snakemake -n stage1, {generations} x {population} candidates':<52}{min(times):>12.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["main", "plan"])
    p.add_argument("--keep", type=Path, default=None, help="main: run in this folder instead of a temporary one")
    p.add_argument("--wall", type=float, default=None, help="main: only analyse --keep, whose run took WALL seconds")
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--population", type=int, default=50)
    args = p.parse_args()
    bench_main(args.keep, args.wall) if args.what == "main" else bench_plan(args.generations, args.population)


if __name__ == "__main__":
    main()
