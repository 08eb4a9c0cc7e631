"""Typed, frozen specs of a detector and its parts, with one canonical string form.

    resnet50@0.25+fpn:P2-P5:c64+rpn+cascade3:256+320x240+gnws
    |backbone    |neck          |rpn |head       |input  |norm

Fields are joined by ``+``:

- backbone: a name (``resnet18`` ... ``mobilenetv2``) with an optional width multiplier
  ``@0.25``, or a stage-two encoding (``basicblock_64_1-21-21-12``);
- neck: ``none`` or ``fpn:P{a}-P{b}:c{channels}``;
- rpn: ``none``, ``rpn`` or ``garpn`` (guided anchoring);
- head: ``2fc``, ``retina`` or ``cascade{n}`` (n = 2, 3, 4); R-CNN heads take an optional
  ``:{fc}`` FC width (default 1024, the paper's);
- input size ``{W}x{H}``; norm ``bn`` or ``gnws``.

``parse_spec(str(spec)) == spec`` for every spec, and the string is the candidate's identity
everywhere (file names use :func:`spec_hash` of it). Validity (which combinations make sense)
is checked by :meth:`DetectorSpec.validate`, with errors that name the part and the choices.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from smnas.errors import SpecError
from smnas.models.encoding import is_encoding, parse_encoding
from smnas.models.registry import BACKBONES

NECKS = ("none", "fpn")
RPNS = ("none", "rpn", "garpn")
HEADS = ("2fc", "retina", "cascade")
CASCADE_STAGES = (2, 3, 4)
NORMS = ("bn", "gnws")
DEFAULT_FC = 1024


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # a name in BACKBONES or an encoding string
    width: float = 1.0  # channel multiplier of a named backbone

    def __post_init__(self) -> None:
        # Canonical width: 6 significant digits, so parse(str(spec)) == spec for any float.
        object.__setattr__(self, "width", float(f"{float(self.width):g}"))

    def __str__(self) -> str:
        return self.name if self.width == 1.0 else f"{self.name}@{self.width:g}"

    @property
    def is_encoding(self) -> bool:
        return is_encoding(self.name)


@dataclass(frozen=True)
class NeckSpec:
    kind: str = "none"  # "none" | "fpn"
    first: int = 0  # FPN range P{first}..P{last}; 0 for none
    last: int = 0
    channels: int = 0

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"fpn:P{self.first}-P{self.last}:c{self.channels}"


@dataclass(frozen=True)
class RPNSpec:
    kind: str = "rpn"  # "none" | "rpn" | "garpn"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class HeadSpec:
    kind: str = "2fc"  # "2fc" | "retina" | "cascade"
    stages: int = 1  # cascade stages (2..4); 1 otherwise
    fc: int = DEFAULT_FC  # width of the two shared FC layers of R-CNN heads

    def __str__(self) -> str:
        name = f"cascade{self.stages}" if self.kind == "cascade" else self.kind
        return name if (self.kind == "retina" or self.fc == DEFAULT_FC) else f"{name}:{self.fc}"

    @property
    def two_stage(self) -> bool:
        return self.kind != "retina"


@dataclass(frozen=True)
class DetectorSpec:
    backbone: BackboneSpec
    neck: NeckSpec
    rpn: RPNSpec
    head: HeadSpec
    input_size: tuple[int, int]  # (width, height)
    norm: str = "bn"

    def __str__(self) -> str:
        w, h = self.input_size
        return f"{self.backbone}+{self.neck}+{self.rpn}+{self.head}+{w}x{h}+{self.norm}"

    def validate(self) -> "DetectorSpec":
        """Raise SpecError naming the offending part if this combination is not valid."""
        _validate(self)
        return self

    def with_norm(self, norm: str) -> "DetectorSpec":
        """The same architecture with another normalisation (GN+WS search -> BN final)."""
        return replace(self, norm=norm).validate()


def _validate(s: DetectorSpec) -> None:
    bb = s.backbone
    if bb.is_encoding:
        parse_encoding(bb.name)
        if bb.width != 1.0:
            raise SpecError(f"backbone {bb}: a width multiplier applies to named backbones, not encodings")
    elif bb.name not in BACKBONES:
        raise SpecError(f"unknown backbone {bb.name!r}; valid: {', '.join(BACKBONES)} or an encoding")
    if not bb.width > 0:
        raise SpecError(f"backbone width multiplier must be > 0, got {bb.width}")
    n = s.neck
    if n.kind not in NECKS:
        raise SpecError(f"unknown neck {n.kind!r}; valid: {', '.join(NECKS)}")
    if n.kind == "fpn":
        if not (1 <= n.first <= 4 and n.first <= n.last <= 6):
            raise SpecError(f"FPN range P{n.first}-P{n.last}: must start at a backbone level P1..P4 and end by P6 (first <= last)")
        if n.channels < 1:
            raise SpecError(f"FPN channels must be positive, got {n.channels}")
    if s.rpn.kind not in RPNS:
        raise SpecError(f"unknown RPN {s.rpn.kind!r}; valid: {', '.join(RPNS)}")
    h = s.head
    if h.kind not in HEADS:
        raise SpecError(f"unknown head {h.kind!r}; valid: 2fc, retina, cascade2, cascade3, cascade4")
    if h.kind == "cascade" and h.stages not in CASCADE_STAGES:
        raise SpecError(f"cascade{h.stages}: stages must be one of {CASCADE_STAGES}")
    if h.kind == "retina" and s.rpn.kind != "none":
        raise SpecError(f"head retina is one-stage and takes no RPN, got rpn {s.rpn.kind!r}; use rpn 'none'")
    if h.two_stage and s.rpn.kind == "none":
        raise SpecError(f"head {h} is two-stage and needs an RPN ('rpn' or 'garpn'), got 'none'")
    if s.norm not in NORMS:
        raise SpecError(f"unknown norm {s.norm!r}; valid: {', '.join(NORMS)}")
    w, hh = s.input_size
    if w < 32 or hh < 32:
        raise SpecError(f"input size {w}x{hh}: each side must be >= 32 pixels")


_NECK_RE = re.compile(r"^fpn:P(\d)-P(\d):c(\d+)$")
_HEAD_RE = re.compile(r"^(2fc|retina|cascade(\d+))(?::(\d+))?$")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


def parse_spec(text: str) -> DetectorSpec:
    """Parse a canonical spec string; raise SpecError naming the field at fault."""
    parts = text.strip().split("+")
    if len(parts) != 6:
        raise SpecError(
            f"spec {text!r}: expected 6 '+'-separated fields backbone+neck+rpn+head+WxH+norm "
            f"(e.g. resnet18@0.25+fpn:P2-P4:c64+rpn+2fc:256+320x240+gnws), got {len(parts)}"
        )
    bb_text, neck_text, rpn_text, head_text, size_text, norm = parts
    return DetectorSpec(
        _parse_backbone(bb_text), _parse_neck(neck_text), RPNSpec(rpn_text),
        _parse_head(head_text), _parse_size(size_text), norm,
    ).validate()


def _parse_backbone(text: str) -> BackboneSpec:
    name, _, width = text.partition("@")
    if is_encoding(name):  # one string per architecture: "_0-0-0-0" and "064" are not identities
        name = str(parse_encoding(name))
    if not width:
        return BackboneSpec(name)
    try:
        return BackboneSpec(name, float(width))
    except ValueError:
        raise SpecError(f"backbone {text!r}: width multiplier {width!r} is not a number") from None


def _parse_neck(text: str) -> NeckSpec:
    if text == "none":
        return NeckSpec()
    m = _NECK_RE.match(text)
    if not m:
        raise SpecError(f"neck {text!r}: expected 'none' or 'fpn:P<a>-P<b>:c<channels>' (e.g. fpn:P2-P5:c128)")
    return NeckSpec("fpn", int(m[1]), int(m[2]), int(m[3]))


def _parse_head(text: str) -> HeadSpec:
    m = _HEAD_RE.match(text)
    if not m:
        raise SpecError(f"head {text!r}: expected 2fc, retina or cascade2/3/4, optionally ':<fc width>'")
    if m[1] == "retina":
        if m[3]:
            raise SpecError(f"head {text!r}: retina has no FC layers; drop ':{m[3]}'")
        return HeadSpec("retina")
    fc = int(m[3]) if m[3] else DEFAULT_FC
    if m[2]:
        return HeadSpec("cascade", int(m[2]), fc)
    return HeadSpec("2fc", 1, fc)


def _parse_size(text: str) -> tuple[int, int]:
    m = _SIZE_RE.match(text)
    if not m:
        raise SpecError(f"input size {text!r}: expected WIDTHxHEIGHT, e.g. 800x600")
    return int(m[1]), int(m[2])


def spec_hash(text: str | DetectorSpec, length: int = 12) -> str:
    """A short stable hash of the canonical string, for file and folder names."""
    return hashlib.sha1(str(text).encode()).hexdigest()[:length]
