"""The search spaces: stage one's structures (which modules, which input size) and stage two's
choices inside a structure (backbone encoding bounds, FPN channels).

A space is a set of choices per module; its members are the *valid* combinations
(:meth:`DetectorSpec.validate`: a RetinaNet head takes no RPN, a two-stage head needs one, an FPN
range must start inside the backbone). The space enumerates, counts and samples only those.

    space = load_space("config/paper.yaml")   # the paper's: 9,324 structures
    space.size(); space.sample(8, seed=0)
    space2 = StageTwoSpace.paper()          # base 48..72, 4..40 blocks, FPN 128/256/512
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from smnas.errors import SmnasError, SpecError
from smnas.models.encoding import EncodingBounds
from smnas.models.spec import (
    NORMS, BackboneSpec, DetectorSpec, HeadSpec, NeckSpec, RPNSpec, _parse_head,
)
from smnas.search.pareto import FRONT_PICKS


@dataclass(frozen=True)
class StageOneSpace:
    """Choices per module. Defaults: the laptop space for the built-in dataset."""

    backbones: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50", "resnext101", "mobilenetv2")
    width: float = 0.25  # laptop scale; the paper's space uses 1.0
    necks: tuple[str, ...] = ("none", "fpn")
    fpn_ranges: tuple[tuple[int, int], ...] = ((1, 4), (2, 5), (1, 5))  # (first, last) of P1..P6
    fpn_channels: tuple[int, ...] = (32,)
    rpns: tuple[str, ...] = ("none", "rpn", "garpn")
    heads: tuple[str, ...] = ("2fc", "retina", "cascade2", "cascade3", "cascade4")
    head_fc: int = 256  # the paper's heads use 1024
    input_sizes: tuple[tuple[int, int], ...] = ((128, 96), (192, 144), (256, 192), (320, 240))
    norm: str = "gnws"  # from scratch on a laptop; the paper's stage one fine-tunes BN ImageNet models

    def _necks(self) -> Iterator[NeckSpec]:
        if "none" in self.necks:
            yield NeckSpec()
        if "fpn" in self.necks:
            for (first, last), c in itertools.product(self.fpn_ranges, self.fpn_channels):
                yield NeckSpec("fpn", first, last, c)

    def _heads(self) -> list[HeadSpec]:
        heads = []
        for text in self.heads:
            head = _parse_head(text)
            heads.append(head if head.kind == "retina" else HeadSpec(head.kind, head.stages, self.head_fc))
        return heads

    def modules(self) -> Iterator[tuple[BackboneSpec, NeckSpec, RPNSpec, HeadSpec]]:
        """Every valid module combination (at any one input size)."""
        size = self.input_sizes[0]
        for bb, neck, rpn, head in itertools.product(
            [BackboneSpec(b, self.width) for b in self.backbones], list(self._necks()),
            [RPNSpec(r) for r in self.rpns], self._heads(),
        ):
            try:
                DetectorSpec(bb, neck, rpn, head, size, self.norm).validate()
            except SpecError:
                continue
            yield bb, neck, rpn, head

    def __iter__(self) -> Iterator[DetectorSpec]:
        """Every valid spec, in a fixed order."""
        for (bb, neck, rpn, head), size in itertools.product(list(self.modules()), self.input_sizes):
            yield DetectorSpec(bb, neck, rpn, head, tuple(size), self.norm)

    def size(self) -> int:
        """Number of valid structures."""
        return sum(1 for _ in self.modules()) * len(self.input_sizes)

    def sample(self, n: int, seed: int = 0) -> list[DetectorSpec]:
        """``n`` distinct valid specs drawn uniformly (all of them if the space is smaller)."""
        if n < 0:
            raise ValueError(f"cannot sample {n} specs")
        specs = list(self)
        if not specs:
            raise SmnasError("the search space is empty: no valid combination of its choices")
        return random.Random(seed).sample(specs, min(n, len(specs)))


def space_from_dict(d: dict[str, Any], source: str = "<config>") -> StageOneSpace:
    """Build a StageOneSpace from a config's ``stage1.space`` mapping (keys as the fields)."""
    known = set(StageOneSpace.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise SmnasError(f"{source}: stage1.space has unknown key(s) {sorted(unknown)}; valid: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key in ("fpn_ranges", "input_sizes"):
            kwargs[key] = tuple(tuple(int(x) for x in v) for v in value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    space = StageOneSpace(**kwargs)
    if space.size() == 0:
        raise SmnasError(f"{source}: stage1.space has no valid structure (check rpns/heads: retina needs rpn none, R-CNN heads need an RPN)")
    return space


def load_space(path: str | Path | None = None) -> StageOneSpace:
    """The ``stage1.space`` of a YAML config; ``None`` gives the laptop default."""
    if path is None:
        return StageOneSpace()
    path = Path(path)
    if not path.is_file():
        raise SmnasError(f"config file {path} does not exist")
    cfg = yaml.safe_load(path.read_text()) or {}
    block = (cfg.get("stage1") or {}).get("space")
    if block is None:
        raise SmnasError(f"{path}: no stage1.space block")
    return space_from_dict(block, str(path))


STRUCTURE_PICKS = FRONT_PICKS  # smnas.search.seeding.pick_structures


@dataclass(frozen=True)
class StageTwoSpace:
    """Choices of stage two. Defaults: the laptop space; :meth:`paper` gives the paper's."""

    fpn_channels: tuple[int, ...] = (16, 32, 64)  # paper: 128, 256, 512
    bounds: EncodingBounds = field(default_factory=EncodingBounds.laptop)
    norm: str = "gnws"  # the paper trains stage two from scratch (no ImageNet weights for new backbones)
    structures: int = 6  # stage-one front structures to search inside (the paper's C0..C5)
    pick: str = "spread"  # how they are picked: evenly along the front, or by hypervolume added

    def __post_init__(self) -> None:
        object.__setattr__(self, "fpn_channels", tuple(int(c) for c in self.fpn_channels))
        if not self.fpn_channels or min(self.fpn_channels) < 1:
            raise SpecError(f"stage two: fpn_channels must be positive integers, got {list(self.fpn_channels)}")
        if not isinstance(self.structures, int) or self.structures < 1:
            raise SpecError(f"stage two: structures must be an integer >= 1, got {self.structures!r}")
        if self.norm not in NORMS:
            raise SpecError(f"stage two: norm {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.pick not in STRUCTURE_PICKS:
            raise SpecError(f"stage two: pick {self.pick!r} is not one of {', '.join(STRUCTURE_PICKS)}")

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
    def from_dict(cls, d: dict[str, Any], source: str = "config stage2.space") -> "StageTwoSpace":
        """From a config's ``stage2.space`` (or ``spnas.space``) mapping, named by ``source`` in
        errors; missing keys take the laptop defaults.

        Keys: ``fpn_channels``, ``norm``, ``structures``, ``pick`` and the fields of EncodingBounds
        (``base_channels``, ``min_blocks``, ``max_blocks``, ``min_stage_blocks``,
        ``max_stage_blocks``, ``num_stages``, ``min_doublings``, ``max_doublings``).
        """
        own = {"fpn_channels", "norm", "structures", "pick"}
        bound_keys = set(EncodingBounds.__dataclass_fields__)
        unknown = set(d) - own - bound_keys
        if unknown:
            raise SmnasError(f"{source}: unknown key(s) {sorted(unknown)}; valid: {sorted(own | bound_keys)}")
        laptop = EncodingBounds.laptop()
        bound_args = {k: d.get(k, getattr(laptop, k)) for k in bound_keys}
        try:
            bounds = EncodingBounds(**{k: tuple(v) if isinstance(v, list) else v for k, v in bound_args.items()})
            return cls(bounds=bounds, **{k: tuple(d[k]) if isinstance(d[k], list) else d[k] for k in own & set(d)})
        except SpecError as e:
            raise SmnasError(f"{source}: {e}") from None
