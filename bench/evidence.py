"""Evidence that the search finds better detectors than hand design and than chance.

    .venv/bin/python bench/evidence.py                    # 3 seeds (about 50 min each on 2 cores)
    .venv/bin/python bench/evidence.py --seeds 0 --out runs/evidence
    .venv/bin/python bench/evidence.py --analyse runs/evidence   # only the tables of an earlier run
    .venv/bin/python bench/evidence.py --export runs/evidence docs/runs/NAME   # keep its tables

For each seed, one workflow run (config/config.yaml with that seed, a longer search than the main
job's: `--stage1-generations`, `--stage2-generations`, and `--from-front` final models along the
front, at most as many as it holds) builds, side by side on one machine: the evolutionary search
and its final models, the random-search baseline at the same budget (`random_search`: generation 0
shared, stage two in the evolution's groups, so each stage is a paired comparison), the baselines
Faster R-CNN R18/R50-FPN, RetinaNet R50-FPN and Cascade R-CNN R50-FPN trained with the final recipe
and timed on the same device (`baselines`), and, for `--agreement-seeds`, every stage-one candidate
retrained with the final recipe (`agreement`). The transfer targets are not run.
Then it prints:

1. for each baseline, the fastest of this run's searched final models (front0, front1, ...) at
   least as accurate, with its speed ratio (baseline latency / searched latency), or "none", and
   the same for the paper's named models (E0: searched by the paper, trained here with the same
   recipe) (the paper: searched models dominate FPN and Cascade R-CNN, E2 at half the time of
   FPN and +1 mAP);
2. the hypervolume of each generation's front, evolution against random search, per seed and
   stage (pymoo; objectives -mAP and cost, reference point (0, 1.1 x the largest cost either
   search evaluated), costs divided by that bound);
3. search-to-final agreement: Kendall tau between the short-training mAP of the stage-one
   candidates and their mAP after the final recipe;
and draws `evidence.png`: the searched models and the baselines on one mAP-vs-latency plot.
The seed-to-seed signal of single candidates is bench/search_signal.py's; how often evolution
should beat random search at such a budget at all, bench/search_sim.py's. `--final-seeds` limits
the final models and baselines to some seeds (the others run only the two searches).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smnas.search.pareto import hypervolume  # noqa: E402
from smnas.search.tables import rank_population  # noqa: E402


def overlay(seed: int, stage1_generations: int, stage2_generations: int, from_front: int,
            screen: int | None = None) -> dict:
    """The main job's config with this seed, a longer search and more final picks (and stage
    one's screen, when ``screen`` is given)."""
    stage1 = {"generations": stage1_generations} | ({"screen": screen} if screen else {})
    return {"seed": seed, "baselines": {"in_all": True}, "stage1": stage1,
            "stage2": {"generations": stage2_generations}, "final": {"from_front": from_front}}


def run_seed(workdir: Path, seed: int, cores: int, settings: dict, agreement: bool, base: Path,
             finals: bool = True, rerun_triggers: list[str] | None = None) -> None:
    """One workflow run: the search and random search, final models and baselines (when
    ``finals``), and agreement. ``rerun_triggers`` is passed to snakemake (``["mtime"]``: resume a
    copied run without retraining what later commits' code changes would trigger).

    The searches run first; the final models then take ``settings["final"]["from_front"]`` picks,
    or the whole stage-two front when it has fewer models (the workflow would stop with an error)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "base.yaml").write_text(base.read_text())
    path = workdir / "evidence.yaml"
    path.write_text(yaml.safe_dump(settings))
    _snakemake(workdir, cores, ["stage1", "stage2", "random_search"] + (["agreement"] if agreement else []),
               rerun_triggers)
    if finals:
        asked = settings["final"]["from_front"]
        cost = yaml.safe_load(base.read_text())["stage2"]["cost"]
        picks = min(asked, front_size(workdir / "results", cost))
        if picks < asked:
            print(f"{workdir.name}: the stage-two front has {picks} models: {picks} final picks ({asked} asked)",
                  flush=True)
            path.write_text(yaml.safe_dump({**settings, "final": {**settings["final"], "from_front": picks}}))
        _snakemake(workdir, cores, ["final", "baselines"], rerun_triggers)


def _snakemake(workdir: Path, cores: int, targets: list[str], rerun_triggers: list[str] | None) -> None:
    """snakemake ``targets`` in ``workdir`` with its base.yaml and evidence.yaml; appends to snakemake.log."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", str(cores),
           "--directory", str(workdir), *targets, "--configfile", str(workdir / "base.yaml"),
           str(workdir / "evidence.yaml")]
    if rerun_triggers:
        cmd += ["--rerun-triggers", *rerun_triggers]
    with open(workdir / "snakemake.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})


def front_size(res: Path, cost: str) -> int:
    """How many models the final target can pick from the stage-two front (``results/stage2/front.parquet``)."""
    from smnas.workflow.finals import evaluated_front

    return len(evaluated_front(pd.read_parquet(res / "stage2" / "front.parquet"), cost))


def _metrics(res: Path, kind: str) -> pd.DataFrame:
    """Final models or baselines: name, arch, map, latency_ms (the side-by-side re-timing's median
    when ``retimed.csv`` exists, see :func:`retime`; else the workflow's own measurement)."""
    rows = []
    for path in sorted((res / kind).glob("*/metrics.json")):
        m = json.loads(path.read_text())
        if m.get("status") == "ok":
            rows.append({"name": path.parent.name, "arch": m["arch"], "map": m["map"], "latency_ms": m["latency_ms"]})
    df = pd.DataFrame(rows, columns=["name", "arch", "map", "latency_ms"])
    retimed = res.parent / "retimed.csv"
    if retimed.exists() and len(df):
        t = pd.read_csv(retimed)
        t = t[t["kind"] == kind].set_index("name")["latency_ms"]
        df["latency_ms"] = [t.get(n, ms) for n, ms in zip(df["name"], df["latency_ms"])]
    return df


def time_side_by_side(models: dict, imgs: list, rounds: int, seed: int = 0,
                      passes: dict | None = None) -> dict[object, list]:
    """Each model's ``Latency`` (``measure_latency``, batch 1, one thread, ``passes[key]`` passes over
    ``imgs``, default 1; its median_ms is the figure reported) in each of ``rounds`` rounds; every
    round times every model once, in a new random order, so that a slow spell of a noisy machine
    hits them all alike."""
    from smnas.engine.measure import measure_latency

    rng, keys, times = np.random.default_rng(seed), list(models), {key: [] for key in models}
    for _ in range(rounds):
        for i in rng.permutation(len(keys)):
            runs = (passes or {}).get(keys[i], 1)
            times[keys[i]].append(measure_latency(models[keys[i]], imgs, runs=runs, threads=1))
    return times


def retime(res: Path, detector: dict, rounds: int, images: int) -> pd.DataFrame:
    """Every final model and baseline of one run timed again side by side (:func:`time_side_by_side`,
    the first ``images`` val images); the median over rounds per model. Written to
    ``retimed.csv`` beside ``results/``."""
    from smnas.engine.candidate import DataPaths, latency_images
    from smnas.workflow.jobs import load_trained

    models = {(kind, name): load_trained(res / kind / name, detector)
              for kind in ("final", "baselines") for name in _metrics(res, kind)["name"]}
    imgs = latency_images(DataPaths.coco_layout(res / "data" / "synthetic" / "coco"), images)
    times = {key: [t.median_ms for t in ts] for key, ts in time_side_by_side(models, imgs, rounds).items()}
    table = pd.DataFrame([{"kind": k, "name": n, "latency_ms": float(np.median(t)), "min_ms": min(t), "max_ms": max(t),
                           "rounds": len(t)} for (k, n), t in times.items()])
    table.to_csv(res.parent / "retimed.csv", index=False)
    return table


def baseline_table(res: Path) -> pd.DataFrame:
    """For each baseline, the fastest of our searched final models (front0, front1, ...) at least as
    accurate and the speed ratio (baseline ms / searched ms), and the same for the paper's named
    models (E0..E5, searched by the paper's authors, not by this run), or "none"."""
    finals, bases = _metrics(res, "final"), _metrics(res, "baselines")
    groups = {"ours": finals[finals["name"].str.startswith("front")],
              "paper": finals[~finals["name"].str.startswith("front")]}
    rows = []
    for _, b in bases.iterrows():
        row = {"baseline": b["name"], "map": b["map"], "ms": b["latency_ms"]}
        for who, models in groups.items():
            better = models[models["map"] >= b["map"]].sort_values("latency_ms")
            s = better.iloc[0] if len(better) else None
            row.update({who: "none" if s is None else s["name"], f"{who}_map": np.nan if s is None else s["map"],
                        f"{who}_ms": np.nan if s is None else s["latency_ms"],
                        f"{who}_ratio": np.nan if s is None else b["latency_ms"] / s["latency_ms"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _populations(res: Path, stage: str, prefix: str) -> list[pd.DataFrame]:
    """The search's population after each generation (stage two: its groups' together)."""
    base = res / prefix / stage if prefix else res / stage
    if stage == "stage1":
        return [pd.read_parquet(p) for p in sorted(base.glob("gen*/population.parquet"), key=lambda p: int(p.parent.name[3:]))]
    groups = sorted(base.glob("C*"))
    gens = sorted({int(p.parent.name[3:]) for g in groups for p in g.glob("gen*/population.parquet")})
    return [pd.concat([pd.read_parquet(g / f"gen{k}" / "population.parquet") for g in groups
                       if (g / f"gen{k}" / "population.parquet").exists()], ignore_index=True) for k in gens]


def hypervolume_table(res: Path, cost: dict[str, str]) -> pd.DataFrame:
    """Hypervolume of the front after each generation, evolution vs random search."""
    rows = []
    for stage in ("stage1", "stage2"):
        pops = {name: _populations(res, stage, prefix) for name, prefix in (("evolution", ""), ("random", "random"))}
        frames = [p[p["status"] == "ok"] for ps in pops.values() for p in ps]
        all_ok = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if all_ok.empty:  # this stage has not run yet
            continue
        bound = 1.1 * float(all_ok[cost[stage]].max())
        for name, ps in pops.items():
            for g, pop in enumerate(ps):
                front, hv = front_hypervolume(pop, cost[stage], bound)
                rows.append({"stage": stage, "search": name, "generation": g, "evaluated": int((pop["status"] == "ok").sum()),
                             "front": len(front), "hypervolume": hv})
    return pd.DataFrame(rows)


def front_hypervolume(pop: pd.DataFrame, cost: str, bound: float) -> tuple[pd.DataFrame, float]:
    """A population's first front and its hypervolume (objectives -mAP and ``cost`` / ``bound``,
    reference point (0, 1))."""
    ranked = rank_population(pop, cost)
    front = ranked[ranked["front_rank"] == 0]
    F = np.column_stack([-front["map"].to_numpy(float), front[cost].to_numpy(float) / bound])
    return front, hypervolume(F, [0.0, 1.0])


def agreement(res: Path) -> tuple[float, int]:
    """Kendall tau between search-time and final-recipe mAP of the same stage-one candidates."""
    from scipy.stats import kendalltau

    from smnas.models.spec import spec_hash

    pops = _populations(res, "stage1", "")
    if not pops:
        return float("nan"), 0
    pop = pops[-1]
    pairs = []
    for arch, search_map in zip(pop["arch"], pop["map"]):
        path = res / "agreement" / spec_hash(arch) / "metrics.json"
        if path.exists() and np.isfinite(search_map):
            pairs.append((search_map, json.loads(path.read_text()).get("map", np.nan)))
    pairs = [p for p in pairs if np.isfinite(p[1])]
    if len(pairs) < 3:
        return float("nan"), len(pairs)
    tau = kendalltau([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(tau), len(pairs)


def plot(runs: list[tuple[str, Path]], out: Path) -> None:
    """Searched final models and baselines on one mAP-vs-latency plot: ``runs`` are (seed label,
    results folder). Each baseline and paper model has its own colour, named in the legend (one
    point per seed); the searched models are red stars named ``model/seed`` beside the point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smnas.io import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    frames = {"final": [], "baselines": []}
    for label, res in runs:
        for kind in frames:
            frames[kind].append(_metrics(res, kind).assign(seed=label))
    finals, bases = (pd.concat(f, ignore_index=True) for f in frames.values())
    ours = finals["name"].str.startswith("front")
    colours = itertools.cycle(plt.get_cmap("tab10").colors[:3] + plt.get_cmap("tab10").colors[4:])  # red is ours
    for df, marker, suffix in ((bases, "s", ""), (finals[~ours], "D", " (paper)")):
        for name, group in df.groupby("name", sort=True):
            ax.scatter(group["latency_ms"], group["map"], marker=marker, s=45, color=next(colours),
                       label=f"{name}{suffix}")
    searched = finals[ours]
    if not searched.empty:
        ax.scatter(searched["latency_ms"], searched["map"], marker="*", s=110, color="tab:red",
                   label="searched by this run", zorder=3)
        placed: list[tuple[float, float]] = []  # labelled points, in axes fractions
        points = pd.concat([finals, bases], ignore_index=True)
        x0, x1 = points["latency_ms"].min(), points["latency_ms"].max()
        y0, y1 = points["map"].min(), points["map"].max()
        for _, r in searched.sort_values(["latency_ms", "map"]).iterrows():
            text = r["name"] + (f"/{r['seed']}" if len(runs) > 1 else "")
            xy = ((r["latency_ms"] - x0) / max(x1 - x0, 1e-9), (r["map"] - y0) / max(y1 - y0, 1e-9))
            near = sum(abs(xy[0] - u) < 0.06 and abs(xy[1] - v) < 0.04 for u, v in placed)  # stack such labels
            placed.append(xy)
            ax.annotate(text, (r["latency_ms"], r["map"]), fontsize=7, xytext=(5, -3 - 8 * near),
                        textcoords="offset points")
    ax.set_xlabel("inference time (ms, batch 1, this CPU)")
    ax.set_ylabel("COCO mAP (built-in val)")
    ax.set_title("searched vs hand-designed detectors, final recipe" + (f", {len(runs)} seeds" if len(runs) > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")


def seed_dirs(root: Path) -> list[Path]:
    """The ``seed{N}`` run folders under ``root``, by seed."""
    return sorted((p for p in root.glob("seed*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))


# What --export keeps of a run: every table the analysis and bench/search_sim.py read, no weights or images
EXPORTED = ("**/gen*/population.parquet", "**/gen*/candidates.parquet", "**/gen*/retimed.json", "**/front.parquet", "**/groups.parquet",
            "final/*/metrics.json", "baselines/*/metrics.json", "agreement/*/metrics.json",
            "final/*/arch.txt", "baselines/*/arch.txt", "agreement/*/arch.txt")


def export(root: Path, dest: Path) -> None:
    """The tables of every ``seed{N}`` run under ``root`` (a few hundred KB a seed, same layout)
    into ``dest``, with each run's configs and ``retimed.csv``: enough for ``--analyse dest
    --retime 0`` and ``bench/search_sim.py --runs dest/seed{N}`` once the run folder is gone."""
    for seed_dir in seed_dirs(root):
        files = [seed_dir / n for n in ("base.yaml", "evidence.yaml", "retimed.csv") if (seed_dir / n).exists()]
        files += [f for pattern in EXPORTED for f in (seed_dir / "results").glob(pattern)]
        for f in files:
            target = dest / seed_dir.name / f.relative_to(seed_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
        print(f"{seed_dir.name}: {len(files)} files -> {dest / seed_dir.name}")


def analyse(root: Path, retime_rounds: int = 0) -> None:
    seeds = seed_dirs(root)
    base = seeds[0] / "base.yaml" if seeds and (seeds[0] / "base.yaml").exists() else REPO / "config/config.yaml"
    cfg = yaml.safe_load(base.read_text())
    for seed_dir in seeds if retime_rounds else ():
        if any((seed_dir / "results" / "baselines").glob("*/model.pt")):  # not an --export
            print(f"{seed_dir.name}: timing its final models and baselines again, side by side, "
                  f"{retime_rounds} rounds ...", flush=True)
            t = retime(seed_dir / "results", cfg["detector"], retime_rounds, cfg["latency_images"])
            print(t.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    cost = {"stage1": cfg["stage1"]["cost"], "stage2": cfg["stage2"]["cost"]}
    pd.set_option("display.width", 160)
    wins: dict[str, list[bool]] = {"stage1": [], "stage2": []}
    plotted: list[tuple[str, Path]] = []
    for seed_dir in seeds:
        res = seed_dir / "results"
        print(f"\n=== {seed_dir.name} ===")
        table = baseline_table(res)
        print("baselines vs the fastest searched final model at least as accurate (ours: this run's "
              "front picks; paper: E0..E5; ratio = baseline ms / searched ms):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}") if len(table) else "  (no baseline ran)")
        hv = hypervolume_table(res, cost)
        if len(hv):
            pivot = hv.pivot_table(index=["stage", "generation"], columns="search", values="hypervolume")
            print("hypervolume of the front after each generation (higher is better):")
            print(pivot.to_string(float_format=lambda v: f"{v:.5f}"))
            for stage in wins:
                last = hv[hv["stage"] == stage]
                if len(last):
                    g = last["generation"].max()
                    final = last[last["generation"] == g].set_index("search")["hypervolume"]
                    if {"evolution", "random"} <= set(final.index):
                        wins[stage].append(bool(final["evolution"] > final["random"]))
        tau, n = agreement(res)
        if n:
            print(f"search-to-final agreement: Kendall tau {tau:+.3f} over {n} stage-one candidates")
        if (res / "final").is_dir() or (res / "baselines").is_dir():
            plot([(seed_dir.name, res)], seed_dir / "evidence.png")
            print(f"figure: {seed_dir / 'evidence.png'}")
            plotted.append((f"s{seed_dir.name.removeprefix('seed')}", res))
    for stage, w in wins.items():
        print(f"{stage}: evolution's last-generation hypervolume above random search's on {sum(w)} of {len(w)} seeds")
    if len(plotted) > 1:
        plot(plotted, root / "evidence.png")
        print(f"figure, every seed: {root / 'evidence.png'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--analyse", type=Path, default=None, help="only analyse the seed*/ folders of an earlier --out")
    p.add_argument("--export", type=Path, nargs=2, default=None, metavar=("RUNS", "DEST"),
                   help="copy the tables of RUNS/seed*/ (no weights or images) to DEST/seed*/ and stop")
    p.add_argument("--retime", type=int, default=5, metavar="ROUNDS",
                   help="time every final model and baseline again side by side in ROUNDS interleaved rounds "
                        "and compare those medians (default 5; 0: the workflow's own single measurements)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml",
                   help="the base configuration (default: the main job's)")
    p.add_argument("--stage1-generations", type=int, default=6, help="stage one's generations (main job: 2)")
    p.add_argument("--stage2-generations", type=int, default=4,
                   help="per stage-two group (main job: 2; with 2, the final models were mostly generation 0's seeds, "
                        "docs/evidence.md section 3)")
    p.add_argument("--from-front", type=int, default=3, help="final models along the front (main job: 1)")
    p.add_argument("--screen", type=int, default=None, metavar="K",
                   help="stage1.screen: K children per place, each timed untrained, a predictor keeping the most "
                        "promising (default: the base configuration's; the main job's has none)")
    p.add_argument("--agreement-seeds", type=int, nargs="*", default=[0],
                   help="seeds that also retrain every stage-one candidate with the final recipe (default: 0)")
    p.add_argument("--rerun-triggers", nargs="+", default=None, metavar="TRIGGER",
                   help="passed to snakemake: `mtime` resumes a copied or older run folder without retraining "
                        "the jobs whose code changed since (default: snakemake's, every trigger)")
    p.add_argument("--final-seeds", type=int, nargs="*", default=None,
                   help="seeds that also train the final models and the baselines (default: every seed); "
                        "the others run only the two searches, for the hypervolume comparison")
    args = p.parse_args()
    if args.export:
        export(*args.export)
        return
    if args.analyse:
        analyse(args.analyse, args.retime)
        return
    root = args.out or Path(tempfile.mkdtemp(prefix="smnas-evidence-"))
    for seed in args.seeds:
        print(f"seed {seed}: running the workflow in {root / f'seed{seed}'} ...", flush=True)
        settings = overlay(seed, args.stage1_generations, args.stage2_generations, args.from_front, args.screen)
        finals = args.final_seeds is None or seed in args.final_seeds
        run_seed(root / f"seed{seed}", seed, args.cores, settings, seed in args.agreement_seeds, args.config, finals,
                 args.rerun_triggers)
    analyse(root, args.retime)


if __name__ == "__main__":
    main()
