"""SP-NAS's parallel backbone: sub-networks beside the stages of a serial ResNet trunk.

SP-NAS (Jiang et al., "SP-NAS: Serial-to-Parallel Backbone Search for Object Detection", CVPR
2020) first searches a serial block sequence, then assembles copies of its stages side by side
with it. Here the encoding's 4th field gives the count ``k_s`` per stage
(``basicblock_64_1-21-21-12_0-1-0-2``: one copy beside stage 2, two beside stage 4), and for
stage ``s``::

    x_in                                  # (B, C_in, H, W), the stage's input
    y = layer_s(x_in)                     # main path: (B, C_out, H/r, W/r)
    for m in range(k_s):                  # each copy has its own weights
        z = parallel_s[m](x_in)           # the same blocks and strides: (B, C_out, H/r, W/r)
        y = y + merge_s[m](z)             # 1x1 conv + norm (BN, or GN+WS like the trunk)

A copy has the stage's blocks and strides, so its output already has the main path's size; the
merge resamples (nearest) only if sizes ever differed, which they do not for this construction.
``levels`` (channels and strides of P1..P4) are the serial trunk's, so necks size themselves the
same way. Module names: the trunk keeps torchvision's (``conv1``, ``bn1``, ``layer1..4``); copy
``m`` of stage ``s`` is ``parallel{s}.{m}`` (an ``nn.Sequential`` of blocks) and its merge
``merge{s}.{m}`` (``0``: conv, ``1``: norm). With no sub-network the module is exactly the serial
``ResNetBackbone``: same keys, same outputs.

Differences from the authors' code (huawei-noah/vega, ``sp_nas/spnet/spnet.py``), chosen for a
simple, separately trainable module: there a copy shares the main stage's weights, chains from the
previous stage's copy, and is merged into the main stage's *input* (1x1 conv to the input's
channels, upsampled). Weight inheritance (:mod:`smnas.models.morph`) starts each new copy as the
trained stage and its merge at zero, so adding copies keeps the serial network's function.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from smnas.errors import SpecError
from smnas.models.trunks import ResNetBackbone
from smnas.models.encoding import Encoding
from smnas.models.norm import NormKind, norm_layer, to_gnws

PARALLEL_BLOCKS = ("basicblock", "bottleneck", "Xbottleneck")


class ParallelResNetBackbone(ResNetBackbone):
    """A ResNet/ResNeXt trunk with ``encoding.parallel[s]`` copies beside stage ``s``.

    Args:
        encoding: a 4-stage encoding of a ResNet block family; ``parallel`` may be ``()``.
        norm: ``"bn"`` or ``"gnws"``; copies and merges use the trunk's normalisation.

    Forward maps (B, 3, H, W) to ``{"P1": (B, C1, H/4, W/4), ..., "P4": (B, C4, H/32, W/32)}``
    with the channels of ``levels``.
    """

    def __init__(self, encoding: Encoding, norm: NormKind = "bn") -> None:
        if encoding.block not in PARALLEL_BLOCKS:
            raise SpecError(f"{encoding}: parallel sub-networks are built for {'/'.join(PARALLEL_BLOCKS)}, "
                            f"not {encoding.block}")
        # The trunk is built with BN and converted once below, copies and merges included.
        super().__init__(encoding.serial, norm="bn")
        self.encoding = encoding
        make_norm = norm_layer("bn")
        for s, count in enumerate(encoding.parallel):
            if count:
                out_ch = self.levels[s].channels
                self.add_module(f"parallel{s + 1}", nn.ModuleList(self._stage_copy(s, make_norm) for _ in range(count)))
                self.add_module(f"merge{s + 1}", nn.ModuleList(
                    nn.Sequential(conv1x1(out_ch, out_ch), make_norm(out_ch)) for _ in range(count)))
        if norm == "gnws":
            to_gnws(self)

    def _stage_copy(self, s: int, make_norm) -> nn.Sequential:
        """Fresh blocks of stage ``s`` (0-based), built as the trunk builds them."""
        block_cls = BasicBlock if self.encoding.block == "basicblock" else Bottleneck
        in_ch = self.encoding.base_channels if s == 0 else self.levels[s - 1].channels
        blocks = []
        for j, width in enumerate(self.encoding.stage_channels()[s]):
            stride = 2 if (s > 0 and j == 0) else 1
            blocks.append(self._block(block_cls, in_ch, width, stride, make_norm))
            in_ch = width * block_cls.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """x: (B, 3, H, W) -> {"P1": (B, C1, H/4, W/4), ..., "P4": (B, C4, H/32, W/32)}."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = OrderedDict()
        for s in range(len(self.levels)):
            x_in = x
            x = getattr(self, f"layer{s + 1}")(x_in)  # (B, C_s, H_s, W_s)
            if self.encoding.parallel and self.encoding.parallel[s]:
                copies, merges = getattr(self, f"parallel{s + 1}"), getattr(self, f"merge{s + 1}")
                for copy, merge in zip(copies, merges):
                    z = merge(copy(x_in))
                    if z.shape[-2:] != x.shape[-2:]:
                        z = F.interpolate(z, size=x.shape[-2:], mode="nearest")
                    x = x + z
            out[f"P{s + 1}"] = x
        return out


def parallel_module_names(encoding: Encoding) -> list[str]:
    """The names of the copies and merges ``encoding`` adds (``parallel2.0``, ``merge2.0``, ...).

    Args:
        encoding: any encoding; ``()`` parallel counts give an empty list.

    Returns:
        For each stage ``s`` (1-based) and copy ``m``: ``parallel{s}.{m}`` then ``merge{s}.{m}``.
    """
    return [f"{kind}{s + 1}.{m}" for s, k in enumerate(encoding.parallel) for m in range(k)
            for kind in ("parallel", "merge")]

