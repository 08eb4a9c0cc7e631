"""Costs known before training: MACs of a candidate's modules at its input size.

Stage two ranks and prunes by a cost that is cheap to compute for an untrained model (SM-NAS,
Yao et al., AAAI 2020: FLOPs rank backbones of one block type more stably than measured time, and
stay comparable when BN becomes GN+WS). Counted on the meta device: shapes only, no arithmetic,
so a ResNet-101 at 1333x800 costs ~0.1 s, and results are cached per process.
"""
from __future__ import annotations

import functools
import math

from smnas.errors import SmnasError
from smnas.models.spec import DetectorSpec


@functools.lru_cache(maxsize=65536)
def _backbone_gmacs(name: str, width: float, input_size: tuple[int, int]) -> float:
    # BN is built in place of GN+WS: normalisation adds no multiply-accumulates to the count.
    import torch  # here: the search's bookkeeping imports this module, and torch takes seconds

    from smnas.engine.measure import count_macs
    from smnas.models.backbones import build_backbone

    w, h = input_size
    with torch.device("meta"):
        model = build_backbone(name, width, norm="bn")
        x = torch.empty(1, 3, h, w)
    return count_macs(model, x) / 1e9


def backbone_gmacs(spec: DetectorSpec) -> float:
    """GMACs of ``spec``'s backbone alone at its input size (stage two's cost), cached.

    Convolutions and matmuls are counted by :func:`smnas.engine.measure.count_macs`.
    """
    value = _backbone_gmacs(spec.backbone.name, spec.backbone.width, tuple(spec.input_size))
    if not math.isfinite(value):
        raise SmnasError(f"{spec}: backbone MACs are not finite ({value})")
    return value
