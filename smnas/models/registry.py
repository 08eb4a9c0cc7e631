"""Every named backbone, in one place: its block family and its layout as an encoding.

A named stage-one backbone (``resnet50``) and the stage-two encodings that replace it
(``bottleneck_56_211-...``) share a block family; stage two starts from the named backbone's
layout (:func:`named_encoding`) and searches its depth and widths. The builder
(:func:`smnas.models.backbones.build_backbone`) reads this table too, so a new family is added
here and in its builder only.

Layouts follow the SM-NAS paper's reading of its encodings (Yao et al., AAAI 2020, Sec. 3.2):
the ResNet stem, stage 2 at stride 4, ``2`` doubles the block width. Read this way,
``basicblock_64_11-21-21-21`` is exactly torchvision's ResNet-18 trunk.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from smnas.errors import SpecError
from smnas.models.encoding import Encoding, parse_encoding


@dataclass(frozen=True)
class NamedBackbone:
    """A backbone of the stage-one space.

    Attributes:
        layout: its blocks as an encoding at width 1.0.
        exact: True when :func:`build_backbone` builds this very layout for the name; False
            when the name is built otherwise (torchvision's MobileNetV2, whose widths 24, 32, 64,
            96, 160, 320 are not all doublings) and ``layout`` only seeds stage two.
    """

    layout: str
    exact: bool = True

    @property
    def block(self) -> str:
        return parse_encoding(self.layout).block


NAMED_BACKBONES: dict[str, NamedBackbone] = {
    "resnet18": NamedBackbone("basicblock_64_11-21-21-21"),
    "resnet34": NamedBackbone("basicblock_64_111-2111-211111-211"),
    "resnet50": NamedBackbone("bottleneck_64_111-2111-211111-211"),
    "resnet101": NamedBackbone("bottleneck_64_111-2111-2" + "1" * 22 + "-211"),
    "resnext50": NamedBackbone("Xbottleneck_64_111-2111-211111-211"),  # 32x4d
    "resnext101": NamedBackbone("Xbottleneck_64_111-2111-2" + "1" * 22 + "-211"),  # 32x4d, as SM-NAS
    # torchvision's widths 24 | 32 | 64, 96 | 160, 320 as doublings only: 24 | 48 | 96 | 192 (its
    # first 24-channel block is in the invres stem)
    "mobilenetv2": NamedBackbone("invres_24_1-211-2111111-2111", exact=False),
}
BACKBONES = tuple(NAMED_BACKBONES)


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8 (at least 8), so GroupNorm divides it."""
    return max(8, int(round(channels * width / 8.0)) * 8)


def named_encoding(name: str, width: float = 1.0) -> Encoding:
    """The layout of named backbone ``name`` at a width multiplier (base channels scaled)."""
    if name not in NAMED_BACKBONES:
        raise SpecError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)} or an encoding")
    enc = parse_encoding(NAMED_BACKBONES[name].layout)
    return replace(enc, base_channels=scaled_channels(enc.base_channels, width))


def block_family(name: str) -> str:
    """The block family of a named backbone or an encoding (``resnext50`` -> ``Xbottleneck``)."""
    if name in NAMED_BACKBONES:
        return NAMED_BACKBONES[name].block
    return parse_encoding(name).block


def backbone_key(name: str, width: float = 1.0, norm: str = "bn") -> str:
    """The identity of a pretrained backbone, for file names: two detectors with one backbone
    share one pretraining.

    One architecture has one key, however it is named: an encoding that is a named backbone's
    layout (stage two's start from ResNet-18, ``basicblock_16_11-21-21-21``) and every width that
    builds the same channels (``resnet18@0.3``) map to that name at the width ``base / 64``
    (``resnet18@0.25``), so the workflow pretrains it once.

    Args:
        name: a named backbone (``resnet18``) or an encoding (``basicblock_16_1-21-21-12``).
        width: channel multiplier of a named backbone (must be 1.0 for an encoding).
        norm: ``"bn"`` (no suffix: the usual pretraining) or ``"gnws"`` (suffix ``+gnws``).

    Returns:
        The canonical string, e.g. ``resnet18@0.25``, ``resnet50``, ``basicblock_16_1-21-21-12``.
    """
    if norm not in ("bn", "gnws"):  # smnas.models.spec.NORMS (spec imports this module)
        raise SpecError(f"norm {norm!r}: expected one of bn, gnws")
    if not width > 0:
        raise SpecError(f"{name}: width must be > 0, got {width}")
    if "_" in name:
        if width != 1.0:
            raise SpecError(f"{name}: an encoding sets its own channels; width applies to named backbones only")
        enc = parse_encoding(name)  # checked
    elif name not in NAMED_BACKBONES:
        raise SpecError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)} or an encoding")
    elif NAMED_BACKBONES[name].exact:
        enc = named_encoding(name, width)
    else:  # built otherwise than its layout (MobileNetV2): the name and width are the identity
        width = float(f"{float(width):g}")  # BackboneSpec's canonical width
        enc = None
    if enc is not None:
        name, width = _named_form(enc)
    suffix = "" if norm == "bn" else f"+{norm}"
    return (name if width == 1.0 else f"{name}@{width:g}") + suffix


def _named_form(enc: Encoding) -> tuple[str, float]:
    """``(name, width)`` of the named backbone whose layout ``enc`` is (at width ``base / 64``,
    which rebuilds ``enc``'s base exactly), else ``(str(enc), 1.0)``."""
    at_64 = str(replace(enc, base_channels=64))
    for name, named in NAMED_BACKBONES.items():
        if named.exact and str(parse_encoding(named.layout)) == at_64:
            return name, enc.base_channels / 64
    return str(enc), 1.0


def parse_backbone_key(key: str) -> tuple[str, float, str]:
    """The inverse of :func:`backbone_key`, for a workflow wildcard.

    Args:
        key: e.g. ``resnet18@0.25``, ``basicblock_16_1-21-21-12``, ``resnet50+gnws``.

    Returns:
        ``(name, width, norm)`` with ``backbone_key(*result) == key``.
    """
    body, _, norm = key.partition("+")
    name, _, width_text = body.partition("@")
    try:
        width = float(width_text) if width_text else 1.0
    except ValueError:
        raise SpecError(f"backbone key {key!r}: width {width_text!r} is not a number") from None
    kind = norm or "bn"  # backbone_key checks it
    if backbone_key(name, width, kind) != key:
        raise SpecError(f"backbone key {key!r} is not canonical; expected {backbone_key(name, width, kind)!r}")
    return name, width, kind
