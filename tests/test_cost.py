"""Costs before training (smnas.engine.cost) against counts of real forward passes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from smnas.engine.cost import backbone_gmacs, detector_cost, search_cost
from smnas.engine.measure import count_macs
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.spec import parse_spec

OPTS = DetectorOptions(num_classes=6, rpn_post_nms_top_n=64)


def _real_macs(spec, opts):
    """MACs of one real forward (eval mode, a random image of the input size) and the RoIs it ran."""
    torch.manual_seed(0)
    model = build_detector(spec, opts).eval()
    rois = []
    if hasattr(model, "roi_heads"):
        model.roi_heads.box_head.register_forward_hook(lambda m, i, o: rois.append(i[0].shape[0]))
    w, h = spec.input_size
    return count_macs(model, [torch.rand(3, h, w)]), (rois[0] if rois else 0), model


def test_retina_cost_equals_a_real_forward_count():
    spec = parse_spec("resnet18@0.25+fpn:P2-P5:c32+none+retina+96x72+bn")
    real, _, _ = _real_macs(spec, OPTS)
    assert detector_cost(spec, OPTS)["gmacs"] * 1e9 == pytest.approx(real, rel=1e-9)


def test_two_stage_cost_equals_a_real_count_at_its_proposal_count():
    """Backbone, FPN and RPN head as traced; the RoI head once per proposal, however many there are."""
    spec = parse_spec("resnet18@0.25+fpn:P2-P4:c32+rpn+2fc:64+96x72+bn")
    real, rois, model = _real_macs(spec, OPTS)
    assert rois > 0
    per_roi = sum(m.weight.numel() for m in model.roi_heads.modules() if isinstance(m, nn.Linear))
    ours = detector_cost(spec, OPTS)["gmacs"] * 1e9
    assert ours - OPTS.rpn_post_nms_top_n // 2 * per_roi + rois * per_roi == pytest.approx(real, rel=1e-9)


def test_cost_sees_fpn_channels_and_heads_but_backbone_cost_does_not():
    c32 = parse_spec("basicblock_16_1-21-21-12+fpn:P2-P5:c32+rpn+2fc:256+160x120+gnws")
    c64 = parse_spec("basicblock_16_1-21-21-12+fpn:P2-P5:c64+rpn+2fc:256+160x120+gnws")
    cascade = parse_spec("basicblock_16_1-21-21-12+fpn:P2-P5:c32+rpn+cascade3:256+160x120+gnws")
    cost = search_cost("gmacs", OPTS)
    assert cost(c64) > cost(c32) and cost(cascade) > cost(c32)
    assert backbone_gmacs(c64) == backbone_gmacs(c32) == backbone_gmacs(cascade)
    assert search_cost("backbone_gmacs", OPTS)(c64) == backbone_gmacs(c64)


def test_backbone_column_equals_the_backbone_cost_and_norm_does_not_matter():
    spec = parse_spec("bottleneck_16_111-211-211-211+fpn:P1-P4:c32+garpn+cascade2:256+160x120+gnws")
    row = detector_cost(spec, OPTS)
    assert row["backbone_gmacs"] == backbone_gmacs(spec)
    assert detector_cost(spec.with_norm("bn"), OPTS)["gmacs"] == row["gmacs"]
    more = DetectorOptions(num_classes=6, rpn_post_nms_top_n=128)
    assert detector_cost(spec, more)["gmacs"] > row["gmacs"]  # more proposals, more RoI-head work


def test_resnet50_backbone_cost_matches_the_published_figure():
    """torchvision publishes ResNet-50 at 4.09 GMACs at 224x224 (its 'GFLOPS' counts multiply-adds);
    224 pads to 224, and the fc layer (2 MMACs) is not part of a backbone."""
    spec = parse_spec("resnet50+none+none+retina+224x224+bn")
    assert backbone_gmacs(spec) == pytest.approx(4.09, rel=0.01)


def test_cost_unknown_before_training():
    with pytest.raises(Exception, match="latency_ms.*not known before training"):
        search_cost("latency_ms", OPTS)
