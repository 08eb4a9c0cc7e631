"""Workflow benchmarks: the main job's wall time and overhead share, and planning time.

    .venv/bin/python bench/workflow.py main             # the default laptop search, fresh folder
    .venv/bin/python bench/workflow.py main --keep DIR  # ... in DIR (kept), then analysed
    .venv/bin/python bench/workflow.py main --analyse DIR   # only analyse an earlier `--keep DIR`
    .venv/bin/python bench/workflow.py main --no-forkserver # every job imports torch itself
    .venv/bin/python bench/workflow.py compare          # main with and without the fork server, side by side
    .venv/bin/python bench/workflow.py plan             # `snakemake -n` on simulated paper-scale searches

main: wall time of `snakemake --cores 2 --configfile config/config.yaml` from nothing (target: at
most 15 minutes on 2 cores) and the share of it spent outside training and evaluation (target:
under 10%). Every training epoch (a backbone's pretraining too), latency measurement and mAP
evaluation records the Unix-time span in which it computed (train.json, latency.json,
metrics.json; results/pretrained/*/metrics.json for pretraining); the headline share is the
part of the wall time covered by no such span: scheduling, process start-up, bookkeeping rules,
data generation, plotting. A looser reading counts whole training, timing and evaluation jobs
(their Python and torch start-up too; job times from the Snakemake log). Two stricter readings:
the share of all job time (Snakemake's benchmark files) spent outside those spans, and the share
of the 2 cores' capacity (2 x wall) outside them, which also counts a core left idle while a
generation waits for its slowest candidate. A Gantt chart of the spans is written to DIR/timeline.png.
plan: a finished search is simulated (tables and empty candidate files; no training), then the
time `snakemake -n` takes to check the DAG of every candidate's jobs (target: under 10 s): stage
one with 10 generations x 50 candidates (1,500 candidate jobs), then stage two as the paper runs
it, 6 groups of 10 x 50 (9,000 more).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
KINDS = {"train.json": "training", "latency.json": "timing", "metrics.json": "evaluation"}
PRETRAINED = "pretrained"  # results/pretrained/{key}/metrics.json: the spans of a pretraining's epochs


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                    *args], check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def collect_spans(workdir: Path) -> pd.DataFrame:
    """One row per recorded span: model folder, kind (training, timing, evaluation, pretraining),
    start, end."""
    rows = []
    for name, kind in KINDS.items():
        for f in (workdir / "results").glob(f"**/{name}"):
            model = str(f.parent.relative_to(workdir / "results"))
            kind_here = "pretraining" if model.startswith(PRETRAINED + "/") else kind
            for a, b in json.loads(f.read_text()).get("spans", []):
                rows.append({"model": model, "kind": kind_here, "start": a, "end": b})
    return pd.DataFrame(rows, columns=["model", "kind", "start", "end"])


HEAVY_RULES = re.compile(r"^((final_|transfer_)?(train|time|evaluate)|pretrain)$")


def job_spans(workdir: Path) -> list[tuple[float, float]]:
    """[start, end] of every training, timing, evaluation and pretraining job, from the Snakemake
    logs (1 s; all of them: a later `--report` writes a log without jobs)."""
    lines = [line for log in sorted((workdir / ".snakemake/log").glob("*.snakemake.log"))
             for line in log.read_text().splitlines()]
    stamp, started, rule, spans = None, {}, None, []
    for line in lines:
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
        elif m := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line):
            rule = m.group(1)
        elif (m := re.match(r"\s+jobid: (\d+)$", line)) and rule is not None:
            started[m.group(1)], rule = (rule, stamp), None
        elif m := re.match(r"Finished jobid: (\d+) ", line):
            name, start = started.pop(m.group(1), (None, None))
            if name and HEAVY_RULES.match(name):
                spans.append((start, stamp))
    return spans


def plot_timeline(spans: pd.DataFrame, t0: float, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = spans.groupby("model")["start"].min().sort_values().index.tolist()
    fig, ax = plt.subplots(figsize=(10, 0.25 * len(order) + 1.5))
    colours = {"training": "tab:blue", "timing": "tab:red", "evaluation": "tab:green", "pretraining": "tab:purple"}
    for kind, grp in spans.groupby("kind"):
        ax.barh([order.index(m) for m in grp["model"]], grp["end"] - grp["start"], left=grp["start"] - t0,
                color=colours[kind], label=kind, height=0.8)
    ax.set_yticks(range(len(order)), order, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the start of the run")
    ax.legend(loc="upper right")  # rows go down as time goes right: the upper right is empty
    ax.set_title("where the main job computed (spans recorded by each step)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def bench_main(keep: Path | None, forkserver: bool = True) -> dict[str, float]:
    """Run the main job from nothing (no data, no warm fork server) and analyse it."""
    workdir = keep or Path(tempfile.mkdtemp(prefix="smnas-main-"))
    servers = Path(tempfile.mkdtemp(prefix="smnas-fs-"))  # a private, empty server folder
    env = dict(os.environ, SMNAS_FORKSERVER="1" if forkserver else "0", SMNAS_FORKSERVER_DIR=str(servers))
    start = time.time()
    try:
        snakemake(workdir, "--cores", "2", "--configfile", str(REPO / "config/config.yaml"), env=env)
    finally:
        from smnas.forkserver.server import stop_all

        stop_all(servers)
        shutil.rmtree(servers, ignore_errors=True)
    (workdir / "bench_run.json").write_text(json.dumps({"start": start, "end": time.time(), "forkserver": forkserver}))
    return analyse(workdir)


def bench_compare() -> None:
    """The main job with the fork server and without it, one after the other; a table of both."""
    results = {name: bench_main(None, forkserver=on) for name, on in (("fork server", True), ("no fork server", False))}
    rows = list(next(iter(results.values())))
    print(f"\n{'quantity':<60}" + "".join(f"{name:>16}" for name in results))
    for row in rows:
        print(f"{row:<60}" + "".join(f"{r[row]:>16.1f}" for r in results.values()))


def analyse(workdir: Path) -> dict[str, float]:
    run = json.loads((workdir / "bench_run.json").read_text())
    wall = run["end"] - run["start"]
    jobs = {f: pd.read_csv(f, sep="\t")["s"].iloc[0] for f in workdir.glob("results/benchmarks/**/*.tsv")}
    job_total = sum(jobs.values())
    spans = collect_spans(workdir)
    seconds = (spans["end"] - spans["start"]).groupby(spans["kind"]).sum()
    covered = union_seconds(list(zip(spans["start"], spans["end"])))
    inside = seconds.sum()
    plot_timeline(spans, run["start"], workdir / "timeline.png")
    table = {
        "main job wall time (s), 2 cores": wall,
        "models trained": float((spans["kind"] == "training").groupby(spans["model"]).any().sum()),
        "sum of benchmarked job times (s)": job_total,
        **{f"inside {kind} spans (s)": float(seconds.get(kind, 0.0)) for kind in (*KINDS.values(), "pretraining")},
        "wall time covered by some (pre)training or evaluation (s)": covered,
        "% of wall time outside (pre)training + evaluation": 100 * (1 - covered / wall),
        "... counting whole train/time/evaluate/pretrain jobs (start-up too)": 100 * (1 - union_seconds(job_spans(workdir)) / wall),
        "% of job time outside (pre)training + evaluation": 100 * (1 - inside / job_total),
        "% of 2 x wall (core capacity) outside them": 100 * (1 - inside / (2 * wall)),
    }
    print(f"fork server: {'on' if run.get('forkserver', True) else 'off'}")
    print(f"{'quantity':<60}{'value':>10}")
    for name, value in table.items():
        print(f"{name:<60}{value:>10.1f}")
    print(f"(results in {workdir}, timeline in {workdir / 'timeline.png'})")
    return table


def _simulate_search(workdir: Path, search: str, specs: list, generations: int, population: int, cost: str) -> None:
    """Candidates and population tables of ``generations`` x ``population`` evaluated candidates,
    their arch.txt files, as the sample and rank steps write them, and (empty) files in place of
    each candidate's outputs, in the order a finished search writes them (no training)."""
    from smnas.models.spec import spec_hash
    from smnas.search.tables import make_table, rank_population, write_table
    from smnas.workflow.generations import write_arch_files

    stage, _, group = search.partition("/")
    rows = []
    for g in range(generations):
        gen = [{"arch": str(s), "stage": stage, "group": group, "generation": g, "parent": "", "status": "pending",
                "reason": "", "cost": float("nan"), "hash": spec_hash(s)} for s in specs[g * population:(g + 1) * population]]
        path = workdir / f"results/{search}/gen{g}/candidates.parquet"
        path.parent.mkdir(parents=True)
        pd.DataFrame(gen).to_parquet(path)
        for folder in write_arch_files(pd.DataFrame(gen), workdir / f"results/{stage}/candidates"):
            for name in ("model.pt", "train.json", "latency.json", "metrics.json"):
                (folder.parent / name).touch()
        rows += [dict(r, status="ok", map=0.1, gmacs=1.0, latency_ms=1.0) for r in gen]
        write_table(rank_population(make_table(rows), cost), workdir / f"results/{search}/gen{g}/population.parquet")


def bench_plan(generations: int, population: int, groups: int) -> None:
    """Plan stage one alone (generations x population), then stage two at the paper's shape:
    ``groups`` groups of generations x population each, after a simulated stage one."""
    import random

    from smnas.search.mutation import mutate_stage2
    from smnas.search.seeding import seed_spec
    from smnas.search.space import StageOneSpace, StageTwoSpace
    from smnas.search.tables import rank_population, write_table

    space1 = StageOneSpace(input_sizes=tuple((w, w * 3 // 4) for w in range(64, 1024, 8)))
    specs1 = space1.sample(generations * population, seed=0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
        cfg["stage1"].update(generations=generations, population=population)
        cfg["stage2"].update(generations=generations, population=population)
        cfg["stage2"]["space"].update(structures=groups)
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
        data = workdir / "results/data/synthetic/coco/annotations"  # the built-in data, made before any table
        data.mkdir(parents=True)
        for split in ("train", "val"):
            (data / f"instances_{split}.json").write_text('{"images": [], "annotations": [], "categories": []}')
        _simulate_search(workdir, "stage1", specs1, generations, population, "latency_ms")
        # a finished search: Snakemake checks every candidate's files (what a resumed run costs)
        args = ["-n", "--cores", "2", "--configfile", str(workdir / "config.yaml")]
        times = [snakemake(workdir, "stage1", *args) for _ in range(2)]
        results.append((f"snakemake -n stage1, {generations} x {population} candidates", min(times)))
        # stage two: a finished stage one (front and groups tables), then each group's tables
        front = rank_population(pd.read_parquet(workdir / f"results/stage1/gen{generations - 1}/population.parquet"), "latency_ms")
        write_table(front[front["front_rank"] == 0], workdir / "results/stage1/front.parquet")
        space2 = StageTwoSpace(structures=groups)
        structures = [s for s in specs1 if s.backbone.name != "mobilenetv2"][:groups]
        write_table(pd.DataFrame({"group": [f"C{i}" for i in range(groups)], "structure": [str(s) for s in structures],
                                  "seed": [str(seed_spec(s, space2)) for s in structures]}),
                    workdir / "results/stage2/groups.parquet")
        rng = random.Random(0)
        for i, structure in enumerate(structures):
            specs, seen, spec = [], set(), seed_spec(structure, space2)
            while len(specs) < generations * population:
                spec = mutate_stage2(spec if rng.random() < 0.9 else seed_spec(structure, space2), space2, rng)
                if str(spec) not in seen:
                    seen.add(str(spec))
                    specs.append(spec)
            _simulate_search(workdir, f"stage2/C{i}", specs, generations, population, "gmacs")
        times = [snakemake(workdir, "stage2", *args) for _ in range(2)]
        results.append((f"snakemake -n stage2, {groups} groups x {generations} x {population}", min(times)))
        # `stage2` reaches the groups through a checkpoint, after which Snakemake does not open the
        # finished generations again; naming every group's front makes it check every candidate
        fronts = [f"results/stage2/C{i}/front.parquet" for i in range(groups)]
        times = [snakemake(workdir, *fronts, *args) for _ in range(2)]
        results.append((f"... every group's front named: all {groups * generations * population} candidates", min(times)))
    print(f"{'planning':<56}{'seconds':>10}")
    for name, seconds in results:
        print(f"{name:<56}{seconds:>10.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["main", "compare", "plan"])
    p.add_argument("--keep", type=Path, default=None, help="main: run in this folder instead of a temporary one")
    p.add_argument("--analyse", type=Path, default=None, help="main: only analyse this folder of an earlier --keep run")
    p.add_argument("--no-forkserver", action="store_true", help="main: every job imports torch itself")
    p.add_argument("--generations", type=int, default=10, help="plan: generations per search")
    p.add_argument("--population", type=int, default=50, help="plan: candidates per generation")
    p.add_argument("--groups", type=int, default=6, help="plan: stage-two groups (the paper's C0..C5)")
    args = p.parse_args()
    if args.what == "plan":
        bench_plan(args.generations, args.population, args.groups)
    elif args.what == "compare":
        bench_compare()
    elif args.analyse:
        analyse(args.analyse)
    else:
        bench_main(args.keep, forkserver=not args.no_forkserver)


if __name__ == "__main__":
    main()
