"""Normalisation choices: BatchNorm, or GroupNorm + Weight Standardization (GN+WS).

SM-NAS trains stage-two candidates from scratch with small per-GPU batches, where BatchNorm's
batch statistics are noisy; GroupNorm (Wu & He, 2018) does not depend on the batch, and Weight
Standardization (Qiao et al., 2019) smooths the loss landscape so a larger learning rate works.
Final models switch back to BatchNorm, which folds into the conv at inference and is faster.

Usage::

    backbone = to_gnws(torchvision.models.resnet50())   # in place, BN -> GN, Conv2d -> WSConv2d
    norm_kind_of(backbone)                              # "gnws"
    to_bn(backbone)                                     # for final training, fresh BN params
    block = torchvision.models.resnet.BasicBlock(64, 64, norm_layer=norm_layer("gnws"))
"""

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from smnas.errors import SpecError

NormKind = Literal["bn", "gnws"]
NORM_KINDS: tuple[str, ...] = get_args(NormKind)

WS_EPS = 1e-5
# BatchNorm flavours that to_gnws replaces; SyncBatchNorm appears after convert_sync_batchnorm.
_BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is standardised per output channel before every forward.

    For each output channel ``o`` the weight ``W[o]`` (``in_channels / groups * kh * kw`` values)
    becomes ``(W[o] - mean(W[o])) / sqrt(var(W[o]) + 1e-5)`` with the population variance, so
    the convolution actually applied has zero mean and (up to eps) unit variance per output
    channel. The stored parameter stays unstandardised; gradients flow through the
    standardisation. Same constructor as ``nn.Conv2d``.

    Raises:
        ValueError: a fan-in of 1 (e.g. a 1x1 depthwise conv) would standardise to all zeros.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        fan_in = self.weight[0].numel()
        if fan_in < 2:
            raise ValueError(
                f"WSConv2d: fan-in per output channel is {fan_in} (in_channels={self.in_channels}, "
                f"groups={self.groups}, kernel={self.kernel_size}); weight standardisation needs "
                "at least 2 weights per output channel, otherwise every weight becomes 0"
            )

    def standardized_weight(self) -> Tensor:
        """Returns:
        Tensor[out_channels, in_channels / groups, kh, kw]: the weight the forward uses.
        """
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
        return (w - mean) / torch.sqrt(var + WS_EPS)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: Tensor[N, in_channels, H, W].

        Returns:
            Tensor[N, out_channels, H', W'].
        """
        return self._conv_forward(x, self.standardized_weight(), self.bias)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count that divides ``channels``, is <= max_groups, and
    leaves at least 2 channels per group.

    The usual 32 groups do not divide the narrow widths of laptop-sized models (12, 24
    channels), so the count adapts: 64 -> 32, 32 -> 16, 24 -> 12, 12 -> 6, 3 -> 1, 56 -> 28.
    Two channels per group keep a 1x1 map (a P6 level of a small image) normalisable in training.

    Args:
        channels: number of channels C of the (N, C, H, W) input, >= 1.
        max_groups: upper bound on the group count, >= 1.

    Returns:
        An affine ``nn.GroupNorm(groups, channels)``.
    """
    if channels < 1 or max_groups < 1:
        raise ValueError(f"group_norm: channels ({channels}) and max_groups ({max_groups}) must be >= 1")
    groups = max(g for g in range(1, max(1, min(channels // 2, max_groups)) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _check_kind(kind: str) -> None:
    if kind not in NORM_KINDS:
        raise SpecError(f"unknown norm kind {kind!r}; expected one of {', '.join(NORM_KINDS)}")


def norm_layer(kind: NormKind) -> Callable[[int], nn.Module]:
    """Factory for torchvision's ``norm_layer=`` argument (called with the channel count).

    Args:
        kind: "bn" (``nn.BatchNorm2d``) or "gnws" (``group_norm``, used with ``WSConv2d``).

    Returns:
        A callable ``channels -> nn.Module`` normalising (N, channels, H, W) tensors.
    """
    _check_kind(kind)
    return nn.BatchNorm2d if kind == "bn" else group_norm


def conv_layer(kind: NormKind) -> type[nn.Conv2d]:
    """The conv class that goes with a norm kind: ``nn.Conv2d`` for "bn", ``WSConv2d`` for "gnws".

    Args:
        kind: "bn" or "gnws".

    Returns:
        A subclass of ``nn.Conv2d`` with ``nn.Conv2d``'s constructor.
    """
    _check_kind(kind)
    return nn.Conv2d if kind == "bn" else WSConv2d


def _copy_conv(conv: nn.Conv2d, cls: type[nn.Conv2d], weight: Tensor) -> nn.Conv2d:
    new = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _num_features(bn: nn.Module) -> int:
    return bn.weight.shape[0]  # FrozenBatchNorm2d has no num_features attribute


def _gnws_replacement(child: nn.Module, path: str) -> nn.Module | None:
    if isinstance(child, WSConv2d):
        return None
    if type(child) is nn.Conv2d:
        return _copy_conv(child, WSConv2d, child.weight)
    if isinstance(child, nn.Conv2d):
        raise TypeError(
            f"to_gnws: module {path!r} is a {type(child).__name__}, a subclass of nn.Conv2d with "
            "its own forward; converting it would drop that behaviour"
        )
    if isinstance(child, _BN_TYPES):
        ref = child.weight
        return group_norm(_num_features(child)).to(device=ref.device, dtype=ref.dtype)
    return None


def _bn_replacement(child: nn.Module, path: str) -> nn.Module | None:
    if isinstance(child, WSConv2d):
        # Copy the standardised weight so the plain conv computes exactly what the WS conv did.
        return _copy_conv(child, nn.Conv2d, child.standardized_weight().detach())
    if isinstance(child, nn.GroupNorm):
        ref = child.weight if child.weight is not None else torch.empty(0)
        return nn.BatchNorm2d(child.num_channels).to(device=ref.device, dtype=ref.dtype)
    return None


def _replace(module: nn.Module, rule: Callable[[nn.Module, str], nn.Module | None], path: str) -> nn.Module:
    new = rule(module, path or "<root>")
    if new is not None:
        return new.train(module.training)  # a fresh module would otherwise be in training mode
    for name, child in module.named_children():
        replaced = _replace(child, rule, f"{path}.{name}" if path else name)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that keeps the statistics it was loaded with: it normalises with its
    running mean and variance in training too and never updates them, while its affine weight and
    bias still learn (mmdetection's ``norm_eval=True``, the SM-NAS authors' setting for pretrained
    backbones; torchvision's detectors go further and freeze the affine part as well, with
    ``FrozenBatchNorm2d``). Same parameters and buffers, so the same state dict, as BatchNorm2d.

    A detector fine-tuned at batch 4 on small images otherwise replaces its pretrained statistics
    with noisy batch ones, which costs deep backbones most (docs/evidence.md section 2).
    """

    def train(self, mode: bool = True) -> "FrozenStatsBatchNorm2d":
        return super().train(False)


def freeze_bn_statistics(module: nn.Module) -> int:
    """Replace every plain ``nn.BatchNorm2d`` in ``module`` by a :class:`FrozenStatsBatchNorm2d`
    with the same weights and statistics, in place.

    Args:
        module: e.g. a pretrained backbone; its children are replaced.

    Returns:
        How many layers were replaced.
    """
    count = 0

    def rule(child: nn.Module, path: str) -> nn.Module | None:
        nonlocal count
        if type(child) is not nn.BatchNorm2d:
            return None
        frozen = FrozenStatsBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)
        frozen.load_state_dict(child.state_dict())
        count += 1
        return frozen.to(device=child.running_mean.device)

    if type(module) is nn.BatchNorm2d:
        raise ValueError("freeze_bn_statistics replaces the BatchNorm layers inside a module, not the module itself")
    _replace(module, rule, "")
    return count


def to_gnws(module: nn.Module) -> nn.Module:
    """Convert a module to GN+WS in place: Conv2d -> WSConv2d, BatchNorm -> GroupNorm.

    Every plain ``nn.Conv2d`` becomes a ``WSConv2d`` with the same hyper-parameters, weights and
    bias; every ``BatchNorm2d`` / ``SyncBatchNorm`` / torchvision ``FrozenBatchNorm2d`` becomes a
    fresh ``group_norm(num_features)``. Works on torchvision resnet/resnext/mobilenet_v2.

    Args:
        module: any module; children are replaced in place.

    Returns:
        ``module`` itself, or its replacement when ``module`` is itself a conv or a BN layer.

    Raises:
        TypeError: a subclass of ``nn.Conv2d`` other than ``WSConv2d`` is found (named by path).
        ValueError: a conv with a fan-in of 1 cannot be weight-standardised.
    """
    return _replace(module, _gnws_replacement, "")


def to_bn(module: nn.Module) -> nn.Module:
    """Convert a module to BN in place: WSConv2d -> nn.Conv2d, GroupNorm -> BatchNorm2d.

    The plain conv receives the *standardised* weight, so it computes what the WS conv computed;
    each BatchNorm2d is freshly initialised (final training re-learns its statistics).

    Args:
        module: any module; children are replaced in place.

    Returns:
        ``module`` itself, or its replacement when ``module`` is itself a WS conv or a GroupNorm.
    """
    return _replace(module, _bn_replacement, "")


def norm_kind_of(module: nn.Module) -> NormKind:
    """Which normalisation a module uses.

    "bn": BatchNorm layers (any flavour) and no ``WSConv2d``. "gnws": ``GroupNorm`` and
    ``WSConv2d`` and no BatchNorm. Plain convs without a norm (e.g. an FPN's) do not decide.

    Args:
        module: the module to inspect (all descendants are visited).

    Returns:
        "bn" or "gnws".

    Raises:
        ValueError: both kinds are present, GroupNorm appears without weight standardisation (or
            the reverse), or the module has no normalisation layer at all; the message names one
            offending layer of each kind.
    """
    found: dict[str, str] = {}
    for name, m in module.named_modules():
        key = ("bn" if isinstance(m, _BN_TYPES) else "gn" if isinstance(m, nn.GroupNorm)
               else "ws" if isinstance(m, WSConv2d) else None)
        if key is not None:
            found.setdefault(key, name or "<root>")
    where = ", ".join(f"{k} at {v!r}" for k, v in found.items())
    if not found:
        raise ValueError("norm_kind_of: no BatchNorm, GroupNorm or WSConv2d layer found")
    if set(found) == {"bn"}:
        return "bn"
    if set(found) == {"gn", "ws"}:
        return "gnws"
    if "bn" in found:
        raise ValueError(f"norm_kind_of: mixed normalisation: {where}")
    raise ValueError(f"norm_kind_of: GroupNorm and WSConv2d must come together, found only {where}")

