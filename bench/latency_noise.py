"""How noisy is stage one's cost? A run's stage-one candidates timed again, side by side.

    .venv/bin/python bench/latency_noise.py --run /tmp/ev14/seed2            # 3 rounds
    .venv/bin/python bench/latency_noise.py --run RUN --rounds 5 --csv noise.csv
    .venv/bin/python bench/latency_noise.py --run RUN --passes 5     # latency_runs 5 against 1
    .venv/bin/python bench/latency_noise.py --run RUN_A RUN_B        # two runs' searches, timed together

Stage one ranks candidates by one latency measurement each (``latency_runs`` passes over the
first ``latency_images`` val images, median forward), taken whenever its timing job ran; members
of the front by the median of ``latency_measurements`` (the retime step). This
bench loads every trained stage-one candidate of a ``bench/evidence.py`` run (both searches),
times them all again in ``--rounds`` interleaved rounds (``time_side_by_side``: a new random
order each round, so a slow spell hits them all alike) and prints:

- per candidate: the search-time figure, the re-timed median and range, and their ratio;
- Kendall tau between the search-time figures and the re-timed medians, and between two rounds
  (how repeatable one measurement is when the machine is the same for all);
- each search's stage-one front (members) and last hypervolume, by the search-time figures and
  by the re-timed medians (evolution against random search, as ``bench/evidence.py`` computes it),
  so one sees whether a verdict is the algorithm's or the stopwatch's;
- whether the fastest forward of a measurement (its min) would rank the models more repeatably
  than the median forward that the workflow reports: one round's figure against the other
  rounds' medians, and each model's round-to-round spread;
- with ``--passes N``, the same repeatability for measurements of N passes each (config
  ``latency_runs``), timed in the same rounds;
- with ``--untrained``, each architecture also built afresh (random weights, as a child is before
  it trains) and timed in the same rounds: how well an untrained model's time ranks the trained
  ones, against how well one trained round ranks them (a screen could time children before
  training them: the work of a two-stage detector's heads depends on its scores).

With several ``--run`` folders (runs of one seed with different settings), the candidates of all
of them are timed in the same rounds and each run's searches are named ``FOLDER:evolution``, so
their fronts compare under one stopwatch; the first run's settings and images are used.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from evidence import _populations, front_hypervolume, time_side_by_side  # noqa: E402


def last_populations(res: Path) -> dict[str, pd.DataFrame]:
    """Each search's stage-one population after its last generation, evaluated rows only."""
    out = {}
    for name, prefix in (("evolution", ""), ("random", "random")):
        pops = _populations(res, "stage1", prefix)
        if pops:
            out[name] = pops[-1][pops[-1]["status"] == "ok"]
    if not out:
        raise SystemExit(f"{res}: no stage1/gen*/population.parquet (is this a bench/evidence.py run's results/?)")
    return out


def candidates(last: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The distinct candidates of both searches: arch, hash, map, latency_ms, search."""
    from smnas.models.spec import spec_hash

    df = pd.concat([pop[["arch", "map", "latency_ms"]].assign(search=name) for name, pop in last.items()],
                   ignore_index=True)
    df = df.groupby("arch", as_index=False).agg(map=("map", "first"), latency_ms=("latency_ms", "first"),
                                                search=("search", lambda s: "+".join(sorted(set(s)))))
    df["hash"] = [spec_hash(a) for a in df["arch"]]
    return df


def untrained(folder: Path, detector: dict):
    """The architecture of a trained model folder, built afresh: random weights, eval mode."""
    import json

    from smnas.models.build import build_detector
    from smnas.models.spec import parse_spec
    from smnas.workflow.config import detector_options

    num_classes = json.loads((folder / "train.json").read_text())["num_classes"]
    opts = detector_options({"detector": detector}, num_classes)
    return build_detector(parse_spec((folder / "arch.txt").read_text().strip()), opts).eval()


def short(arch: str) -> str:
    return arch.replace("@0.25", "").replace(":256", "").replace("+bn", "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, nargs="+", required=True,
                   help="a bench/evidence.py seed folder (holding base.yaml and results/); several: timed together")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--csv", type=Path, default=None, help="also write the per-candidate table here")
    p.add_argument("--passes", type=int, default=None, metavar="N",
                   help="also time every candidate with N passes over the images (latency_runs N) in the same "
                        "rounds, and compare how repeatable one measurement is with 1 and with N passes")
    p.add_argument("--untrained", action="store_true",
                   help="also time every architecture untrained (built afresh) in the same rounds")
    args = p.parse_args()
    from scipy.stats import kendalltau

    from smnas.engine.candidate import DataPaths, latency_images
    from smnas.workflow.jobs import load_trained

    res = args.run[0] / "results"
    cfg = yaml.safe_load((args.run[0] / "base.yaml").read_text())
    # one run: its searches are "evolution", "random"; several: "FOLDER:evolution", ...
    names = [r.name for r in args.run] if len({r.name for r in args.run}) == len(args.run) else map(str, args.run)
    prefixes = [f"{n}:" for n in names] if len(args.run) > 1 else [""]
    last, folder = {}, {}  # search -> last population; arch -> the first run holding its model
    for run, prefix in zip(args.run, prefixes):
        for name, pop in last_populations(run / "results").items():
            last[prefix + name] = pop
            for arch in pop["arch"]:
                folder.setdefault(arch, run / "results" / "stage1" / "candidates")
    df = candidates(last)
    print(f"{len(df)} stage-one candidates; timing them {args.rounds} rounds side by side ...", flush=True)
    models = {a: load_trained(folder[a] / h, cfg["detector"]) for a, h in zip(df["arch"], df["hash"])}
    imgs = latency_images(DataPaths.coco_layout(res / "data" / "synthetic" / "coco"), cfg["latency_images"])
    more = {(a, args.passes): m for a, m in models.items()} if args.passes else {}
    if args.untrained:
        more |= {(a, "untrained"): untrained(folder[a] / h, cfg["detector"]) for a, h in zip(df["arch"], df["hash"])}
    timed = time_side_by_side(models | more, imgs, args.rounds,
                              passes={k: args.passes for k in more if k[1] == args.passes})
    times = {key: [t.median_ms for t in ts] for key, ts in timed.items()}
    fastest = {key: [t.min_ms for t in ts] for key, ts in timed.items()}
    df["retimed_ms"] = [float(np.median(times[a])) for a in df["arch"]]
    df["min_ms"] = [min(times[a]) for a in df["arch"]]
    df["max_ms"] = [max(times[a]) for a in df["arch"]]
    df["search/retimed"] = df["latency_ms"] / df["retimed_ms"]
    table = df.sort_values("retimed_ms").assign(arch=lambda d: d["arch"].map(short))
    pd.set_option("display.width", 200)
    print(table[["arch", "search", "map", "latency_ms", "retimed_ms", "min_ms", "max_ms", "search/retimed"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    tau = kendalltau(df["latency_ms"], df["retimed_ms"]).statistic
    rounds = [kendalltau([times[a][i] for a in df["arch"]], [times[a][i + 1] for a in df["arch"]]).statistic
              for i in range(args.rounds - 1)]
    print(f"\nKendall tau, search-time vs re-timed median: {tau:+.3f}; between consecutive rounds: "
          + ", ".join(f"{r:+.3f}" for r in rounds))
    print(f"search-time / re-timed: median {df['search/retimed'].median():.2f}, "
          f"range {df['search/retimed'].min():.2f}-{df['search/retimed'].max():.2f}")
    # Would another statistic of the same forwards rank better? One round's figure against the
    # median of the other rounds' medians (the best estimate of each model's typical time).
    for label, stat in (("median forward (reported)", times), ("fastest forward", fastest)):
        one = [kendalltau([stat[a][i] for a in df["arch"]],
                          [np.median([times[a][j] for j in range(args.rounds) if j != i]) for a in df["arch"]]).statistic
               for i in range(args.rounds)] if args.rounds > 1 else [np.nan]
        spread = np.median([np.std(stat[a]) / np.mean(stat[a]) for a in df["arch"]])
        print(f"one round's {label} vs the other rounds' medians: Kendall tau mean {np.mean(one):+.3f} "
              f"({', '.join(f'{t:+.2f}' for t in one)}); round-to-round spread of one model (median CV) {spread:.3f}")
    if args.passes:
        many = [kendalltau([times[(a, args.passes)][i] for a in df["arch"]],
                           [times[(a, args.passes)][i + 1] for a in df["arch"]]).statistic for i in range(args.rounds - 1)]
        print(f"between consecutive rounds with {args.passes} passes per measurement: "
              + ", ".join(f"{r:+.3f}" for r in many) + f" (1 pass: mean {np.mean(rounds):+.3f}, "
              f"{args.passes} passes: mean {np.mean(many):+.3f})")
    if args.untrained:
        fresh = {a: float(np.median(times[(a, "untrained")])) for a in df["arch"]}
        one = [float(np.median(times[(a, "untrained")][:1])) for a in df["arch"]]
        ratio = np.log([fresh[a] / t for a, t in zip(df["arch"], df["retimed_ms"])])
        trained_one = [kendalltau([times[a][i] for a in df["arch"]], df["retimed_ms"]).statistic
                       for i in range(args.rounds)]
        print(f"\nuntrained vs trained (medians over rounds): Kendall tau {kendalltau(list(fresh.values()), df['retimed_ms']).statistic:+.3f}; "
              f"one untrained round vs the trained medians {kendalltau(one, df['retimed_ms']).statistic:+.3f}; "
              f"one trained round vs the trained medians (itself included) {np.mean(trained_one):+.3f}")
        print(f"log(untrained / trained): mean {ratio.mean():+.3f}, sd {ratio.std(ddof=1):.3f}; by head and RPN:")
        from smnas.models.spec import parse_spec
        kinds = [f"{s.rpn.kind}+{s.head}" for s in map(parse_spec, df["arch"])]
        parts = df.assign(r=ratio, kind=kinds)
        print(parts.groupby("kind")["r"].agg(["count", "mean", "std"]).to_string(float_format=lambda v: f"{v:+.3f}"))
    retimed = dict(zip(df["arch"], df["retimed_ms"]))
    for label, pops in (("search-time", last),  # each search's own figures
                        ("re-timed", {name: pop.assign(latency_ms=pop["arch"].map(retimed)) for name, pop in last.items()})):
        bound = 1.1 * max(pop["latency_ms"].max() for pop in pops.values())
        print(f"\nby the {label} figures (reference point 1.1 x the largest of them):")
        for name, pop in pops.items():
            front, hv = front_hypervolume(pop, "latency_ms", bound)
            print(f"  {name}: hypervolume {hv:.4f}, front {sorted(map(short, front['arch']))}")


if __name__ == "__main__":
    main()
