"""Feature-fusion necks: none (the backbone's last map) or an FPN over a range of levels.

Levels use the paper's names: P1..P4 come from the backbone (strides 4..32), P5 and P6 (strides
64, 128) from extra stride-2 3x3 convs on the top FPN output, as RetinaNet makes its P6/P7.
Built on ``torchvision.ops.FeaturePyramidNetwork``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from smnas.errors import SpecError
from smnas.models.trunks import Level
from smnas.models.norm import NormKind, norm_layer, to_gnws

MAX_LEVEL = 6  # P6, stride 128


class ExtraLevels(ExtraFPNBlock):
    """Adds ``count`` levels after the FPN's top one, each a stride-2 3x3 conv (ReLU between)."""

    def __init__(self, channels: int, count: int, first_index: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(count))
        self.first_index = first_index
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]):
        x = results[-1]
        for i, conv in enumerate(self.convs):
            x = conv(x if i == 0 else F.relu(x))
            results.append(x)
            names.append(f"P{self.first_index + i}")
        return results, names


class FPNNeck(nn.Module):
    """FPN over levels ``P{first}..P{last}`` with ``channels`` channels on every output.

    Args:
        in_levels: the backbone's levels (P1..P4 with channels and strides).
        first, last: the output range, 1 <= first <= 4 (the range must start inside the
            backbone), first <= last <= 6.
        channels: output channels of every level.
        norm: "bn" leaves torchvision's FPN as is (no norm); "gnws" adds GroupNorm and WS convs.
    """

    def __init__(self, in_levels: list[Level], first: int, last: int, channels: int, norm: NormKind = "bn") -> None:
        super().__init__()
        top = int(in_levels[-1].name[1:])
        if not (1 <= first <= top and first <= last <= MAX_LEVEL):
            raise SpecError(
                f"FPN range P{first}-P{last} is not available: it must start at a backbone level "
                f"P1..P{top} and end at or before P{MAX_LEVEL}, with first <= last"
            )
        used = [lvl for lvl in in_levels if first <= int(lvl.name[1:]) <= last]
        extra = max(0, last - top)
        self.in_names = [lvl.name for lvl in used]
        self.fpn = FeaturePyramidNetwork(
            [lvl.channels for lvl in used], channels,
            extra_blocks=ExtraLevels(channels, extra, top + 1) if extra else None,
            norm_layer=norm_layer("gnws") if norm == "gnws" else None,
        )
        if norm == "gnws":
            to_gnws(self.fpn)
        self.levels = [Level(lvl.name, channels, lvl.stride) for lvl in used] + [
            Level(f"P{top + 1 + i}", channels, used[-1].stride * 2 ** (i + 1)) for i in range(extra)
        ]

    def forward(self, feats: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        """{P1..P4 backbone maps} -> {P{first}..P{last}: (B, channels, H/stride, W/stride)}."""
        out = self.fpn(OrderedDict((n, feats[n]) for n in self.in_names))
        return OrderedDict(out)


class LastLevel(nn.Module):
    """No neck: pass the backbone's last map on (plain Faster R-CNN / RetinaNet on one level)."""

    def __init__(self, in_levels: list[Level]) -> None:
        super().__init__()
        self.levels = [in_levels[-1]]

    def forward(self, feats: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        name = self.levels[0].name
        return OrderedDict([(name, feats[name])])


class BackboneWithNeck(nn.Module):
    """Backbone then neck; has ``out_channels`` (what torchvision detectors need) and ``levels``."""

    def __init__(self, body: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        self.levels: list[Level] = neck.levels
        channels = {lvl.channels for lvl in self.levels}
        if len(channels) != 1:
            raise SpecError(f"detector heads need one channel count on every level, got {sorted(channels)}")
        self.out_channels = channels.pop()

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.neck(self.body(x))
