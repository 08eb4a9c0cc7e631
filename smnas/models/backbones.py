"""Build a backbone by name or encoding, and load local weights into it.

Every backbone returns ``OrderedDict[str, Tensor]`` keyed ``"P1".."P4"`` (strides 4, 8, 16, 32)
and carries ``levels: list[Level]`` so a neck can size itself (:mod:`smnas.models.trunks`).
Named backbones (``resnet18`` ... ``mobilenetv2``) are listed in :mod:`smnas.models.registry`;
an encoding (``basicblock_64_1-21-21-12``, with SP-NAS parallel counts ``..._0-1-0-2``) is built
by its block family's builder below. Weights are only ever read from local files.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from smnas.errors import SpecError
from smnas.models.encoding import parse_encoding
from smnas.models.norm import NormKind
from smnas.models.parallel import ParallelResNetBackbone
from smnas.models.registry import BACKBONES, NAMED_BACKBONES, named_encoding
from smnas.models.trunks import InvertedResidualBackbone, ResNetBackbone


# The builder of each block family (smnas.models.registry lists the families' named backbones).
_BUILDERS = {
    "basicblock": ResNetBackbone,
    "bottleneck": ResNetBackbone,
    "Xbottleneck": ResNetBackbone,
    "invres": lambda enc, norm: InvertedResidualBackbone(encoding=enc, norm=norm),
}


def build_backbone(name: str, width: float = 1.0, norm: NormKind = "bn", weights: str | Path | None = None) -> nn.Module:
    """Build a backbone from a name in BACKBONES or an encoding string.

    Args:
        name: ``resnet18`` ... ``mobilenetv2``, or an encoding such as ``basicblock_64_1-21-21-12``
            (with SP-NAS parallel counts, ``basicblock_64_1-21-21-12_0-1-0-2``, a ParallelResNetBackbone).
        width: channel multiplier for named backbones (1.0 = the paper's; 0.25 for a laptop).
        norm: ``"bn"`` or ``"gnws"`` (GroupNorm + Weight Standardization, training from scratch).
        weights: a local state_dict file (e.g. torchvision ImageNet weights); never downloaded.

    Returns:
        A module with ``levels`` (list[Level]) whose forward maps (B, 3, H, W) to P1..P4.
    """
    if name == "mobilenetv2":  # torchvision's own widths (the registry's layout only seeds stage two)
        model: nn.Module = InvertedResidualBackbone(width=width, norm=norm)
    elif name in NAMED_BACKBONES:
        model = _BUILDERS[NAMED_BACKBONES[name].block](named_encoding(name, width), norm)
    elif "_" in name:
        enc = parse_encoding(name)
        if width != 1.0:
            raise SpecError(f"{name}: an encoding sets its own channels; a width multiplier applies to named backbones only")
        model = ParallelResNetBackbone(enc, norm) if enc.parallel else _BUILDERS[enc.block](enc, norm)
    else:
        raise SpecError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)} or an encoding like basicblock_64_1-21-21-12")
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint (a state_dict, or a dict with key "state_dict"/"model") into ``model``.

    Keys the backbone does not have (a classifier ``fc.*``/``classifier.*``) are ignored; a key
    the backbone needs but the file lacks, or a shape mismatch, is an error naming both.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"backbone weights file {path} does not exist (weights are never downloaded; put the file there)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if isinstance(model, InvertedResidualBackbone) and any(k.startswith("features.") for k in state):
        state = _mobilenet_keys(state)  # torchvision's mobilenet_v2; our own state_dicts load as they are
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise SpecError(f"{path}: weights lack {len(missing)} backbone keys, e.g. {missing[:3]}")
    extra = [k for k in state if k not in own and not k.startswith(("fc.", "classifier."))]
    if extra:
        raise SpecError(f"{path}: weights hold {len(extra)} keys this backbone lacks, e.g. {extra[:3]} "
                        "(a checkpoint of another architecture?)")
    for k, v in own.items():
        if state[k].shape != v.shape:
            raise SpecError(f"{path}: {k} has shape {tuple(state[k].shape)}, the backbone needs {tuple(v.shape)}")
    model.load_state_dict({k: state[k] for k in own})


def _mobilenet_keys(state: dict) -> dict:
    """Map torchvision mobilenet_v2 keys ``features.N.*`` to our ``stages.S.N.*``.

    Slicing an ``nn.Sequential`` keeps its children's names, so block N stays "N" in its stage.
    """
    bounds = (0, *(e + 1 for e in InvertedResidualBackbone._MOBILENET_ENDS))
    out = {}
    for k, v in state.items():
        if not k.startswith("features."):
            continue
        idx, rest = k.split(".", 2)[1:]
        idx = int(idx)
        for s in range(4):
            if bounds[s] <= idx < bounds[s + 1]:
                out[f"stages.{s}.{idx}.{rest}"] = v
    return out
