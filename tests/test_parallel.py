"""SP-NAS parallel encodings and the parallel backbone: grammar, shapes, gradients, k=0 = serial."""
from __future__ import annotations

import re

import pytest
import torch

from smnas.errors import SpecError
from smnas.models.backbones import build_backbone
from smnas.models.trunks import ResNetBackbone
from smnas.models.encoding import Encoding, parse_encoding
from smnas.models.norm import norm_kind_of
from smnas.models.parallel import ParallelResNetBackbone, parallel_module_names
from smnas.models.spec import parse_spec, spec_hash

SERIAL = "basicblock_8_1-21-21-12"
IMAGE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_parallel_field_round_trips():
    enc = parse_encoding("basicblock_64_1-21-21-12_0-1-0-2")
    assert enc.parallel == (0, 1, 0, 2) and enc.stages == ("1", "21", "21", "12")
    assert str(enc) == "basicblock_64_1-21-21-12_0-1-0-2"
    assert parse_encoding(str(enc)) == enc
    assert enc.serial == parse_encoding("basicblock_64_1-21-21-12")
    spec = parse_spec("basicblock_64_1-21-21-12_0-1-0-2+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws")
    assert str(spec).startswith("basicblock_64_1-21-21-12_0-1-0-2+")


def test_all_zero_counts_are_the_serial_encoding():
    serial = parse_encoding("basicblock_64_1-21-21-12")
    zeros = parse_encoding("basicblock_64_1-21-21-12_0-0-0-0")
    built = Encoding("basicblock", 64, ("1", "21", "21", "12"), (0, 0, 0, 0))
    assert serial.parallel == zeros.parallel == built.parallel == ()
    assert serial == zeros == built and hash(serial) == hash(zeros) == hash(built)
    assert str(zeros) == str(built) == "basicblock_64_1-21-21-12"
    assert spec_hash(str(zeros)) == spec_hash("basicblock_64_1-21-21-12")


@pytest.mark.parametrize("text, message", [
    ("basicblock_64_1-21-21-12_0-1-0", "3 parallel counts, expected 4 (one per stage)"),
    ("basicblock_64_1-21-21-12_0-1-0-2-1", "5 parallel counts, expected 4"),
    ("basicblock_64_1-21-21-12_0-a-0-2", "parallel count 'a' of stage 2 is not a whole number"),
    ("basicblock_64_1-21-21-12_0-1.5-0-2", "parallel count '1.5' of stage 2"),
    ("basicblock_64_1-21-21-12_0--1-2", "parallel count '' of stage 2"),
    ("basicblock_64_1-21-21-12_0-1-0-2_1", "expected 3 fields"),
])
def test_bad_parallel_fields_name_the_part(text, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_encoding(text)


@pytest.mark.parametrize("counts, message", [
    ((0, -1, 0, 0), "stage 2: -1 is negative"),
    ((0, 1.5, 0, 0), "stage 2: 1.5 is not a whole number"),
    ((True, 0, 0, 0), "stage 1: True is not a whole number"),
    ((1, 0), "2 given, expected 4"),
])
def test_bad_parallel_counts_in_the_constructor(counts, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        Encoding("basicblock", 64, ("1", "21", "21", "12"), counts)


@pytest.mark.parametrize("counts", ["1-0-0-0", "0-2-0-1", "3-3-3-3"])
@pytest.mark.parametrize("block", ["basicblock", "bottleneck"])
def test_shapes_and_levels_equal_the_serial_backbones(block, counts):
    serial = build_backbone(f"{block}_8_1-21-21-12").eval()
    model = build_backbone(f"{block}_8_1-21-21-12_{counts}").eval()
    assert isinstance(model, ParallelResNetBackbone)
    assert model.levels == serial.levels
    with torch.no_grad():
        out, ref = model(IMAGE), serial(IMAGE)
    assert list(out) == ["P1", "P2", "P3", "P4"]
    for (name, y), level in zip(out.items(), model.levels):
        assert y.shape == ref[name].shape == (2, level.channels, 64 // level.stride, 64 // level.stride)
    k = [int(c) for c in counts.split("-")]
    for s in range(4):
        assert len(getattr(model, f"parallel{s + 1}", [])) == k[s]
        assert len(getattr(model, f"merge{s + 1}", [])) == k[s]


def test_module_names():
    enc = parse_encoding(SERIAL + "_0-1-0-2")
    assert parallel_module_names(enc) == ["parallel2.0", "merge2.0", "parallel4.0", "merge4.0",
                                          "parallel4.1", "merge4.1"]
    keys = build_backbone(str(enc)).state_dict()
    assert "parallel4.1.1.conv2.weight" in keys and "merge4.1.0.weight" in keys and "merge4.1.1.weight" in keys
    assert not any(k.startswith(("parallel1", "merge1", "parallel3", "merge3")) for k in keys)


@pytest.mark.parametrize("norm", ["bn", "gnws"])
def test_gradients_reach_every_copy_and_merge(norm):
    model = build_backbone(SERIAL + "_1-1-0-2", norm=norm).train()
    assert norm_kind_of(model) == norm
    loss = sum((y**2).mean() for y in model(IMAGE).values())  # squares: a sum would vanish through BN
    loss.backward()
    params = {n: p for n, p in model.named_parameters() if n.startswith(("parallel", "merge"))}
    assert {n.split(".")[0] for n in params} == {"parallel1", "merge1", "parallel2", "merge2", "parallel4", "merge4"}
    assert any(n.startswith("merge4.1.0") for n in params)
    no_grad = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_no_copy_is_exactly_the_serial_backbone():
    serial = ResNetBackbone(parse_encoding(SERIAL)).eval()
    model = ParallelResNetBackbone(parse_encoding(SERIAL + "_0-0-0-0")).eval()
    assert list(model.state_dict()) == list(serial.state_dict())
    model.load_state_dict(serial.state_dict())
    with torch.no_grad():
        out, ref = model(IMAGE), serial(IMAGE)
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    assert type(build_backbone(SERIAL + "_0-0-0-0")) is ResNetBackbone


def test_builders_refuse_what_they_cannot_build():
    with pytest.raises(SpecError, match="has parallel sub-networks; build it with build_backbone"):
        ResNetBackbone(parse_encoding(SERIAL + "_0-1-0-0"))
    with pytest.raises(SpecError, match="parallel sub-networks are built for .*Xbottleneck, not invres"):
        build_backbone("invres_16_1-21-21-12_0-1-0-0")


def test_the_papers_coco_backbone_parses_but_has_five_stages():
    """SP-NAS's COCO model as its first author gave it (github.com/huawei-noah/vega/issues/14):
    ResNeXt-32x4d blocks, layers_arch 1111-21111-2111111111111111111111111-211-1, mb_arch 1-0-2-1-2.
    Its 5th stage (stride 64) does not fit our 4-level backbones."""
    enc = parse_encoding("Xbottleneck_64_1111-21111-2111111111111111111111111-211-1_1-0-2-1-2")
    assert enc.num_blocks == 38 and enc.parallel == (1, 0, 2, 1, 2)
    with pytest.raises(SpecError, match="needs 4 stages after the stem"):
        build_backbone(str(enc))
