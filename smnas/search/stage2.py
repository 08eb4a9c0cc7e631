"""Stage two: search the inside of structures picked from the stage-one front.

Each picked structure keeps its neck levels, RPN, head and input size; its backbone becomes an
encoding of the same block family (depth, width and doubling positions are searched) and its FPN
channel count becomes a choice of the space. The cost objective is the backbone's MACs.

    space2 = StageTwoSpace.paper()
    structures = pick_structures(stage1_table, space2.structures)
    seeds = [seed_spec(s, space2) for s in structures]
    child = mutate_stage2(seeds[0], space2, random.Random(0))
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from smnas.errors import SmnasError, SpecError
from smnas.models.encoding import (
    RESNET_ENCODINGS, Encoding, EncodingBounds, backbone_encoding, check_encoding, parse_encoding, scaled_channels,
)
from smnas.models.spec import NORMS, BackboneSpec, DetectorSpec, parse_spec
from smnas.search.mutation import ENCODING_OPS, change_fpn_channels

# MobileNetV2 as an invres encoding with doublings only: torchvision's widths 24 | 32 | 64, 96 |
# 160, 320 become 24 | 48 | 96 | 192 (its first 24-channel block is in the invres stem).
MOBILENETV2_ENCODING = "invres_24_1-211-2111111-2111"


@dataclass(frozen=True)
class StageTwoSpace:
    """Choices of stage two. Defaults: the laptop space; :meth:`paper` gives the paper's."""

    fpn_channels: tuple[int, ...] = (16, 32, 64)  # paper: 128, 256, 512
    bounds: EncodingBounds = field(default_factory=EncodingBounds.laptop)
    norm: str = "gnws"  # stage two trains from scratch (no ImageNet weights for new backbones)
    structures: int = 6  # stage-one front structures to search inside (the paper's C0..C5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fpn_channels", tuple(int(c) for c in self.fpn_channels))
        if not self.fpn_channels or min(self.fpn_channels) < 1:
            raise SpecError(f"stage two: fpn_channels must be positive integers, got {list(self.fpn_channels)}")
        if not isinstance(self.structures, int) or self.structures < 1:
            raise SpecError(f"stage two: structures must be an integer >= 1, got {self.structures!r}")
        if self.norm not in NORMS:
            raise SpecError(f"stage two: norm {self.norm!r} is not one of {', '.join(NORMS)}")

    @property
    def base_channels(self) -> tuple[int, ...]:
        return self.bounds.base_channels

    @classmethod
    def paper(cls) -> "StageTwoSpace":
        return cls(fpn_channels=(128, 256, 512), bounds=EncodingBounds.paper())

    @classmethod
    def laptop(cls) -> "StageTwoSpace":
        return cls()

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<config>") -> "StageTwoSpace":
        """From a config's ``stage2.space`` mapping; missing keys take the laptop defaults.

        Keys: ``fpn_channels``, ``norm``, ``structures`` and the fields of EncodingBounds
        (``base_channels``, ``min_blocks``, ``max_blocks``, ``min_stage_blocks``,
        ``max_stage_blocks``, ``num_stages``, ``min_doublings``, ``max_doublings``).
        """
        own = {"fpn_channels", "norm", "structures"}
        bound_keys = set(EncodingBounds.__dataclass_fields__)
        unknown = set(d) - own - bound_keys
        if unknown:
            raise SmnasError(f"{source}: stage2.space has unknown key(s) {sorted(unknown)}; valid: {sorted(own | bound_keys)}")
        laptop = EncodingBounds.laptop()
        bound_args = {k: d.get(k, getattr(laptop, k)) for k in bound_keys}
        try:
            bounds = EncodingBounds(**{k: tuple(v) if isinstance(v, list) else v for k, v in bound_args.items()})
            return cls(bounds=bounds, **{k: tuple(d[k]) if isinstance(d[k], list) else d[k] for k in own & set(d)})
        except SpecError as e:
            raise SmnasError(f"{source}: stage2.space: {e}") from None


def pick_structures(front_df: pd.DataFrame, k: int, cost: str = "latency_ms") -> list[DetectorSpec]:
    """``k`` distinct structures spread evenly along the stage-one front, cheapest to dearest.

    Args:
        front_df: a ranked stage-one table (columns arch, ``cost``; front_rank and status are
            used when present: only ``ok`` rows, front 0 first). When the front has fewer than
            ``k`` members, the next fronts fill in, best rank then cheapest first.
        k: how many structures (the paper took 6).
        cost: the cost column to sort by.

    Returns:
        Up to ``k`` specs, sorted by cost (fewer only if the table has fewer distinct archs).

    Raises:
        SmnasError: a column is missing, or no row is ok and ranked.
    """
    for col in ("arch", cost):
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
    else:
        # floor(x + 0.5) of points >= 1 apart stays strictly increasing (round() would not: 1.5, 2.5)
        idx = np.floor(np.linspace(0, len(front) - 1, k) + 0.5).astype(int)
        chosen = front.iloc[idx]
    return [parse_spec(a) for a in chosen.sort_values([cost, "arch"])["arch"]]


def family_encoding(backbone: BackboneSpec) -> Encoding:
    """The encoding a backbone stands for: a named one's block layout at its scaled width."""
    if backbone.is_encoding:
        return parse_encoding(backbone.name)
    if backbone.name in RESNET_ENCODINGS:
        return backbone_encoding(backbone.name, backbone.width)
    if backbone.name == "mobilenetv2":
        enc = parse_encoding(MOBILENETV2_ENCODING)
        return replace(enc, base_channels=scaled_channels(enc.base_channels, backbone.width))
    raise SpecError(f"backbone {backbone}: no encoding known for it")


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


def mutate_stage2(spec: DetectorSpec, space2: StageTwoSpace, rng: random.Random) -> DetectorSpec:
    """One edit of a stage-two spec: an encoding operator or another FPN channel count.

    The operator is drawn uniformly among those that apply (FPN channels only with an FPN).

    Raises:
        SpecError: ``spec``'s backbone is not an encoding, or no operator applies.
    """
    if not spec.backbone.is_encoding:
        raise SpecError(f"{spec}: a stage-two spec needs an encoding as backbone (see seed_spec)")
    enc = parse_encoding(spec.backbone.name)
    names = sorted([*ENCODING_OPS, "fpn_channels"])
    rng.shuffle(names)
    for name in names:
        if name == "fpn_channels":
            out = change_fpn_channels(spec, space2.fpn_channels, rng)
            if out is not None:
                return out
            continue
        new = ENCODING_OPS[name](enc, space2.bounds, rng)
        if new is not None:
            return replace(spec, backbone=BackboneSpec(str(new)))
    raise SpecError(f"{spec}: no stage-two mutation applies inside the bounds")


@functools.lru_cache(maxsize=65536)
def _backbone_gmacs(name: str, width: float, input_size: tuple[int, int]) -> float:
    # On the meta device: shapes only, no arithmetic, so a ResNet-101 at 1333x800 costs ~0.1 s.
    # BN is built in place of GN+WS: normalisation adds no multiply-accumulates to the count.
    import torch  # here, not at the top: planning the workflow imports this module without torch

    from smnas.engine.measure import count_macs
    from smnas.models.backbones import build_backbone

    w, h = input_size
    with torch.device("meta"):
        model = build_backbone(name, width, norm="bn")
        x = torch.empty(1, 3, h, w)
    return count_macs(model, x) / 1e9


def backbone_gmacs(spec: DetectorSpec) -> float:
    """GMACs of ``spec``'s backbone alone at its input size (stage two's cost), cached.

    Convolutions and matmuls are counted by :func:`smnas.engine.measure.count_macs`.
    """
    value = _backbone_gmacs(spec.backbone.name, spec.backbone.width, tuple(spec.input_size))
    if not math.isfinite(value):
        raise SmnasError(f"{spec}: backbone MACs are not finite ({value})")
    return value
