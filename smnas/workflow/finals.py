"""Which architectures the final and transfer targets train.

``front{i}`` are ``k`` models of the stage-two front, most accurate first: spread along it by
cost (``front0`` the most accurate, ``front{k-1}`` the cheapest, evenly between), as the paper's
E0..E5 span its front from fastest to most accurate, or (config ``final.pick: hypervolume``) the
``k`` that add most hypervolume; ``E0``..``E5`` are the paper's own models. All switch GN+WS back
to BatchNorm for speed (SM-NAS, Yao et al., AAAI 2020, Sec. 4).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from smnas.errors import SmnasError
from smnas.models.spec import DetectorSpec, parse_spec
from smnas.search.pareto import FRONT_PICKS, hypervolume_picks, spread_picks


def evaluated_front(front: pd.DataFrame, cost: str) -> pd.DataFrame:
    """The front's distinct evaluated models (finite map and ``cost``), dearest first: what
    :func:`front_picks` picks from."""
    for col in ("arch", "map", cost):
        if col not in front:
            raise SmnasError(f"front table has no column {col!r} (columns: {list(front.columns)})")
    ok = front[np.isfinite(front["map"].to_numpy(float)) & np.isfinite(front[cost].to_numpy(float))]
    return ok.drop_duplicates("arch").sort_values([cost, "map", "arch"], ascending=[False, False, True])


def front_picks(front: pd.DataFrame, k: int, cost: str, how: str = "spread") -> list[str]:
    """``k`` archs of a front, most accurate (dearest) first.

    Args:
        front: the front's rows (columns arch, map, ``cost``); rows that failed are skipped.
        k: how many picks (at most the front's size).
        cost: the cost column the front was ranked by.
        how: ``"spread"``: with the front sorted by cost, the picks sit at evenly spaced
            positions from its dearest (the most accurate on a front) to its cheapest member.
            ``"hypervolume"``: the ``k`` members that add most hypervolume, taken one at a time
            (:func:`smnas.search.pareto.hypervolume_picks`): an end of the front that saves
            little cost for much mAP, such as a weak RetinaNet, is left out
            (docs/evidence.md section 3).

    Returns:
        Distinct archs, dearest first.
    """
    if how not in FRONT_PICKS:
        raise SmnasError(f"final models: pick must be one of {', '.join(FRONT_PICKS)}, got {how!r}")
    ok = evaluated_front(front, cost)
    if k > len(ok):
        raise SmnasError(f"final models: {k} picks asked from a front of {len(ok)} evaluated models")
    if how == "hypervolume":
        idx = np.sort(hypervolume_picks(ok["map"].to_numpy(float), ok[cost].to_numpy(float), k))
    else:
        idx = spread_picks(len(ok), k)
    return ok["arch"].iloc[idx].tolist()


def final_arch(name: str, front: pd.DataFrame | None, picks: int, cost: str,
               paper_input_size: tuple[int, int] | None = None, how: str = "spread") -> DetectorSpec:
    """The architecture of final model ``name``, in BatchNorm.

    Args:
        name: ``front{i}`` (i < ``picks``) or a paper model ``E0``..``E5``.
        front: the stage-two front (needed for ``front{i}``).
        picks: how many models the final target takes from the front (config final.from_front).
        cost: the stage-two cost column.
        paper_input_size: a laptop override of the paper models' input size (width, height).
        how: how the front's picks are made (config final.pick, :func:`front_picks`).
    """
    from smnas.models.paper import PAPER_MODELS

    if name.startswith("front"):
        i = int(name[len("front"):])
        if front is None or i >= picks:
            raise SmnasError(f"final model {name}: needs the stage-two front and i < final.from_front ({picks})")
        spec = parse_spec(front_picks(front, picks, cost, how)[i])
    else:
        spec = parse_spec(PAPER_MODELS[name])
        if paper_input_size:
            spec = DetectorSpec(spec.backbone, spec.neck, spec.rpn, spec.head, tuple(paper_input_size), spec.norm)
    return spec.with_norm("bn")
