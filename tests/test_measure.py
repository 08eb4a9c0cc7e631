"""Cost measurements: MACs through FlopCounterMode, latency over given images with a device name."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from smnas.engine import measure
from smnas.engine.measure import count_macs, count_params, measure_latency, noise_images
from smnas.models.backbones import build_backbone


def test_macs_of_a_conv_match_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 8 output channels x 16x16 positions x (3 x 3 x 3) multiply-accumulates each
    assert count_macs(conv, torch.rand(1, 3, 16, 16)) == 8 * 16 * 16 * 27


def test_resnet50_backbone_matches_the_paper_convention():
    backbone = build_backbone("resnet50")
    assert count_params(backbone) == 23_508_032  # torchvision resnet50 minus its fc layer
    assert count_macs(backbone, torch.rand(1, 3, 224, 224)) == pytest.approx(4.09e9, rel=0.01)


class _Scripted(nn.Module):
    """A fake detector on a fake clock: each call records its input and advances the clock by the
    next scripted delay, so every forward's time is known exactly."""

    def __init__(self, delays_ms):
        super().__init__()
        self.delays_ms = list(delays_ms)
        self.now_s = 0.0
        self.seen = []  # the image tensors, in call order
        self.threads = []  # torch's intra-op thread count at each call

    def clock(self) -> float:
        return self.now_s

    def forward(self, images):
        assert len(images) == 1  # batch 1
        self.seen.append(images[0])
        self.threads.append(torch.get_num_threads())
        self.now_s += self.delays_ms.pop(0) / 1000.0
        return [{}]


def _images(n):
    return [torch.rand(3, 8, 8 + i) for i in range(n)]  # (3, H, W), a different width each


def _on_fake_clock(monkeypatch, model):
    # Only the measure module's clock is replaced: nothing else (pytest included) sees it.
    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=model.clock))


def test_latency_is_the_median_per_image_forward_and_warmup_is_not_timed(monkeypatch):
    images = _images(5)
    # two 500 ms warm-up calls, then a skewed sequence: median 2, mean 4, max 13, min 1
    model = _Scripted([500, 500, 1, 13, 2, 1, 3])
    _on_fake_clock(monkeypatch, model)
    lat = measure_latency(model, images, warmup=2, runs=1, threads=1)
    assert lat.median_ms == pytest.approx(2.0)
    assert lat.mean_ms == pytest.approx(4.0)  # with the warm-up timed it would be ~146
    assert lat.min_ms == pytest.approx(1.0)
    assert (lat.runs, lat.images) == (1, 5)
    assert model.delays_ms == []  # exactly 2 + 5 forwards
    # warm-up cycles through the images, then each image once, in order, as given
    assert [id(x) for x in model.seen] == [id(x) for x in images[:2] + images]


def test_every_image_is_timed_once_per_run(monkeypatch):
    images = _images(3)
    model = _Scripted([4, 1, 1, 1, 1, 10])  # two passes: median 1, mean 3 (one pass: mean 2)
    _on_fake_clock(monkeypatch, model)
    lat = measure_latency(model, images, warmup=0, runs=2, threads=1)
    assert [id(x) for x in model.seen] == [id(x) for x in images * 2]
    assert lat.median_ms == pytest.approx(1.0) and lat.mean_ms == pytest.approx(3.0)
    assert (lat.runs, lat.images) == (2, 3)


def test_cpu_latency_pins_threads_names_the_device_and_never_syncs_cuda(monkeypatch):
    def no_sync(*_args):
        raise AssertionError("torch.cuda.synchronize called for a CPU measurement")

    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    model = _Scripted([1] * 3)
    before = torch.get_num_threads()
    lat = measure_latency(model, noise_images((64, 48), 2), device="cpu", warmup=1, runs=1, threads=2)
    assert model.threads == [2, 2, 2] and torch.get_num_threads() == before
    assert lat.device.startswith("cpu: ") and lat.device.endswith("(2 threads)")
    assert f", {torch.backends.cpu.get_cpu_capability()}" in lat.device
    assert [tuple(x.shape) for x in model.seen] == [(3, 48, 64)] * 3


def test_the_cpu_name_says_when_onednn_is_capped(monkeypatch):
    from smnas.engine.measure import cpu_isa

    isa = torch.backends.cpu.get_cpu_capability()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu_isa() == isa
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert cpu_isa() == f"{isa}, oneDNN AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert cpu_isa() == isa


def test_noise_images_are_seeded_and_of_the_asked_size():
    a, b = noise_images((64, 48), 2), noise_images((64, 48), 2)
    assert [tuple(x.shape) for x in a] == [(3, 48, 64)] * 2
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], a[1])
    assert 0.0 <= float(a[0].min()) and float(a[0].max()) <= 1.0


def test_latency_rejects_no_images_and_no_runs():
    with pytest.raises(ValueError, match="at least one image"):
        measure_latency(_Scripted([]), [])
    with pytest.raises(ValueError, match="runs must be >= 1"):
        measure_latency(_Scripted([]), _images(1), runs=0)


class _Layout(nn.Module):
    """A conv model that records whether its weight is channels-last at each call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.layouts = []

    def forward(self, images):
        self.layouts.append(self.conv.weight.is_contiguous(memory_format=torch.channels_last)
                            and not self.conv.weight.is_contiguous())
        return [{}]


def test_cpu_latency_times_channels_last_weights_and_leaves_them_contiguous():
    model = _Layout()
    lat = measure_latency(model, _images(2), warmup=1, runs=1)
    assert model.layouts == [True] * 3 and lat.memory_format == "channels_last"
    assert model.conv.weight.is_contiguous()  # as built and saved, after timing
    model.layouts.clear()
    lat = measure_latency(model, _images(2), warmup=0, runs=1, memory_format="contiguous")
    assert model.layouts == [False] * 2 and lat.memory_format == "contiguous"
    with pytest.raises(ValueError, match="memory_format must be one of .*'nhwc'"):
        measure_latency(model, _images(1), memory_format="nhwc")


def test_a_detector_detects_the_same_in_either_layout():
    from smnas.models.build import DetectorOptions, build_detector
    from smnas.models.spec import parse_spec

    torch.manual_seed(0)
    model = build_detector(parse_spec("resnet18@0.25+fpn:P2-P5:c16+rpn+2fc:64+64x48+bn"),
                           DetectorOptions(num_classes=3)).eval()
    images = noise_images((64, 48), 2)
    with torch.inference_mode():
        before = model(images)
        with measure.memory_layout(model, "channels_last"):
            assert model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
            after = model(images)
    assert model.backbone.body.conv1.weight.is_contiguous()
    for a, b in zip(before, after):
        assert len(a["boxes"]) > 0 and torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-4)
