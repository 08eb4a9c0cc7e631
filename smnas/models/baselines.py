"""Hand-designed detectors the searched ones are measured against, as spec templates.

The standard FPN detectors (Lin et al., CVPR 2017; as torchvision and detectron2 build them): an
FPN over the backbone's strides 4..32 plus an extra stride-64 level (our P1-P5; our P1..P4 are
strides 4..32) for the two-stage heads, strides 8..128 (P2-P6) for RetinaNet (Lin et al., ICCV
2017), Cascade R-CNN with 3 stages (Cai & Vasconcelos, CVPR 2018). At paper scale: width 1.0, FPN
256 channels, FC 1024; on a laptop the search's own width multiplier, FPN channels, FC width and
input size, so that searched and hand-designed models are compared at one scale.
"""
from __future__ import annotations

from smnas.errors import SmnasError
from smnas.models.spec import DetectorSpec, parse_spec

BASELINES: dict[str, str] = {
    "faster_r18_fpn": "resnet18{w}+fpn:P1-P5:c{c}+rpn+2fc:{fc}+{size}+bn",
    "faster_r50_fpn": "resnet50{w}+fpn:P1-P5:c{c}+rpn+2fc:{fc}+{size}+bn",
    "retina_r50_fpn": "resnet50{w}+fpn:P2-P6:c{c}+none+retina+{size}+bn",
    "cascade_r50_fpn": "resnet50{w}+fpn:P1-P5:c{c}+rpn+cascade3:{fc}+{size}+bn",
}


def baseline_spec(name: str, width: float = 1.0, fpn_channels: int = 256, head_fc: int = 1024,
                  input_size: tuple[int, int] = (1333, 800)) -> DetectorSpec:
    """The baseline ``name`` at a scale (defaults: the paper's).

    Args:
        name: a key of :data:`BASELINES`.
        width: backbone width multiplier.
        fpn_channels: FPN (and so head) channels.
        head_fc: FC width of the R-CNN heads.
        input_size: (width, height).
    """
    if name not in BASELINES:
        raise SmnasError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    w, h = input_size
    text = BASELINES[name].format(w="" if width == 1.0 else f"@{width:g}", c=fpn_channels, fc=head_fc, size=f"{w}x{h}")
    return parse_spec(text)
