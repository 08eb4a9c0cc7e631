"""Costs known before training: MACs and parameters of a detector at its input size.

Stage two ranks and prunes by a cost that is cheap to compute for an untrained model (SM-NAS,
Yao et al., AAAI 2020: FLOPs rank backbones of one block type more stably than measured time, and
stay comparable when BN becomes GN+WS). The paper counts the backbone; since stage two also
searches the FPN's channels (and the heads' input channels follow them), the cost here counts
every module stage two changes, or a wider FPN would be free.

Everything is counted on the meta device (shapes only, no arithmetic: a ResNet-101 detector at
1333x800 in well under a second) and is a function of the spec and the options alone:

- backbone and neck: convolutions and matmuls traced by :func:`smnas.engine.measure.count_macs`
  on one image of the input size, padded to a multiple of 32 as the detector's transform does;
- dense heads (RPN, guided-anchoring RPN, RetinaNet): their convolutions all run at stride 1 at
  every position of every level, so each adds ``weight.numel() x H_l x W_l`` per level;
- RoI heads (2FC, each Cascade stage): each linear layer runs once per proposal, and proposals are
  the test-time count the options set (``rpn_post_nms_top_n // 2``), not what survives NMS on
  some image, so the figure does not depend on weights or data.

RoIAlign, NMS and elementwise ops are not counted, as in the papers. MACs = FLOPs / 2.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from smnas.errors import SmnasError
from smnas.models.spec import DetectorSpec, parse_spec

if TYPE_CHECKING:
    from torch import nn

    from smnas.models.build import DetectorOptions

SIZE_DIVISIBLE = 32  # GeneralizedRCNNTransform pads batched images to a multiple of this


def detector_cost(spec: DetectorSpec, opts: "DetectorOptions") -> dict[str, Any]:
    """Parameters and GMACs of the detector ``spec`` and of its backbone alone.

    Args:
        spec: the detector (its norm does not matter: normalisation adds no multiply-accumulates).
        opts: class count and test-time proposal count (``rpn_post_nms_top_n // 2``).

    Returns:
        ``{"spec", "gmacs", "params", "backbone_gmacs", "backbone_params"}``; the backbone
        figures exclude the neck and any classifier.
    """
    proposals = opts.rpn_post_nms_top_n // 2
    return dict(_detector_cost(str(spec), opts.num_classes, proposals))


@functools.lru_cache(maxsize=4096)
def _detector_cost(arch: str, num_classes: int, proposals: int) -> tuple[tuple[str, Any], ...]:
    import torch  # here: the search's bookkeeping imports this module, and torch takes seconds

    from smnas.engine.measure import count_macs, count_params
    from smnas.models.build import DetectorOptions, build_detector

    spec = parse_spec(arch).with_norm("bn")
    width, height = spec.input_size
    pad = lambda n: int(math.ceil(n / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)  # noqa: E731
    with torch.device("meta"):
        model = build_detector(spec, DetectorOptions(num_classes=num_classes))
        image = torch.empty(1, 3, pad(height), pad(width))
        features = model.backbone(image)
    body = model.backbone.body
    backbone_macs = count_macs(body, image)
    macs = count_macs(model.backbone, image)
    positions = sum(f.shape[-2] * f.shape[-1] for f in features.values())
    if spec.head.kind == "retina":
        macs += positions * _conv_weights(model.head)
    else:
        macs += positions * _conv_weights(model.rpn) + proposals * _linear_weights(model.roi_heads)
    out = {"spec": arch, "gmacs": macs / 1e9, "params": count_params(model),
           "backbone_gmacs": backbone_macs / 1e9, "backbone_params": count_params(body)}
    if not all(math.isfinite(v) for k, v in out.items() if k != "spec"):
        raise SmnasError(f"{arch}: cost is not finite ({out})")
    return tuple(out.items())


def _conv_weights(head: "nn.Module") -> int:
    """Multiply-accumulates per position of a dense head: the sum of its conv kernels' sizes."""
    total = 0
    for name, m in head.named_modules():
        weight = getattr(m, "weight", None)
        if weight is not None and weight.dim() == 4:
            stride = getattr(m, "stride", (1, 1))
            if tuple(stride) != (1, 1):
                raise SmnasError(f"dense head conv {name} has stride {stride}: the per-position count needs stride 1")
            total += weight.numel()  # C_out * C_in / groups * kh * kw
    return total


def _linear_weights(roi_heads: "nn.Module") -> int:
    """Multiply-accumulates per RoI of the RoI heads: every linear layer (all cascade stages)."""
    from torch import nn

    return sum(m.weight.numel() for m in roi_heads.modules() if isinstance(m, nn.Linear))


def backbone_gmacs(spec: DetectorSpec) -> float:
    """GMACs of ``spec``'s backbone alone at its input size, on the padded image the detector sees
    (the paper's stage-two cost; equal to :func:`detector_cost`'s ``backbone_gmacs``), cached."""
    w, h = spec.input_size
    pad = lambda n: int(math.ceil(n / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)  # noqa: E731
    return _backbone_gmacs(spec.backbone.name, spec.backbone.width, (pad(w), pad(h)))


@functools.lru_cache(maxsize=65536)
def _backbone_gmacs(name: str, width: float, input_size: tuple[int, int]) -> float:
    import torch

    from smnas.engine.measure import count_macs
    from smnas.models.backbones import build_backbone

    w, h = input_size
    with torch.device("meta"):
        model = build_backbone(name, width, norm="bn")
        x = torch.empty(1, 3, h, w)
    value = count_macs(model, x) / 1e9
    if not math.isfinite(value):
        raise SmnasError(f"backbone {name}@{width} at {w}x{h}: MACs are not finite ({value})")
    return value


def backbone_cost(encoding: str, input_size: tuple[int, int]) -> dict[str, Any]:
    """Parameters and GMACs of a backbone (a name or an encoding) alone at ``input_size`` (W, H)."""
    import torch

    from smnas.engine.measure import count_params
    from smnas.models.backbones import build_backbone

    with torch.device("meta"):
        params = count_params(build_backbone(encoding, norm="bn"))
    gmacs = _backbone_gmacs(encoding, 1.0, tuple(input_size))
    return {"spec": encoding, "backbone_params": params, "backbone_gmacs": gmacs, "params": params, "gmacs": gmacs}


def search_cost(name: str, opts: "DetectorOptions"):
    """The cost function a search stage minimises, as ``spec -> float``, by its column name.

    ``gmacs``: the whole detector (:func:`detector_cost`); ``backbone_gmacs``: the backbone alone
    (the paper's stage-two cost, blind to the FPN). ``latency_ms`` has no cost before training.
    """
    if name == "gmacs":
        return lambda spec: detector_cost(spec, opts)["gmacs"]
    if name == "backbone_gmacs":
        return backbone_gmacs
    raise SmnasError(f"cost {name!r} is not known before training; use gmacs or backbone_gmacs")
