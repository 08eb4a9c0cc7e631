"""Evolution against random search on a surrogate of stage one, over many seeds and budgets.

    .venv/bin/python bench/search_sim.py --runs /tmp/evidence/seed*/results /tmp/mainjob/results
    .venv/bin/python bench/search_sim.py --runs ... --budgets 3x3 5x3 10x3 --trials 300 --noise 0.015

A real stage-one search trains each candidate for a minute, so bench/evidence.py can afford three
seeds of nine candidates: too few to tell whether a loss to random search on one seed is bad luck
or a bad algorithm. This bench asks the question many times over, cheaply. It fits a surrogate of
the stage-one space on candidates the workflow really trained (every ``stage1/gen*/
population.parquet`` under ``--runs``, same recipe and data): mAP as a sum of one effect per module
choice (backbone, neck, RPN, head, input size; ridge least squares), and the log of latency
likewise (the screen's :class:`~smnas.search.predictor.AdditivePredictor`, nearly unshrunk). Then,
per trial, the workflow's own search code (``initial_generation``, ``next_generation`` with
``mutator``, ``random_generation``, ``rank_population``) runs four searches for a budget of G
generations x P candidates, generation 0 shared as in the workflow: evolution, evolution with the
predictor's screen (``--screen`` children per place) predicting each child's latency
("screened"), the same screen given each child's latency timed untrained, as the workflow's
``stage1.screen`` does ("timed": the world's latency times a timing error, ``--timing-sd``), and
random search. Each evaluation is the world's mAP plus Gaussian seed noise (``--noise``: the seed-to-seed
sd of one candidate, bench/search_signal.py), and the hypervolume of each search's front is
compared as bench/evidence.py does (reference point (0, 1.1 x the largest latency in the space,
widened by two sd of the latency term)).

It prints the surrogate's fit (leave-one-out error against the seed noise), then per budget and
search the share of trials in which its last hypervolume is above random search's, the chance of
a 3-of-3 win (share cubed) and the mean hypervolume, and how often each screen beats the search
before it. Each trial is its own world: the additive effects plus an arch-specific term drawn
once per arch (sd: the leave-one-out error left after the seed noise, or ``--interaction``), and
the log latency likewise (sd: its leave-one-out error, or ``--latency-interaction``), so a world
has interactions of the size the data shows, which the screen's additive predictor cannot see. A
surrogate is not the real space: its interactions are random, not the real ones, so read the win
rates as what the algorithms do on a space with this much structure and this much noise, not as a
promise for the real one. Each trial holds smnas's device lock shared, so a workflow
timing candidates beside this bench measures alone.
"""
from __future__ import annotations

import argparse
import logging
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smnas.engine.device_lock import DeviceLock  # noqa: E402
from smnas.search.evolution import initial_generation, mutator, next_generation  # noqa: E402
from smnas.search.pareto import hypervolume  # noqa: E402
from smnas.search.predictor import AdditivePredictor  # noqa: E402
from smnas.search.random_search import random_generation  # noqa: E402
from smnas.search.tables import rank_population  # noqa: E402
from smnas.workflow.config import search_space  # noqa: E402


def load_evaluated(runs: list[Path]) -> pd.DataFrame:
    """Every ok stage-one candidate under ``runs`` (mean over repeats of the same arch)."""
    frames = []
    for run in runs:
        for path in run.glob("**/stage1/gen*/population.parquet"):
            df = pd.read_parquet(path)
            frames.append(df[df["status"] == "ok"][["arch", "map", "latency_ms"]])
    if not frames:
        raise SystemExit(f"no stage1/gen*/population.parquet under {', '.join(map(str, runs))}")
    df = pd.concat(frames).groupby("arch", as_index=False).mean()
    return df[np.isfinite(df["map"]) & np.isfinite(df["latency_ms"])]


class Surrogate:
    """The additive predictor of the screen (:class:`AdditivePredictor`), nearly unshrunk, fitted on
    every trained candidate: mAP and log latency from the module choices."""

    def __init__(self, archs: list[str], maps: np.ndarray, latency: np.ndarray, ridge: float = 1e-3) -> None:
        self.model = AdditivePredictor(ridge).fit(archs, maps, latency)
        self.columns = self.model.columns
        loo_map, loo_lat = [], []
        for i in range(len(archs)):
            m, lat = AdditivePredictor(ridge).fit(np.delete(archs, i), np.delete(maps, i),
                                                  np.delete(latency, i)).predict([archs[i]])
            loo_map.append(maps[i] - m[0])
            loo_lat.append(np.log(latency[i]) - np.log(lat[0]))
        self.loo = float(np.sqrt(np.mean(np.square(loo_map))))  # mAP
        self.loo_lat = float(np.sqrt(np.mean(np.square(loo_lat))))  # log latency

    def predict(self, archs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.model.predict(archs)


class World:
    """One trial's space: the surrogate plus fixed, arch-specific interaction terms (what the
    additive effects miss: for mAP its sd is the leave-one-out error beyond the seed noise, for log
    latency the leave-one-out error), then seed noise on mAP drawn anew at every evaluation. An
    arch's terms depend on the trial's seed and the arch only, so every search meets the same
    world whatever the others evaluated."""

    def __init__(self, sur: Surrogate, interaction: float, noise: float, seed: int,
                 latency_interaction: float = 0.0) -> None:
        self.sur, self.interaction, self.noise, self.seed = sur, interaction, noise, seed
        self.latency_interaction = latency_interaction
        self.offset: dict[str, tuple[float, float]] = {}

    def _offset(self, arch: str) -> tuple[float, float]:
        if arch not in self.offset:
            rng = np.random.default_rng([self.seed, zlib.crc32(arch.encode())])
            self.offset[arch] = (float(rng.normal(0.0, self.interaction)),
                                 float(rng.normal(0.0, self.latency_interaction)))
        return self.offset[arch]

    def evaluate(self, archs: list[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One noisy evaluation of each arch, seed noise from ``rng``: (mAP, latency in ms)."""
        m, lat = self.sur.predict(archs)
        true = np.clip(m + np.array([self._offset(a)[0] for a in archs]), 0.0, None)
        lat = lat * np.exp([self._offset(a)[1] for a in archs])
        return np.clip(true + rng.normal(0.0, self.noise, len(archs)), 0.0, None), lat


def _evaluate(rows: list[dict], world: World, rng: np.random.Generator) -> pd.DataFrame:
    archs = [r["arch"] for r in rows if r["status"] == "pending"]
    m, lat = world.evaluate(archs, rng)
    return pd.DataFrame({"arch": archs, "status": "ok", "map": m, "latency_ms": lat})


def _hv(pop: pd.DataFrame, bound: float) -> float:
    ranked = rank_population(pop, "latency_ms")
    front = ranked[ranked["front_rank"] == 0]
    F = np.column_stack([-front["map"].to_numpy(float), front["latency_ms"].to_numpy(float) / bound])
    return hypervolume(F, [0.0, 1.0])


SEARCHES = ("evolution", "screened", "timed", "random")


def trial(seed: int, generations: int, population: int, space, sur: Surrogate, interaction: float,
          noise: float, bound: float, screen: int, latency_interaction: float = 0.0,
          timing_sd: float = 0.1) -> dict[str, float]:
    """The four searches (:data:`SEARCHES`) for one seed in one world; their last hypervolumes.
    "screened" predicts its children's latency, "timed" times them untrained first: the world's
    latency times a timing error of sd ``timing_sd`` in log space. Each search draws its seed noise
    from its own generator, so adding a search changes no other's figures."""
    world = World(sur, interaction, noise, seed, latency_interaction)
    gen0 = _evaluate(initial_generation("stage1", population, seed, space1=space), world,
                     np.random.default_rng([seed, len(SEARCHES)]))
    pops = dict.fromkeys(SEARCHES, gen0)
    rngs = {name: np.random.default_rng([seed, i]) for i, name in enumerate(SEARCHES)}
    timing = np.random.default_rng([seed, len(SEARCHES) + 1])

    def timed(spec) -> float:  # an untrained child timed once
        return float(world.evaluate([str(spec)], timing)[1][0] * np.exp(timing.normal(0.0, timing_sd)))

    for g in range(1, generations):
        for name in SEARCHES:
            pop = rank_population(pops[name], "latency_ms")
            seen = set(pop["arch"])
            if name == "random":
                rows = random_generation("stage1", g, population, seed, space1=space, evaluated=seen)
            else:
                rows = next_generation(pop, "stage1", g, population, seed, mutator(space), seen,
                                       screen=1 if name == "evolution" else screen,
                                       measure=timed if name == "timed" else None)
            pops[name] = pd.concat([pops[name], _evaluate(rows, world, rngs[name])], ignore_index=True)
    return {name: _hv(pops[name], bound) for name in SEARCHES}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="workflow folders to fit the surrogate on")
    p.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml", help="its stage1.space")
    p.add_argument("--budgets", nargs="+", default=["3x3", "5x3", "10x3", "20x3"],
                   help="GENERATIONSxPOPULATION (default 3x3 5x3 10x3 20x3; the main job is 2x3)")
    p.add_argument("--trials", type=int, default=200, help="seeds per budget")
    p.add_argument("--noise", type=float, default=0.015,
                   help="seed-to-seed sd of one candidate's mAP (bench/search_signal.py: 0.012-0.020)")
    p.add_argument("--interaction", type=float, default=None,
                   help="sd of the arch-specific term per world (default: the surrogate's leave-one-out "
                        "error beyond --noise; 0: a purely additive space)")
    p.add_argument("--latency-interaction", type=float, default=None,
                   help="sd of the arch-specific term of log latency (default: the surrogate's leave-one-out "
                        "error of log latency; 0: latency purely additive in log space)")
    p.add_argument("--screen", type=int, default=None,
                   help="children per place for the screened evolution (default: the config's stage1.screen, "
                        "or 6 where it has none or 1)")
    p.add_argument("--timing-sd", type=float, default=0.1,
                   help="error of one untrained timing of a child, sd of log(untrained / trained latency) "
                        "(bench/latency_noise.py --untrained: 0.10)")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # next_generation warns when a tiny space runs dry

    stage1 = yaml.safe_load(args.config.read_text())["stage1"]
    space = search_space("stage1", stage1["space"])
    screen = args.screen or (stage1.get("screen", 1) if stage1.get("screen", 1) > 1 else 6)
    data = load_evaluated(args.runs)
    sur = Surrogate(data["arch"].tolist(), data["map"].to_numpy(float), data["latency_ms"].to_numpy(float))
    every = [str(s) for s in space]
    m_all, lat_all = sur.predict(every)
    bound = 1.1 * float(lat_all.max())
    print(f"surrogate: {len(data)} trained stage-one candidates, {len(sur.columns)} module effects; "
          f"leave-one-out mAP error {sur.loo:.4f} (seed noise {args.noise}); mAP over the space "
          f"{m_all.min():.3f}-{m_all.max():.3f}, latency {lat_all.min():.1f}-{lat_all.max():.1f} ms, "
          f"{len(every)} architectures")
    interaction = args.interaction if args.interaction is not None else float(np.sqrt(max(sur.loo ** 2 - args.noise ** 2, 0.0)))
    lat_sd = args.latency_interaction if args.latency_interaction is not None else sur.loo_lat
    bound *= float(np.exp(2 * lat_sd))  # nearly every world's latencies inside the reference point
    print(f"worlds: additive effects + an arch-specific term of sd {interaction:.4f}, + seed noise of sd {args.noise}; "
          f"log latency additive + an arch-specific term of sd {lat_sd:.3f} (leave-one-out {sur.loo_lat:.3f})")
    top = np.argsort(-m_all)[:3]
    for i in top:
        print(f"  predicted best: {every[i]}  mAP {m_all[i]:.3f} at {lat_all[i]:.1f} ms")
    print(f"\nper budget and search: the share of trials whose last hypervolume is above random search's "
          f"(wins), a 3-of-3 win (share cubed), the mean last hypervolume; screened: {screen} children per "
          f"place, their latency predicted; timed: the same children timed untrained (timing error sd "
          f"{args.timing_sd} in log space)")
    print(f"{'budget':>8}{'trials':>8}{'search':>11}{'wins':>7}{'3 of 3':>8}{'mean HV':>9}")
    lock = DeviceLock("cpu")
    for budget in args.budgets:
        g, n = (int(x) for x in budget.lower().split("x"))
        res = []
        for s in range(args.trials):
            with lock.shared():  # a workflow timing beside this bench waits for the trial, not the other way
                res.append(trial(s, g, n, space, sur, interaction, args.noise, bound, screen, lat_sd, args.timing_sd))
        hv = pd.DataFrame(res)
        for name in SEARCHES:
            win = float(np.mean(hv[name] > hv["random"]))
            print(f"{budget:>8}{args.trials:>8}{name:>11}" + (f"{win:>7.2f}{win ** 3:>8.2f}" if name != "random" else " " * 15)
                  + f"{hv[name].mean():>9.4f}")
        print(f"{'':>16}screened above evolution {np.mean(hv['screened'] > hv['evolution']):.2f}, timed above "
              f"screened {np.mean(hv['timed'] > hv['screened']):.2f}", flush=True)


if __name__ == "__main__":
    main()
