"""The backbone trunks: ResNet/ResNeXt and MobileNetV2-style networks built from an encoding.

Every trunk returns ``OrderedDict[str, Tensor]`` keyed ``"P1".."P4"`` in the paper's naming
(strides 4, 8, 16, 32) and carries ``levels: list[Level]`` so a neck can size itself.

The ResNet family is built with torchvision's own ``BasicBlock``/``Bottleneck`` and the same
module names as ``torchvision.models.ResNet`` (``conv1``, ``bn1``, ``layer1``..``layer4``), so a
torchvision ImageNet checkpoint loads into the width-1.0 models unchanged. ResNeXt here is 32x4d
(as SM-NAS's ``Xbottleneck``), not torchvision's 32x8d for ResNeXt-101. MobileNetV2 is
torchvision's ``mobilenet_v2`` (``width_mult`` scales it); its 1280-channel classifier conv is left out.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from torchvision.ops.misc import Conv2dNormActivation

from smnas.errors import SpecError
from smnas.models.encoding import Encoding
from smnas.models.norm import NormKind, norm_layer, to_gnws


@dataclass(frozen=True)
class Level:
    """One feature map a backbone or neck outputs (detectron2's ShapeSpec)."""

    name: str  # "P1".."P6"
    channels: int
    stride: int


class ResNetBackbone(nn.Module):
    """A ResNet/ResNeXt trunk built from an encoding; forward returns P1..P4."""

    def __init__(self, encoding: Encoding, norm: NormKind = "bn") -> None:
        super().__init__()
        if len(encoding.stages) != 4:
            raise SpecError(f"{encoding}: a backbone needs 4 stages after the stem (strides 4..32), got {len(encoding.stages)}")
        if encoding.block not in ("basicblock", "bottleneck", "Xbottleneck"):
            raise SpecError(f"{encoding}: ResNetBackbone builds basicblock/bottleneck/Xbottleneck, not {encoding.block}")
        if encoding.parallel:  # never drop sub-networks silently
            raise SpecError(f"{encoding}: has parallel sub-networks; build it with build_backbone "
                            "(smnas.models.parallel.ParallelResNetBackbone)")
        self.encoding = encoding
        make_norm = norm_layer("bn")  # GN+WS is swapped in below, module names stay torchvision's
        base = encoding.base_channels
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block_cls = BasicBlock if encoding.block == "basicblock" else Bottleneck
        in_ch, levels = base, []
        for i, widths in enumerate(encoding.stage_channels()):
            blocks = []
            for j, width in enumerate(widths):
                stride = 2 if (i > 0 and j == 0) else 1
                block = self._block(block_cls, in_ch, width, stride, make_norm)
                blocks.append(block)
                in_ch = width * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            levels.append(Level(f"P{i + 1}", in_ch, 4 * 2**i))
        self.levels = levels
        if norm == "gnws":
            to_gnws(self)

    def _block(self, block_cls, in_ch: int, width: int, stride: int, make_norm) -> nn.Module:
        out_ch = width * block_cls.expansion
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), make_norm(out_ch))
        groups, base_width = 1, 64
        if self.encoding.block == "Xbottleneck":
            # ResNeXt 32x4d at width 64: 32 groups of 4. Narrower widths keep as many groups
            # (up to 32) as divide the grouped width 2 * width, so the formula stays exact.
            groups = math.gcd(32, 2 * width)
            base_width = 128 // groups
        return block_cls(in_ch, width, stride, downsample, groups=groups, base_width=base_width, norm_layer=make_norm)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """x: (B, 3, H, W) -> {"P1": (B, C1, H/4, W/4), ..., "P4": (B, C4, H/32, W/32)}."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = OrderedDict()
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            out[f"P{i + 1}"] = x
        return out


class InvertedResidualBackbone(nn.Module):
    """MobileNetV2-style trunk: torchvision's stem and ``InvertedResidual`` blocks; P1..P4.

    From a name (``mobilenetv2``) it is torchvision's ``mobilenet_v2(width_mult=width).features``
    up to the 320-channel block; from an ``invres`` encoding, a stem (3x3 conv stride 2, an
    expansion-1 block, a stride-2 block to stride 4) then the encoded blocks, expansion 6.
    """

    # torchvision mobilenet_v2 feature indices that end strides 4, 8, 16, 32 (before the 1280 conv)
    _MOBILENET_ENDS = (3, 6, 13, 17)

    def __init__(self, width: float = 1.0, encoding: Encoding | None = None, norm: NormKind = "bn") -> None:
        super().__init__()
        make_norm = norm_layer("bn")
        if encoding is None:
            features = mobilenet_v2(weights=None, width_mult=width, norm_layer=make_norm).features
            bounds = (0, *(e + 1 for e in self._MOBILENET_ENDS))
            stages = [features[bounds[i]:bounds[i + 1]] for i in range(4)]
        else:
            stages = self._stages_from_encoding(encoding, make_norm)
        self.stages = nn.ModuleList(stages)
        self.levels = [
            Level(f"P{i + 1}", self._out_channels(stage), 4 * 2**i) for i, stage in enumerate(stages)
        ]
        if norm == "gnws":
            to_gnws(self)

    @staticmethod
    def _out_channels(stage: nn.Sequential) -> int:
        return stage[-1].out_channels

    @staticmethod
    def _stages_from_encoding(encoding: Encoding, make_norm) -> list[nn.Sequential]:
        if len(encoding.stages) != 4:
            raise SpecError(f"{encoding}: a backbone needs 4 stages after the stem, got {len(encoding.stages)}")
        if encoding.parallel:
            raise SpecError(f"{encoding}: parallel sub-networks are built for basicblock/bottleneck/Xbottleneck, not invres")
        base = encoding.base_channels
        stem_ch = max(8, base // 2)
        stem = [
            Conv2dNormActivation(3, stem_ch, stride=2, norm_layer=make_norm, activation_layer=nn.ReLU6),
            InvertedResidual(stem_ch, stem_ch, 1, expand_ratio=1, norm_layer=make_norm),
            InvertedResidual(stem_ch, base, 2, expand_ratio=6, norm_layer=make_norm),
        ]
        stages, in_ch = [], base
        for i, widths in enumerate(encoding.stage_channels()):
            blocks = stem if i == 0 else []
            for j, width in enumerate(widths):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(InvertedResidual(in_ch, width, stride, expand_ratio=6, norm_layer=make_norm))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        return stages

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """x: (B, 3, H, W) -> {"P1": stride 4, ..., "P4": stride 32}."""
        out = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[f"P{i + 1}"] = x
        return out
