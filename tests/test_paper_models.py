"""The paper's final models E0..E5: valid specs inside the paper's stage-two space, and they build."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

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
