"""Stage two's first generation: structures picked along the stage-one front, their backbones
as encodings of the same block family inside the stage-two bounds.

Each picked structure keeps its neck levels, RPN, head and input size; its backbone becomes an
encoding of the same family (depth, width and doubling positions are then searched) and its FPN
channel count the nearest choice of the space (SM-NAS, Yao et al., AAAI 2020, Sec. 3.2).

    structures = pick_structures(stage1_table, space2.structures)
    seeds = [seed_spec(s, space2) for s in structures]
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd

from smnas.errors import SmnasError, SpecError
from smnas.models.encoding import Encoding, EncodingBounds, check_encoding, parse_encoding
from smnas.models.registry import named_encoding
from smnas.models.spec import BackboneSpec, DetectorSpec, parse_spec
from smnas.search.pareto import FRONT_PICKS, hypervolume_picks, spread_picks
from smnas.search.space import StageTwoSpace


def pick_structures(front_df: pd.DataFrame, k: int, cost: str = "latency_ms", how: str = "spread") -> list[DetectorSpec]:
    """``k`` distinct structures from the stage-one front, cheapest to dearest.

    ``how="spread"`` takes them at evenly spaced positions of the front sorted by cost, its two
    ends included (the paper's C0..C5 span its front). ``how="hypervolume"`` adds, one at a
    time, the member that adds most hypervolume to those taken (objectives -mAP and cost divided
    by 1.1 x the front's largest, reference point (0, 1), as bench/evidence.py scores a search):
    an end of the front that buys little cost for much mAP is then left out (docs/evidence.md
    section 3, ``docs/runs/s18-seed2-channels-last``).

    Args:
        front_df: a ranked stage-one table (columns arch, ``cost``, and map for ``hypervolume``;
            front_rank and status are used when present: only ``ok`` rows, front 0 first). When
            the front has fewer than ``k`` members, the next fronts fill in, best rank then
            cheapest first.
        k: how many structures (the paper took 6).
        cost: the cost column to sort by.
        how: ``"spread"`` or ``"hypervolume"``.

    Returns:
        Up to ``k`` specs, sorted by cost (fewer only if the table has fewer distinct archs).

    Raises:
        SmnasError: a column is missing, or no row is ok and ranked.
    """
    if how not in FRONT_PICKS:
        raise SmnasError(f"pick_structures: how must be 'spread' or 'hypervolume', got {how!r}")
    for col in ("arch", cost) + (("map",) if how == "hypervolume" else ()):
        if col not in front_df:
            raise SmnasError(f"stage-one table has no column {col!r} (columns: {list(front_df.columns)})")
    df = front_df
    if "status" in df:
        df = df[df["status"] == "ok"]
    if "front_rank" in df:
        df = df[df["front_rank"] >= 0]
    rank = df["front_rank"] if "front_rank" in df else pd.Series(0, index=df.index)
    df = df.assign(_rank=rank).sort_values(["_rank", cost, "arch"]).drop_duplicates("arch")
    if df.empty:
        raise SmnasError("stage-one table has no evaluated (status ok, ranked) structure to take into stage two")
    front = df[df["_rank"] == df["_rank"].min()]
    if len(front) < k:
        chosen = df.head(k)
    elif how == "hypervolume":
        chosen = front.iloc[hypervolume_picks(front["map"].to_numpy(float), front[cost].to_numpy(float), k)]
    else:
        chosen = front.iloc[spread_picks(len(front), k)]
    return [parse_spec(a) for a in chosen.sort_values([cost, "arch"])["arch"]]


def family_encoding(backbone: BackboneSpec) -> Encoding:
    """The encoding a backbone stands for: a named one's block layout at its scaled width."""
    if backbone.is_encoding:
        return parse_encoding(backbone.name)
    return named_encoding(backbone.name, backbone.width)


def clip_encoding(enc: Encoding, bounds: EncodingBounds) -> Encoding:
    """The nearest base channels allowed; stages trimmed or padded with ``1`` blocks into bounds.

    Trimming removes ``1`` blocks from the end of the longest stage (doublings are kept);
    padding appends ``1`` blocks to the shortest; doublings are then added at stage starts or
    removed from the end until their count is allowed.
    """
    if len(enc.stages) != bounds.num_stages:
        raise SpecError(f"{enc}: {len(enc.stages)} stages, the stage-two bounds need {bounds.num_stages}")
    base = min(bounds.base_channels, key=lambda c: (abs(c - enc.base_channels), c))
    stages = [list(s) for s in enc.stages]
    for s in stages:
        while len(s) > bounds.max_stage_blocks:
            _drop_last_one(s)
        while len(s) < bounds.min_stage_blocks:
            s.append("1")
    while sum(map(len, stages)) > bounds.max_blocks:
        _drop_last_one(max((s for s in stages if len(s) > bounds.min_stage_blocks), key=len))
    while sum(map(len, stages)) < bounds.min_blocks:
        min((s for s in stages if len(s) < bounds.max_stage_blocks), key=len).append("1")
    flat_positions = [(i, j) for i, s in enumerate(stages) for j in range(len(s))]
    starts = [(i, 0) for i in range(1, len(stages))] + [(0, 0)] + flat_positions
    while sum(s.count("2") for s in stages) < bounds.min_doublings:
        i, j = next((i, j) for i, j in starts if stages[i][j] == "1")
        stages[i][j] = "2"
    while bounds.max_doublings is not None and sum(s.count("2") for s in stages) > bounds.max_doublings:
        i, j = next((i, j) for i, j in reversed(flat_positions) if stages[i][j] == "2")
        stages[i][j] = "1"
    return check_encoding(Encoding(enc.block, base, tuple("".join(s) for s in stages)), bounds)


def _drop_last_one(stage: list[str]) -> None:
    """Remove the last ``1`` block of a stage (its last block if all double)."""
    if "1" in stage:
        del stage[len(stage) - 1 - stage[::-1].index("1")]
    else:
        stage.pop()


def seed_spec(structure: DetectorSpec, space2: StageTwoSpace) -> DetectorSpec:
    """``structure`` with its backbone as an encoding of its family inside ``space2``.

    The named backbone's block layout, base channels the allowed value nearest to its scaled
    base, stages clipped into the bounds (:func:`clip_encoding`); FPN channels the allowed
    value nearest to the structure's; norm ``space2.norm``. Neck levels, RPN, head and input
    size are kept.
    """
    enc = clip_encoding(family_encoding(structure.backbone), space2.bounds)
    neck = structure.neck
    if neck.kind == "fpn":
        channels = min(space2.fpn_channels, key=lambda c: (abs(c - neck.channels), c))
        neck = replace(neck, channels=channels)
    return replace(structure, backbone=BackboneSpec(str(enc)), neck=neck, norm=space2.norm).validate()


def stage2_groups(front_df: pd.DataFrame, space2: StageTwoSpace, cost: str = "latency_ms") -> pd.DataFrame:
    """The stage-two groups: structures picked along the stage-one front (``space2.pick``), one
    search each.

    The paper takes six structures C0..C5 from the stage-one front and searches each as its own
    group, with its own population, front and pruning. Structures whose seeds coincide (they
    differ only in what stage two replaces) make one group.

    Args:
        front_df: the ranked stage-one table (see :func:`pick_structures`).
        space2: the stage-two space (``structures`` says how many groups at most).
        cost: the stage-one cost column.

    Returns:
        Columns group (``C0``, ``C1``, ... cheapest first), structure (the stage-one arch) and
        seed (its stage-two seed spec).
    """
    rows: list[dict[str, str]] = []
    for structure in pick_structures(front_df, space2.structures, cost, space2.pick):
        seed = str(seed_spec(structure, space2))
        if seed not in {r["seed"] for r in rows}:
            rows.append({"group": f"C{len(rows)}", "structure": str(structure), "seed": seed})
    return pd.DataFrame(rows, columns=["group", "structure", "seed"])
