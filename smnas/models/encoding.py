"""The backbone encoding of SM-NAS stage two, e.g. ``basicblock_64_1-21-21-12``.

Fields, separated by ``_``:

1. block type: ``basicblock``/``bottleneck`` (ResNet), ``Xbottleneck`` (ResNeXt, 32 groups of 4
   channels at base 64), ``invres`` (MobileNetV2 inverted residual, expansion 6);
2. base channel count (the stem's output and stage 2's block width);
3. one character per block, ``-`` between stages of different resolution: ``1`` keeps the channel
   count, ``2`` doubles it at that block.

Reading (SPEC.md): a fixed ResNet stem (7x7 conv stride 2, 3x3 max-pool stride 2); the first
stage after the stem runs at stride 4; the first block of every later stage has stride 2;
bottleneck blocks output 4x their width. So ResNet-18 is ``basicblock_64_11-21-21-21`` and
ResNet-50 is ``bottleneck_64_111-2111-211111-211``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from smnas.errors import SpecError

BLOCK_TYPES = ("basicblock", "bottleneck", "Xbottleneck", "invres")
# Paper stage-two base channels; configurations may allow other lists (see Encoding.check).
PAPER_BASE_CHANNELS = (48, 56, 64, 72)

_BLOCKS_RE = re.compile(r"^[12]+(-[12]+)*$")


@dataclass(frozen=True)
class Encoding:
    """A parsed backbone encoding. ``stages`` holds one string of ``1``/``2`` per stage."""

    block: str
    base_channels: int
    stages: tuple[str, ...]

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

    def __str__(self) -> str:
        return f"{self.block}_{self.base_channels}_{'-'.join(self.stages)}"

    @property
    def num_blocks(self) -> int:
        return sum(len(s) for s in self.stages)

    def check_base_channels(self, allowed: tuple[int, ...]) -> None:
        """Raise SpecError if the base channel count is not in ``allowed``."""
        if self.base_channels not in allowed:
            raise SpecError(
                f"{self}: base channels {self.base_channels} not in {list(allowed)}"
            )

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


def parse_encoding(text: str) -> Encoding:
    """Parse ``block_base_blocks``; errors name the field at fault and what was expected."""
    parts = text.split("_")
    if len(parts) != 3:
        raise SpecError(
            f"backbone encoding {text!r}: expected 3 fields 'block_base_blocks' "
            f"(e.g. basicblock_64_1-21-21-12), got {len(parts)}"
        )
    block, base, blocks = parts
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
    return Encoding(block, int(base), tuple(blocks.split("-")))


def is_encoding(text: str) -> bool:
    """True if ``text`` looks like an encoding (starts with a block type and an underscore)."""
    return any(text.startswith(b + "_") for b in BLOCK_TYPES)
