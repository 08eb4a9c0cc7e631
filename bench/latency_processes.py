"""Is a latency measurement's noise the moment's or the process's?

    .venv/bin/python bench/latency_processes.py --run /tmp/ev16/seed2 --processes 6 --repeats 3

Loads some trained stage-one candidates of a ``bench/evidence.py`` run and times each of them
``--repeats`` times, round-robin, in each of ``--processes`` fresh Python processes started one
after the other (nothing else of smnas runs meanwhile), as the workflow's time and retime jobs do
(first ``latency_images`` val images, one pass, one thread, median forward). It prints per model
the spread within a process and between processes' means, and the share of the variance that is
between processes (intraclass correlation): near 1, a process is fast or slow as a whole and more
measurements in the same process add little; near 0, each measurement is an independent draw.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(run: Path, hashes: list[str], repeats: int) -> None:
    """One process: load the models, time each ``repeats`` times round-robin; print JSON rows."""
    from smnas.engine.candidate import DataPaths, latency_images
    from smnas.engine.measure import measure_latency
    from smnas.workflow.jobs import load_trained

    cfg = yaml.safe_load((run / "base.yaml").read_text())
    res = run / "results"
    models = {h: load_trained(res / "stage1/candidates" / h, cfg["detector"]) for h in hashes}
    images = latency_images(DataPaths.coco_layout(res / "data/synthetic/coco"), cfg["latency_images"])
    rows = []
    for r in range(repeats):
        for h, model in models.items():
            lat = measure_latency(model, images, runs=cfg["latency_runs"], threads=1)
            rows.append({"hash": h, "repeat": r, "ms": lat.median_ms})
    print(json.dumps(rows))


def pick(run: Path, n: int) -> pd.DataFrame:
    """``n`` stage-one candidates of the evolution's last population spread over its latencies."""
    pops = sorted((run / "results/stage1").glob("gen*/population.parquet"), key=lambda p: int(p.parent.name[3:]))
    pop = pd.read_parquet(pops[-1]).query("status == 'ok'").sort_values("latency_ms").reset_index(drop=True)
    from smnas.models.spec import spec_hash

    idx = np.unique(np.linspace(0, len(pop) - 1, n).round().astype(int))
    out = pop.loc[idx, ["arch", "latency_ms"]].reset_index(drop=True)
    out["hash"] = [spec_hash(a) for a in out["arch"]]
    return out


def summarise(df: pd.DataFrame, names: pd.DataFrame) -> pd.DataFrame:
    """Per model: median, within-process sd, sd of the process means, between-process share."""
    out = []
    for h, g in df.groupby("hash", sort=False):
        means = g.groupby("process")["ms"].mean()
        within = g.groupby("process")["ms"].var(ddof=1).mean()
        between = max(means.var(ddof=1) - within / g.groupby("process").size().mean(), 0.0)
        out.append({"arch": names.set_index("hash").loc[h, "arch"], "median_ms": g["ms"].median(),
                    "sd_within": within ** 0.5, "sd_between_means": means.std(ddof=1),
                    "between_share": between / (between + within) if between + within > 0 else float("nan"),
                    "process_means_ms": " ".join(f"{m:.1f}" for m in means)})
    return pd.DataFrame(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a bench/evidence.py seed folder (base.yaml, results/)")
    p.add_argument("--models", type=int, default=4, help="candidates, spread over the population's latencies")
    p.add_argument("--processes", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3, help="measurements of each model per process")
    p.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.run, args.worker, args.repeats)
        return
    names = pick(args.run, args.models)
    rows = []
    for proc in range(args.processes):
        out = subprocess.run([sys.executable, __file__, "--run", str(args.run), "--repeats", str(args.repeats),
                              "--worker", *names["hash"]], check=True, capture_output=True, text=True,
                             env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        rows += [r | {"process": proc} for r in json.loads(out.stdout.strip().splitlines()[-1])]
        print(f"process {proc}: " + " ".join(f"{r['ms']:.1f}" for r in rows if r["process"] == proc), flush=True)
    table = summarise(pd.DataFrame(rows), names)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"mean between-process share of the variance: {table['between_share'].mean():.2f} "
          f"({args.processes} processes x {args.repeats} measurements per model)")


if __name__ == "__main__":
    main()
