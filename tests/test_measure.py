"""Cost measurements: MACs through FlopCounterMode, latency figures with a device name."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from smnas.engine.measure import count_macs, count_params, measure_latency
from smnas.models.backbones import build_backbone


def test_macs_of_a_conv_match_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 8 output channels x 16x16 positions x (3 x 3 x 3) multiply-accumulates each
    assert count_macs(conv, torch.rand(1, 3, 16, 16)) == 8 * 16 * 16 * 27


def test_resnet50_backbone_matches_the_paper_convention():
    backbone = build_backbone("resnet50")
    assert count_params(backbone) == 23_508_032  # torchvision resnet50 minus its fc layer
    assert count_macs(backbone, torch.rand(1, 3, 224, 224)) == pytest.approx(4.09e9, rel=0.01)


def test_latency_is_a_median_with_device_name():
    model = _Toy()
    lat = measure_latency(model, (64, 48), warmup=1, runs=5, threads=1)
    assert lat.runs == 5 and lat.min_ms <= lat.median_ms and lat.median_ms > 0
    assert lat.device.startswith("cpu: ") and "(1 threads)" in lat.device
    assert model.seen == [(3, 48, 64)] * 6  # batch 1, height x width as asked, warm-up + runs


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, images):
        self.seen.extend(tuple(im.shape) for im in images)
        return [{}]
