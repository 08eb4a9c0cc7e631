"""Time of the selection machinery per stage-two generation, and how much Partial Order Pruning skips.

For populations of N evaluated candidates (simulated: distinct random encodings of the paper's
stage-two space around one structure), one generation of ``--children`` children is made:
ranking (non-dominated sort + crowding of the N), then ``next_generation`` (parents from the
front, mutation, dedupe against all N, POP of every child against the N).

Simulation: cost = an analytic MAC count of the basicblock backbone at 800x600 (3x3 convs, stem
and 1x1 shortcuts; it grows with containment, as real MACs do, and costs microseconds where the
meta-device count costs ~0.1 s); accuracy = 0.05 * log(cost) + Gaussian noise (sd ``--noise``),
so it follows the partial-order prior up to the noise. The check line compares the proxy with
``backbone_gmacs`` on a few encodings.

    .venv/bin/python bench/selection.py [--sizes 10 100 1000 10000] [--children 50] [--noise 0.005]
"""
from __future__ import annotations

import argparse
import functools
import random
import time

import numpy as np
import pandas as pd

from smnas.models.encoding import Encoding, parse_encoding
from smnas.models.spec import DetectorSpec, parse_spec
from smnas.search.evolution import mutator, next_generation
from smnas.engine.cost import backbone_gmacs
from smnas.search.space import StageTwoSpace
from smnas.search.tables import rank_population

TAIL = "+fpn:P2-P5:c{}+rpn+2fc+800x600+gnws"
SPACE2 = StageTwoSpace.paper()


def random_encoding(rng: random.Random) -> Encoding:
    """Stage lengths uniform while the total stays in bounds; 3 doublings at random places."""
    b = SPACE2.bounds
    while True:
        lengths = [rng.randint(b.min_stage_blocks, 10) for _ in range(b.num_stages)]
        if b.min_blocks <= sum(lengths) <= b.max_blocks:
            break
    twos = set(rng.sample(range(sum(lengths)), 3))
    flat = "".join("2" if i in twos else "1" for i in range(sum(lengths)))
    stages, i = [], 0
    for n in lengths:
        stages.append(flat[i:i + n])
        i += n
    return Encoding("basicblock", rng.choice(b.base_channels), tuple(stages))


@functools.lru_cache(maxsize=None)
def proxy_gmacs(arch: str) -> float:
    """Analytic MACs of a basicblock backbone at 800x600 (GMACs)."""
    enc = parse_encoding(parse_spec(arch).backbone.name)
    h, w = 600 / 4, 800 / 4  # after the stem
    macs = 300 * 400 * 7 * 7 * 3 * enc.base_channels
    cin = enc.base_channels
    for s, widths in enumerate(enc.stage_channels()):
        for j, width in enumerate(widths):
            if s > 0 and j == 0:
                h, w = h / 2, w / 2
            macs += h * w * 9 * (cin * width + width * width)
            if cin != width or (s > 0 and j == 0):
                macs += h * w * cin * width
            cin = width
    return macs / 1e9


def cost(spec: DetectorSpec) -> float:
    return proxy_gmacs(str(spec))


def population(n: int, noise: float, seed: int) -> pd.DataFrame:
    rng, archs = random.Random(seed), set()
    while len(archs) < n:
        archs.add(f"{random_encoding(rng)}{TAIL.format(rng.choice(SPACE2.fpn_channels))}")
    archs = sorted(archs)
    costs = np.array([proxy_gmacs(a) for a in archs])
    acc = 0.05 * np.log(costs) + np.random.default_rng(seed).normal(0, noise, n)
    return pd.DataFrame({"arch": archs, "status": "ok", "map": acc, "cost": costs})


def bench(n: int, children: int, noise: float, seed: int) -> dict[str, float]:
    df = population(n, noise, seed)
    t0 = time.perf_counter()
    ranked = rank_population(df, "cost")
    t1 = time.perf_counter()
    rows = next_generation(ranked, "stage2", 1, children, seed, mutator(SPACE2), set(df["arch"]), cost=cost)
    t2 = time.perf_counter()
    pruned = sum(r["status"] == "pruned" for r in rows)
    return {"n": n, "front": int((ranked["front_rank"] == 0).sum()), "rank_ms": (t1 - t0) * 1e3,
            "generation_ms": (t2 - t1) * 1e3, "pending": len(rows) - pruned, "pruned": pruned,
            "rate": pruned / max(len(rows), 1)}


def proxy_check(k: int = 8, seed: int = 0) -> float:
    """Spearman correlation of the proxy with backbone_gmacs on ``k`` random encodings."""
    rng = random.Random(seed)
    archs = [f"{random_encoding(rng)}{TAIL.format(128)}" for _ in range(k)]
    real = pd.Series([backbone_gmacs(parse_spec(a)) for a in archs])
    return float(real.corr(pd.Series([proxy_gmacs(a) for a in archs]), method="spearman"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--children", type=int, default=50)
    p.add_argument("--noise", type=float, default=0.005, help="sd of the accuracy noise (mAP units)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"stage-two generation of {args.children} children, paper space, basicblock at 800x600; "
          f"accuracy noise sd {args.noise}; proxy vs backbone_gmacs Spearman {proxy_check():.3f}")
    print(f"{'evaluated':>10}{'front':>7}{'rank ms':>10}{'mutate+dedupe+POP ms':>22}{'total ms':>10}"
          f"{'pending':>9}{'pruned':>8}{'pruning rate':>14}")
    for n in args.sizes:
        r = bench(n, args.children, args.noise, args.seed)
        print(f"{r['n']:>10}{r['front']:>7}{r['rank_ms']:>10.1f}{r['generation_ms']:>22.1f}"
              f"{r['rank_ms'] + r['generation_ms']:>10.1f}{r['pending']:>9}{r['pruned']:>8}{r['rate']:>14.1%}")


if __name__ == "__main__":
    main()
