"""The paper's final models E0..E5: valid specs inside the paper's stage-two space, and they build.

Their backbones are encodings read as the SM-NAS paper reads them (Yao et al., AAAI 2020,
Sec. 3.2). That reading is checked against published figures of the classifiers the encodings
name: an encoding of ResNet-18/34/101 or ResNeXt-50/101 must have that network's published
parameter count (less its 1000-way fc layer) and multiply-accumulates at 224x224. No cost figures
of E0..E5 themselves are checked: the paper's tables were not available to quote from.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from smnas.engine.measure import count_macs, count_params
from smnas.models.backbones import build_backbone
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.encoding import EncodingBounds, check_encoding, parse_encoding
from smnas.models.paper import PAPER_MODELS
from smnas.models.spec import parse_spec

torch.set_num_threads(1)


def test_names_and_fields():
    assert list(PAPER_MODELS) == ["E0", "E1", "E2", "E3", "E4", "E5"]
    e4 = parse_spec(PAPER_MODELS["E4"])
    assert e4.backbone.name == "Xbottleneck_56_21-21-111111111111111-2111111"
    assert (e4.neck.first, e4.neck.last, e4.neck.channels) == (1, 5, 256)
    assert e4.rpn.kind == "garpn" and (e4.head.kind, e4.head.stages, e4.head.fc) == ("cascade", 3, 1024)
    assert e4.input_size == (800, 600) and e4.norm == "bn"
    assert parse_spec(PAPER_MODELS["E5"]).input_size == (1333, 800)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_parses_round_trips_and_is_in_the_paper_space(name):
    text = PAPER_MODELS[name]
    spec = parse_spec(text)
    assert str(spec) == text
    enc = check_encoding(parse_encoding(spec.backbone.name), EncodingBounds.paper())
    assert enc.doublings == 3


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_backbone_runs_at_a_small_input(name):
    enc = parse_encoding(parse_spec(PAPER_MODELS[name]).backbone.name)
    expansion = 1 if enc.block == "basicblock" else 4
    backbone = build_backbone(str(enc)).eval()
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, 96, 128))  # (B, 3, H, W)
    expected = [widths[-1] * expansion for widths in enc.stage_channels()]
    assert [lvl.channels for lvl in backbone.levels] == expected
    assert [tuple(x.shape) for x in out.values()] == [
        (1, c, 96 // s, 128 // s) for c, s in zip(expected, (4, 8, 16, 32))]


def test_level_channels_of_two_models():
    e0 = build_backbone(parse_spec(PAPER_MODELS["E0"]).backbone.name)
    e3 = build_backbone(parse_spec(PAPER_MODELS["E3"]).backbone.name)
    assert [lvl.channels for lvl in e0.levels] == [64, 128, 256, 512]
    assert [lvl.channels for lvl in e3.levels] == [448, 448, 896, 1792]


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_whole_detector_builds(name):
    model = build_detector(parse_spec(PAPER_MODELS[name]), DetectorOptions(num_classes=80))
    assert sum(p.numel() for p in model.parameters()) > 1e7


@pytest.mark.parametrize("name", ["E0", "E4"])
def test_detector_runs_when_shrunk(name):
    """The whole architecture (E4: GA-RPN + Cascade) runs end to end at 128x96 in eval mode."""
    torch.manual_seed(0)
    spec = replace(parse_spec(PAPER_MODELS[name]), input_size=(128, 96))
    model = build_detector(spec, DetectorOptions(num_classes=80, rpn_pre_nms_top_n=100, rpn_post_nms_top_n=50)).eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 96, 128)])
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])


# Published ImageNet classifiers, as (encoding of the trunk, parameters with the 1000-way fc layer,
# GMACs at 224x224). The torchvision model pages, https://pytorch.org/vision/stable/models/generated/
# torchvision.models.<name>.html, list "num_params" and "GFLOPS"; their GFLOPS count one
# multiply-add as one operation (ResNet-50: 4.09), i.e. they are our MACs (FlopCounterMode / 2).
# torchvision's bottleneck strides in its 3x3 conv ("ResNet V1.5", its resnet50 docstring), as ours
# does; He et al. (2016) stride in the 1x1 conv, which costs fewer MACs, so their own figures for
# the bottleneck ResNets are not comparable. ResNet-50 itself is checked in tests/test_measure.py.
_RESNET101 = "bottleneck_64_111-2111-2" + "1" * 22 + "-211"
_RESNEXT101 = "Xbottleneck_64_111-2111-2" + "1" * 22 + "-211"
TORCHVISION_PUBLISHED = [
    # resnet18 page, ResNet18_Weights.IMAGENET1K_V1: num_params 11689512, GFLOPS 1.81
    pytest.param("basicblock_64_11-21-21-21", 11_689_512, 1.81, id="resnet18"),
    # resnet34 page, ResNet34_Weights.IMAGENET1K_V1: num_params 21797672, GFLOPS 3.66
    pytest.param("basicblock_64_111-2111-211111-211", 21_797_672, 3.66, id="resnet34"),
    # ResNet101_Weights.IMAGENET1K_V1.meta in torchvision 0.29, which the resnet101 page renders:
    # num_params 44549160, GFLOPS ("_ops") 7.801
    pytest.param(_RESNET101, 44_549_160, 7.80, id="resnet101"),
    # resnext50_32x4d page, ResNeXt50_32X4D_Weights.IMAGENET1K_V1: num_params 25028904, GFLOPS 4.23
    pytest.param("Xbottleneck_64_111-2111-211111-211", 25_028_904, 4.23, id="resnext50_32x4d"),
]
# ResNeXt-101 32x4d (SM-NAS's Xbottleneck at depth 101) has no torchvision weights. timm's model
# card, https://huggingface.co/timm/resnext101_32x4d.gluon_in1k (README, "Model Stats"): Params (M)
# 44.2, GMACs 8.0, image size 224 x 224.
RESNEXT101_32X4D_PARAMS_M, RESNEXT101_32X4D_GMACS = 44.2, 8.0
# Published GMACs have 2-3 significant digits (8.0: +-0.6%) and include the fc layer and pooling
# (< 0.1% of a ResNet's MACs), so 1% separates rounding from a wrong block layout (one block more
# or less in a ResNet-18 stage is over 5%).
MACS_REL_TOL = 0.01


def _on_meta(encoding: str) -> tuple[nn.Module, torch.Tensor]:
    """Our backbone for ``encoding`` and a 224x224 image, built on the meta device: shapes only."""
    with torch.device("meta"):
        return build_backbone(encoding), torch.empty(1, 3, 224, 224)  # image (B, 3, H, W)


def _fc_params(backbone: nn.Module) -> int:
    """Parameters of the 1000-way classifier the published counts include and a backbone lacks."""
    return backbone.levels[-1].channels * 1000 + 1000


@pytest.mark.parametrize("encoding,published_params,published_gmacs", TORCHVISION_PUBLISHED)
def test_encoding_has_the_published_size_of_the_torchvision_network(
    encoding: str, published_params: int, published_gmacs: float
) -> None:
    backbone, image = _on_meta(encoding)
    assert count_params(backbone) == published_params - _fc_params(backbone)
    assert count_macs(backbone, image) / 1e9 == pytest.approx(published_gmacs, rel=MACS_REL_TOL)


def test_xbottleneck_101_is_resnext101_32x4d() -> None:
    backbone, image = _on_meta(_RESNEXT101)
    with torch.device("meta"):
        # torchvision's own ResNet class in the ResNeXt paper's 32x4d configuration.
        reference = ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)
    assert count_params(backbone) == count_params(reference) - count_params(reference.fc)
    with_fc = count_params(backbone) + _fc_params(backbone)
    assert with_fc / 1e6 == pytest.approx(RESNEXT101_32X4D_PARAMS_M, abs=0.05)  # published to 0.1 M
    assert count_macs(backbone, image) / 1e9 == pytest.approx(RESNEXT101_32X4D_GMACS, rel=MACS_REL_TOL)
