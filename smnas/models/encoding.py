"""The backbone encoding of SM-NAS stage two, e.g. ``basicblock_64_1-21-21-12``.

Fields, separated by ``_``:

1. block type: ``basicblock``/``bottleneck`` (ResNet), ``Xbottleneck`` (ResNeXt, 32 groups of 4
   channels at base 64), ``invres`` (MobileNetV2 inverted residual, expansion 6);
2. base channel count (the stem's output and stage 2's block width);
3. one character per block, ``-`` between stages of different resolution: ``1`` keeps the channel
   count, ``2`` doubles it at that block;
4. optional, SP-NAS's parallel level (Jiang et al., "SP-NAS: Serial-to-Parallel Backbone Search for
   Object Detection", CVPR 2020): one count per stage, ``-`` separated, of sub-networks (copies of
   that stage's blocks) running beside it, e.g. ``basicblock_64_1-21-21-12_0-1-0-2``. No parallel
   sub-network at all has ONE form, the 3-field string: all-zero counts (``_0-0-0-0``) parse and
   normalise to it (``Encoding.parallel == ()``), so a serial encoding keeps its string and hash.

Reading (the SM-NAS paper, Yao et al., AAAI 2020, Sec. 3.2): a fixed ResNet stem (7x7 conv stride 2, 3x3 max-pool stride 2); the first
stage after the stem runs at stride 4; the first block of every later stage has stride 2;
bottleneck blocks output 4x their width. So ResNet-18 is ``basicblock_64_11-21-21-21`` and
ResNet-50 is ``bottleneck_64_111-2111-211111-211``.
"""
from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass

from smnas.errors import SpecError

BLOCK_TYPES = ("basicblock", "bottleneck", "Xbottleneck", "invres")
# Paper stage-two base channels; configurations may allow other lists (see Encoding.check).
PAPER_BASE_CHANNELS = (48, 56, 64, 72)

_BLOCKS_RE = re.compile(r"^[12]+(-[12]+)*$")


@dataclass(frozen=True)
class Encoding:
    """A parsed backbone encoding. ``stages`` holds one string of ``1``/``2`` per stage;
    ``parallel`` one sub-network count per stage, or ``()`` for none (all zeros normalise to it)."""

    block: str
    base_channels: int
    stages: tuple[str, ...]
    parallel: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.block not in BLOCK_TYPES:
            raise SpecError(f"unknown block type {self.block!r}; valid: {', '.join(BLOCK_TYPES)}")
        if self.base_channels < 1:
            raise SpecError(f"base channels must be a positive integer, got {self.base_channels}")
        if not self.stages:
            raise SpecError("an encoding needs at least one stage")
        for i, stage in enumerate(self.stages):
            if not stage:
                raise SpecError(f"stage {i + 1} of the encoding is empty (two '-' in a row?)")
            bad = set(stage) - {"1", "2"}
            if bad:
                raise SpecError(
                    f"stage {i + 1} {stage!r}: character {sorted(bad)[0]!r} is not a block; "
                    "expected '1' (keep channels) or '2' (double channels)"
                )
        object.__setattr__(self, "parallel", _parallel_counts(self.parallel, len(self.stages)))

    def __str__(self) -> str:
        text = f"{self.block}_{self.base_channels}_{'-'.join(self.stages)}"
        return f"{text}_{'-'.join(map(str, self.parallel))}" if self.parallel else text

    @property
    def serial(self) -> "Encoding":
        """The same blocks without parallel sub-networks (SP-NAS's serial network)."""
        return Encoding(self.block, self.base_channels, self.stages)

    @property
    def num_blocks(self) -> int:
        return sum(len(s) for s in self.stages)

    @property
    def doublings(self) -> int:
        """How many blocks double the channel count (``2`` characters)."""
        return sum(s.count("2") for s in self.stages)

    def stage_channels(self) -> list[list[int]]:
        """Block width (before bottleneck expansion) of each block, stage by stage."""
        width, out = self.base_channels, []
        for stage in self.stages:
            widths = []
            for ch in stage:
                width *= 2 if ch == "2" else 1
                widths.append(width)
            out.append(widths)
        return out


def _parallel_counts(counts, num_stages: int) -> tuple[int, ...]:
    """Check the parallel counts; all zeros become ``()`` so one architecture has one string."""
    out = []
    for i, c in enumerate(tuple(counts)):
        try:
            if isinstance(c, bool):  # an int subclass, but never a count
                raise TypeError
            c = operator.index(c)  # ints and NumPy integers; 1.5 and "1" are refused
        except TypeError:
            raise SpecError(f"parallel count of stage {i + 1}: {c!r} is not a whole number") from None
        if c < 0:
            raise SpecError(f"parallel count of stage {i + 1}: {c} is negative; expected 0 or more sub-networks")
        out.append(c)
    if out and len(out) != num_stages:
        raise SpecError(f"parallel counts {'-'.join(map(str, out))}: {len(out)} given, "
                        f"expected {num_stages} (one per stage)")
    return tuple(out) if any(out) else ()


@functools.lru_cache(maxsize=1 << 16)  # the search parses the same strings over and over; Encoding is frozen
def parse_encoding(text: str) -> Encoding:
    """Parse ``block_base_blocks[_counts]``; errors name the field at fault and what was expected."""
    parts = text.split("_")
    if len(parts) not in (3, 4):
        raise SpecError(
            f"backbone encoding {text!r}: expected 3 fields 'block_base_blocks' "
            f"(e.g. basicblock_64_1-21-21-12) or 4 with parallel counts (e.g. basicblock_64_1-21-21-12_0-1-0-2), "
            f"got {len(parts)}"
        )
    block, base, blocks = parts[:3]
    if block not in BLOCK_TYPES:
        raise SpecError(f"backbone encoding {text!r}: unknown block type {block!r}; valid: {', '.join(BLOCK_TYPES)}")
    if not base.isdigit():
        raise SpecError(f"backbone encoding {text!r}: base channels {base!r} is not a whole number")
    if not _BLOCKS_RE.match(blocks):
        for i, ch in enumerate(blocks):
            if ch not in "12-":
                raise SpecError(
                    f"backbone encoding {text!r}: character {ch!r} at position {i + 1} of {blocks!r}; "
                    "expected '1', '2' or '-'"
                )
        raise SpecError(f"backbone encoding {text!r}: empty stage in {blocks!r} (a leading, trailing or double '-')")
    stages = tuple(blocks.split("-"))
    if len(parts) == 3:
        return Encoding(block, int(base), stages)
    counts = parts[3].split("-")
    for i, c in enumerate(counts):
        if not (c.isascii() and c.isdigit()):
            raise SpecError(
                f"backbone encoding {text!r}: parallel count {c!r} of stage {i + 1} is not a whole number "
                "(expected one count >= 0 per stage, '-' separated)"
            )
    if len(counts) != len(stages):
        raise SpecError(f"backbone encoding {text!r}: {len(counts)} parallel counts, "
                        f"expected {len(stages)} (one per stage)")
    return Encoding(block, int(base), stages, tuple(int(c) for c in counts))


def is_encoding(text: str) -> bool:
    """True if ``text`` looks like an encoding (starts with a block type and an underscore)."""
    head, sep, _ = text.partition("_")  # block types hold no "_": same as startswith(block + "_")
    return bool(sep) and head in BLOCK_TYPES


@dataclass(frozen=True)
class EncodingBounds:
    """Which encodings a stage-two search may visit (besides the block family, fixed per structure).

    The paper's encodings all have 4 stages after the stem and 3 channel doublings (64 -> 512 as
    in ResNet); its mutations move doublings rather than add them, hence the doubling bounds.
    """

    base_channels: tuple[int, ...]  # allowed base channel counts (paper: 48, 56, 64, 72)
    min_blocks: int  # total blocks over all stages
    max_blocks: int
    max_stage_blocks: int  # blocks in one stage
    min_stage_blocks: int = 1  # an empty stage has no feature map to hand to the neck
    num_stages: int = 4  # P1..P4 (strides 4..32): what the necks expect
    min_doublings: int = 0
    max_doublings: int | None = None  # None: no upper bound

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_channels", tuple(int(c) for c in self.base_channels))
        if not self.base_channels or min(self.base_channels) < 1:
            raise SpecError(f"encoding bounds: base_channels must be a non-empty list of positive integers, got {list(self.base_channels)}")
        if not 1 <= self.min_stage_blocks <= self.max_stage_blocks:
            raise SpecError(f"encoding bounds: need 1 <= min_stage_blocks <= max_stage_blocks, got {self.min_stage_blocks}, {self.max_stage_blocks}")
        lo, hi = self.num_stages * self.min_stage_blocks, self.num_stages * self.max_stage_blocks
        if not (self.min_blocks <= self.max_blocks and self.max_blocks >= lo and self.min_blocks <= hi):
            raise SpecError(
                f"encoding bounds: blocks {self.min_blocks}..{self.max_blocks} cannot be met by {self.num_stages} "
                f"stages of {self.min_stage_blocks}..{self.max_stage_blocks} blocks (that gives {lo}..{hi})"
            )
        if self.min_doublings < 0 or (self.max_doublings is not None and self.max_doublings < self.min_doublings):
            raise SpecError(f"encoding bounds: need 0 <= min_doublings <= max_doublings, got {self.min_doublings}, {self.max_doublings}")
        if self.min_doublings > self.max_blocks:
            raise SpecError(f"encoding bounds: min_doublings {self.min_doublings} > max_blocks {self.max_blocks}")

    @classmethod
    def paper(cls) -> "EncodingBounds":
        """The paper's stage two: base 48..72, 4..40 blocks (E0 has 7, ResNet-101 33), 3 doublings."""
        return cls(PAPER_BASE_CHANNELS, min_blocks=4, max_blocks=40, max_stage_blocks=24,
                   min_doublings=3, max_doublings=3)

    @classmethod
    def laptop(cls) -> "EncodingBounds":
        """A small space for the built-in dataset: narrow bases, 4..12 blocks, 3 doublings."""
        return cls((16, 24, 32), min_blocks=4, max_blocks=12, max_stage_blocks=6, min_doublings=3, max_doublings=3)

    def stage_ok(self, length: int) -> bool:
        return self.min_stage_blocks <= length <= self.max_stage_blocks

    def doublings_ok(self, n: int) -> bool:
        return n >= self.min_doublings and (self.max_doublings is None or n <= self.max_doublings)


def check_encoding(enc: Encoding, bounds: EncodingBounds) -> Encoding:
    """Raise SpecError naming the field at fault if ``enc`` is outside ``bounds``; else return it.

    Example message: ``basicblock_60_1-21: base channels 60 not in [48, 56, 64, 72]``.
    """
    if enc.base_channels not in bounds.base_channels:
        raise SpecError(f"{enc}: base channels {enc.base_channels} not in {list(bounds.base_channels)}")
    if len(enc.stages) != bounds.num_stages:
        raise SpecError(f"{enc}: {len(enc.stages)} stages, expected {bounds.num_stages} ('-' separates stages)")
    for i, stage in enumerate(enc.stages):
        if not bounds.stage_ok(len(stage)):
            raise SpecError(
                f"{enc}: stage {i + 1} {stage!r} has {len(stage)} blocks, expected "
                f"{bounds.min_stage_blocks}..{bounds.max_stage_blocks}"
            )
    if not bounds.min_blocks <= enc.num_blocks <= bounds.max_blocks:
        raise SpecError(f"{enc}: {enc.num_blocks} blocks in all, expected {bounds.min_blocks}..{bounds.max_blocks}")
    if not bounds.doublings_ok(enc.doublings):
        hi = "any" if bounds.max_doublings is None else bounds.max_doublings
        raise SpecError(f"{enc}: {enc.doublings} channel doublings ('2'), expected {bounds.min_doublings}..{hi}")
    return enc


def in_bounds(enc: Encoding, bounds: EncodingBounds) -> bool:
    """True if :func:`check_encoding` accepts ``enc``."""
    try:
        check_encoding(enc, bounds)
    except SpecError:
        return False
    return True
