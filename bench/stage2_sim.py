"""Evolution against random search in stage two, on a surrogate of its groups, over many seeds.

    .venv/bin/python bench/stage2_sim.py --runs docs/runs/*/seed2
    .venv/bin/python bench/stage2_sim.py --runs docs/runs/*/seed2 --budgets 4x2 8x2 --noise 0 0.01 0.02

bench/evidence.py compares stage two's evolution with random search on one seed per run, and one
seed's verdict flips between runs (docs/evidence.md section 4). This bench asks how often
evolution should win, and what moves the odds, by running the workflow's own stage-two search code
many times on a surrogate, as bench/search_sim.py does for stage one.

The surrogate is fitted on every stage-two candidate the workflow trained (each
``stage2/C*/gen*/population.parquet`` under ``--runs``, evolution's and random search's, mean
over repeats of an arch): mAP as a ridge least-squares sum of the group's structure (one effect
per structure), the base channels and the FPN channels (one effect per value), the four stage
lengths, the doubling count and the log of the detector's GMACs. Its leave-one-out error, beside
the seed noise, says how much of the variation such a model explains. The cost is not modelled:
it is the workflow's own ``stage2.cost`` (GMACs on the meta device, ``smnas.engine.cost``).

Per trial and group (the structures of ``--groups``, a run's ``stage2/groups.parquet``), the
searches start from the same generation 0 (``initial_generation``: the seed spec and mutations of
it) and run G-1 more generations of P candidates: evolution as the workflow runs it
(``next_generation`` with Partial Order Pruning, 1 edit per child), evolution with up to 3 edits
per child (``stage2.max_ops: 3``), evolution whose children are each, with probability 1/2, a
uniform draw of the group's space instead of a mutation (a mix of local and global moves; not a
workflow option), the same two with ``next_generation``'s screen (``screened``, ``mixed screened``:
``--screen`` children per place, a predictor knowing each child's computed GMACs keeping those
adding most hypervolume), and random search (``random_generation``); ``--searches`` picks them.
Computed costs are kept in ``--cost-cache`` across runs. Each evaluation is the world's mAP
(the surrogate plus an arch-specific term of the leave-one-out error's size beyond the noise,
fixed per world) plus fresh Gaussian seed noise of sd ``--noise``. Hypervolume is computed as
bench/evidence.py does: the union of the groups' populations ranked by (-mAP, GMACs), reference
point (0, 1.1 x the largest GMACs any search of the trial evaluated).

It prints the surrogate's fit, then per noise level and budget the share of trials in which each
evolution's last hypervolume is above random search's (ties: no win; their share is printed for
plain evolution), its cube (the chance of 3 of
3 seeds), and the mean hypervolumes and their mean difference to random search's with a 95%
interval. A surrogate is not the real space; read the shares as what these algorithms do on a
space with this much structure and this much noise.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import random
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evidence import front_hypervolume  # noqa: E402
from search_sim import World  # noqa: E402

from smnas.data.scenes import CLASSES  # noqa: E402
from smnas.engine.cost import search_cost  # noqa: E402
from smnas.engine.device_lock import DeviceLock  # noqa: E402
from smnas.models.encoding import parse_encoding  # noqa: E402
from smnas.models.spec import DetectorSpec, parse_spec  # noqa: E402
from smnas.search.evolution import initial_generation, mutator, next_generation  # noqa: E402
from smnas.search.mutation import mutate_stage2  # noqa: E402
from smnas.search.random_search import random_generation, random_stage2  # noqa: E402
from smnas.search.space import StageTwoSpace  # noqa: E402
from smnas.search.tables import rank_population  # noqa: E402
from smnas.workflow.config import detector_options, search_space  # noqa: E402
from smnas.io import atomic_write_json  # noqa: E402

SEARCHES = ("evolution", "max_ops 3", "mixed", "screened", "mixed screened", "random")


def load_evaluated(runs: list[Path]) -> pd.DataFrame:
    """Every ok stage-two candidate under ``runs`` (mean over repeats of the same arch, with the count)."""
    frames = []
    for run in runs:
        for path in run.glob("**/stage2/C*/gen*/population.parquet"):
            df = pd.read_parquet(path)
            frames.append(df[df["status"] == "ok"][["arch", "map"]])
    if not frames:
        raise SystemExit(f"no stage2/C*/gen*/population.parquet under {', '.join(map(str, runs))}")
    df = pd.concat(frames).drop_duplicates()  # a generation's table repeats the earlier ones' rows
    df = df[np.isfinite(df["map"])]
    return df.groupby("arch").agg(map=("map", "mean"), repeats=("map", "size"), sd=("map", "std")).reset_index()


def structure_key(spec: DetectorSpec) -> str:
    """What stage two keeps of a spec: everything but the backbone and the FPN's channels."""
    return re.sub(r":c\d+", "", str(spec).split("+", 1)[1])


class Stage2Surrogate:
    """mAP from a stage-two spec's features (ridge least squares); ``predict`` returns (mAP, GMACs)
    so that :class:`search_sim.World` can add its interaction and noise terms to it."""

    NUMERIC = ("stage1", "stage2", "stage3", "stage4", "doublings", "log_gmacs")

    def __init__(self, archs: list[str], maps: np.ndarray, cost, ridge: float = 1e-2) -> None:
        self.cost, self.ridge = cost, ridge
        feats = [self._features(a) for a in archs]
        self.columns = sorted({k for f in feats for k in f if k not in self.NUMERIC})
        raw = np.array([[f[k] for k in self.NUMERIC] for f in feats])
        self.mean, self.scale = raw.mean(0), raw.std(0) + 1e-9
        X = self._matrix(feats)
        self.w = self._solve(X, maps)
        resid = []
        for i in range(len(archs)):
            keep = np.arange(len(archs)) != i
            resid.append(maps[i] - X[i] @ self._solve(X[keep], maps[keep]))
        self.loo = float(np.sqrt(np.mean(np.square(resid))))
        self.resid_sd = float(np.std(maps - X @ self.w))

    def _features(self, arch: str) -> dict[str, float]:
        spec = parse_spec(arch)
        enc = parse_encoding(spec.backbone.name)
        lengths = [len(s) for s in enc.stages]
        return {f"group={structure_key(spec)}": 1.0, f"base={enc.base_channels}": 1.0, f"fpn={spec.neck.channels}": 1.0,
                **{f"stage{i + 1}": float(n) for i, n in enumerate(lengths)},
                "doublings": float(sum(s.count("2") for s in enc.stages)),
                "log_gmacs": float(np.log(self.cost(spec)))}

    def _matrix(self, feats: list[dict[str, float]]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.columns)}
        X = np.zeros((len(feats), 1 + len(self.columns) + len(self.NUMERIC)))
        X[:, 0] = 1.0
        for r, f in enumerate(feats):
            for k, v in f.items():
                if k in index:
                    X[r, 1 + index[k]] = v
            X[r, 1 + len(self.columns):] = (np.array([f[k] for k in self.NUMERIC]) - self.mean) / self.scale
        return X

    def _solve(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        penalty = self.ridge * np.eye(X.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        return np.linalg.solve(X.T @ X + penalty, X.T @ y)

    def predict(self, archs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        feats = [self._features(a) for a in archs]
        return self._matrix(feats) @ self.w, np.array([np.exp(f["log_gmacs"]) for f in feats])


def mixed_mutator(space2: StageTwoSpace, p: float = 0.5):
    """A child is, with probability ``p``, a uniform draw of the parent's group (random_stage2),
    else one edit of the parent (the workflow's mutation)."""
    def mutate(spec: DetectorSpec, rng: random.Random) -> DetectorSpec:
        if rng.random() < p:
            return random_stage2(spec, space2, rng)
        return mutate_stage2(spec, space2, rng)
    return mutate


def _evaluate(rows: list[dict], world: World) -> pd.DataFrame:
    pending = [r["arch"] for r in rows if r["status"] == "pending"]
    pruned = [r["arch"] for r in rows if r["status"] == "pruned"]
    m, gmacs = world.evaluate(pending) if pending else (np.zeros(0), np.zeros(0))
    return pd.concat([pd.DataFrame({"arch": pending, "status": "ok", "map": m, "gmacs": gmacs}),
                      pd.DataFrame({"arch": pruned, "status": "pruned", "map": np.nan, "gmacs": np.nan})],
                     ignore_index=True)


def _hv(pops: list[pd.DataFrame], bound: float) -> float:
    """bench/evidence.py's hypervolume of the union of the groups' populations."""
    return front_hypervolume(pd.concat(pops, ignore_index=True), "gmacs", bound)[1]


def trial(seed: int, generations: int, population: int, structures: list[DetectorSpec], space2: StageTwoSpace,
          sur: Stage2Surrogate, interaction: float, noise: float, cost, gen0: str = "workflow",
          searches: tuple[str, ...] = SEARCHES, screen: int = 6) -> dict[str, float]:
    """The searches (random search always among them) of every group for one seed in one world:
    their last hypervolumes."""
    world = World(sur, interaction, noise, np.random.default_rng(seed))
    mutate = {"evolution": mutator(space2), "max_ops 3": mutator(space2, 3), "mixed": mixed_mutator(space2),
              "screened": mutator(space2), "mixed screened": mixed_mutator(space2)}
    pops: dict[str, list[pd.DataFrame]] = {name: [] for name in searches}
    for k, structure in enumerate(structures):
        key = f"stage2/C{k}"
        if gen0 == "uniform":  # the seed spec, then uniform draws of the group
            rows = initial_generation(key, 1, seed, structures=[structure], space2=space2, cost=cost)
            rows += random_generation(key, 0, population - 1, seed, space2=space2, structure=structure,
                                      evaluated={r["arch"] for r in rows})
        else:
            rows = initial_generation(key, population, seed, structures=[structure], space2=space2, cost=cost)
        first = _evaluate(rows, world)
        for name in searches:
            pop = first
            for g in range(1, generations):
                seen = set(pop["arch"])
                if name == "random":
                    rows = random_generation(key, g, population, seed, space2=space2, structure=structure, evaluated=seen)
                else:
                    rows = next_generation(rank_population(pop, "gmacs"), key, g, population, seed, mutate[name],
                                           seen, cost=cost, screen=screen if name.endswith("screened") else 1,
                                           screen_cost="gmacs")
                pop = pd.concat([pop, _evaluate(rows, world)], ignore_index=True)
            pops[name].append(pop)
    bound = 1.1 * max(float(p["gmacs"].max()) for ps in pops.values() for p in ps)
    return {name: _hv(ps, bound) for name, ps in pops.items()}


class CachedCost:
    """The workflow's cost function with a memory that outlives the worker processes: the
    meta-device MAC count (0.2 s per new architecture) dominates a trial, and trials revisit
    the architectures near each group's seed. ``new`` holds what this process computed."""

    def __init__(self, cost, known: dict[str, float]) -> None:
        self.cost, self.known, self.new = cost, dict(known), {}

    def __call__(self, spec: DetectorSpec) -> float:
        arch = str(spec)
        if arch not in self.known:
            self.known[arch] = self.new[arch] = float(self.cost(spec))
        return self.known[arch]


_CONTEXT: dict = {}  # set before the pool forks: the workers inherit it (the cost function is not picklable)


def _one_trial(job: tuple[int, int, int, float]) -> tuple[dict[str, float], dict[str, float]]:
    seed, g, n, noise = job
    c = _CONTEXT
    cost = c["cost"]
    cost.new = {}
    with DeviceLock("cpu").shared():  # a workflow timing beside this bench waits for the trial
        res = trial(seed, g, n, c["structures"], c["space2"], c["sur"], c["interaction"], noise, cost, c["gen0"],
                    c["searches"], c["screen"])
    return res, cost.new


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="workflow folders to fit the surrogate on")
    p.add_argument("--groups", type=Path, default=REPO / "docs/runs/s19-seed2-intel/seed2/results/stage2/groups.parquet",
                   help="a run's stage2/groups.parquet: the structures searched (default: docs/runs/s19-seed2-intel's three)")
    p.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml",
                   help="its stage2.space, stage2.cost and detector block")
    p.add_argument("--budgets", nargs="+", default=["4x2"],
                   help="GENERATIONSxPOPULATION per group (default 4x2, bench/evidence.py's; the main job's is 2x2)")
    p.add_argument("--trials", type=int, default=200, help="seeds per budget and noise level")
    p.add_argument("--noise", type=float, nargs="+", default=[0.02],
                   help="seed-to-seed sd of one candidate's mAP (docs/evidence.md section 6: 0.020 at 6 epochs)")
    p.add_argument("--interaction", type=float, default=None,
                   help="sd of the arch-specific term per world (default: the leave-one-out error beyond 0.02)")
    p.add_argument("--gen0", choices=["workflow", "uniform"], default="workflow",
                   help="generation 0 of each group, shared by the searches: the workflow's (the seed spec and "
                        "mutations of it) or the seed spec and uniform draws of the group (not a workflow option)")
    p.add_argument("--searches", nargs="+", choices=SEARCHES[:-1], default=list(SEARCHES[:-1]),
                   help="the searches run beside random search (default: all)")
    p.add_argument("--screen", type=int, default=6,
                   help="children made per child trained by the screened searches (next_generation's screen; not a "
                        "stage2 config key: it did not beat plain evolution here)")
    p.add_argument("--cost-cache", type=Path, default=Path("/tmp/stage2_sim_costs.json"),
                   help="JSON file of computed costs by arch, read and extended (a function of the config's "
                        "detector block and stage2.cost; delete it when they change)")
    p.add_argument("--jobs", type=int, default=2, help="trials run at once (default 2: this machine's cores)")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # next_generation warns when a group's space runs dry

    cfg = yaml.safe_load(args.config.read_text())
    space2 = search_space("stage2", cfg["stage2"]["space"])
    known = json.loads(args.cost_cache.read_text()) if args.cost_cache.exists() else {}
    cost = CachedCost(search_cost(cfg["stage2"]["cost"], detector_options(cfg, len(CLASSES))), known)
    data = load_evaluated(args.runs)
    sur = Stage2Surrogate(data["arch"].tolist(), data["map"].to_numpy(float), cost)
    repeated = data[data["repeats"] > 1]
    print(f"surrogate: {len(data)} trained stage-two candidates ({len(repeated)} trained more than once, "
          f"sd between repeats {np.sqrt(np.mean(np.square(repeated['sd']))):.4f}), {len(sur.columns)} structure/width "
          f"effects + {len(sur.NUMERIC)} numeric; residual sd {sur.resid_sd:.4f}, leave-one-out {sur.loo:.4f}; "
          f"mAP {data['map'].min():.3f}-{data['map'].max():.3f}")
    effects = sur.w[1 + len(sur.columns):]
    print("  numeric effects (mAP per sd of the feature): "
          + ", ".join(f"{k} {w:+.4f}" for k, w in zip(sur.NUMERIC, effects)))
    interaction = args.interaction if args.interaction is not None else float(np.sqrt(max(sur.loo ** 2 - 0.02 ** 2, 0.0)))
    structures = [parse_spec(s) for s in pd.read_parquet(args.groups)["structure"]]
    print(f"groups: {', '.join(map(str, structures))}")
    print(f"worlds: surrogate + an arch-specific term of sd {interaction:.4f} + seed noise; "
          f"'mixed': each child a uniform draw of its group with probability 1/2; "
          f"'screened': {args.screen} children per place, the predictor keeping those adding most hypervolume")
    searches = tuple(n for n in SEARCHES if n in args.searches) + ("random",)
    head = "".join(f"{n + ' wins':>{max(17, len(n) + 7)}}" for n in searches[:-1])
    print(f"\n{'noise':>6}{'budget':>8}{'trials':>7}{head}{'ties':>6}{'3 of 3 (first)':>16}  "
          + "  ".join(f"HV {n}" for n in searches) + "  (difference to random, 95% interval)")
    _CONTEXT.update(structures=structures, space2=space2, sur=sur, interaction=interaction, cost=cost, gen0=args.gen0,
                    searches=searches, screen=args.screen)
    for noise in args.noise:
        for budget in args.budgets:
            g, n = (int(x) for x in budget.lower().split("x"))
            jobs = [(s, g, n, noise) for s in range(args.trials)]
            with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
                out = pool.map(_one_trial, jobs, chunksize=1)
            df = pd.DataFrame([res for res, _ in out])
            for _, new in out:
                cost.known.update(new)
            atomic_write_json(args.cost_cache, cost.known)
            wins = [float(np.mean(df[name] > df["random"])) for name in searches[:-1]]
            diffs = []
            for name in searches[:-1]:
                d = df[name] - df["random"]
                diffs.append(f"{d.mean():+.4f} ({d.mean() - 1.96 * d.sem():+.4f}, {d.mean() + 1.96 * d.sem():+.4f})")
            print(f"{noise:>6.3f}{budget:>8}{args.trials:>7}" + "".join(f"{w:>{max(17, len(n) + 7)}.2f}" for n, w in zip(searches, wins))
                  + f"{np.mean(df[searches[0]] == df['random']):>6.2f}{wins[0] ** 3:>16.2f}  "
                  + "  ".join(f"{df[name].mean():.4f}" for name in searches)
                  + "  " + "; ".join(diffs), flush=True)


if __name__ == "__main__":
    main()
