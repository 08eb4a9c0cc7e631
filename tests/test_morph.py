"""Weight inheritance across SP-NAS morphs: what survives is copied exactly; expands and new
parallel copies keep the parent's function (network morphism)."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from smnas.errors import SpecError
from smnas.models.backbones import build_backbone
from smnas.models.encoding import EncodingBounds, check_encoding, parse_encoding
from smnas.models.morph import inherit_weights
from smnas.search.spnas import expand_at, serial_child, shift_boundary

IMAGE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _randomise_norms(model: nn.Module, seed: int) -> None:
    """Affine and running statistics away from their defaults, so copying them is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _models(parent: str, child: str, norm: str = "bn") -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    p = build_backbone(parent, norm=norm).eval()
    _randomise_norms(p, 1)
    torch.manual_seed(2)  # another initialisation: a tensor equal to the parent's was copied
    return p, build_backbone(child, norm=norm).eval()


def _assert_copies_exact(parent: nn.Module, child: nn.Module, report) -> None:
    ps, cs = parent.state_dict(), child.state_dict()
    assert report.copied
    for ck, pk in report.copied:
        assert torch.equal(cs[ck], ps[pk]), (ck, pk)


def _same_output(parent: nn.Module, child: nn.Module) -> bool:
    with torch.no_grad():
        a, b = parent(IMAGE), child(IMAGE)
    return all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-5) for k in a)


@pytest.mark.parametrize("stage, position, new_block", [
    (1, 1, "layer1.1"), (2, 2, "layer2.2"), (4, 1, "layer4.1"), (4, 2, "layer4.2")])
@pytest.mark.parametrize("block, norm", [("basicblock", "bn"), ("bottleneck", "bn"), ("basicblock", "gnws")])
def test_expand_is_a_morphism(block, norm, stage, position, new_block):
    parent_enc = parse_encoding(f"{block}_8_1-21-21-12")
    child_enc = expand_at(parent_enc, stage, position)
    parent, child = _models(str(parent_enc), str(child_enc), norm)
    assert not _same_output(parent, child)
    report = inherit_weights(parent, child, parent_enc, child_enc)
    _assert_copies_exact(parent, child, report)
    assert sorted(pk for _, pk in report.copied) == sorted(parent.state_dict())  # every parent tensor, once
    assert report.identity_blocks == (new_block,) and report.fresh == ()
    assert _same_output(parent, child)


def test_expand_moves_later_blocks_one_place():
    parent_enc = parse_encoding("basicblock_8_1-21-21-12")
    child_enc = expand_at(parent_enc, 4, 1)  # 12 -> 112: the '2' block becomes layer4.2
    parent, child = _models(str(parent_enc), str(child_enc))
    copied = dict(inherit_weights(parent, child, parent_enc, child_enc).copied)
    assert copied["layer4.2.conv1.weight"] == "layer4.1.conv1.weight"
    assert copied["layer4.2.downsample.1.running_var"] == "layer4.1.downsample.1.running_var"
    assert copied["layer4.0.conv1.weight"] == "layer4.0.conv1.weight"
    assert not any(k.startswith("layer4.1.") for k in copied)


def test_boundary_swap_keeps_what_fits():
    parent_enc = parse_encoding("basicblock_8_11-21-21-12")
    child_enc = shift_boundary(parent_enc, 1, -1)
    assert str(child_enc) == "basicblock_8_1-121-21-12"
    parent, child = _models(str(parent_enc), str(child_enc))
    report = inherit_weights(parent, child, parent_enc, child_enc)
    _assert_copies_exact(parent, child, report)
    copied = dict(report.copied)
    # layer1.1 moved to the front of stage 2: its convs fit, its stride-2 downsample is new
    assert copied["layer2.0.conv1.weight"] == "layer1.1.conv1.weight"
    assert copied["layer2.1.downsample.0.weight"] == "layer2.0.downsample.0.weight"
    assert set(report.fresh) == {f"layer2.0.downsample.{k}" for k in
                                 ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                  "1.num_batches_tracked")}
    assert report.identity_blocks == ()


def test_new_parallel_copies_start_as_the_stage_with_a_zero_merge():
    parent_enc = parse_encoding("basicblock_8_1-21-21-12")
    child_enc = parse_encoding("basicblock_8_1-21-21-12_0-1-0-2")
    parent, child = _models(str(parent_enc), str(child_enc))
    report = inherit_weights(parent, child, parent_enc, child_enc)
    _assert_copies_exact(parent, child, report)
    assert report.from_trunk == ("parallel2.0", "parallel4.0", "parallel4.1")
    assert report.zero_merges == ("merge2.0", "merge4.0", "merge4.1") and report.fresh == ()
    state = child.state_dict()
    assert torch.equal(state["parallel4.1.1.bn2.running_mean"], state["layer4.1.bn2.running_mean"])
    assert torch.equal(state["parallel2.0.0.conv1.weight"], parent.state_dict()["layer2.0.conv1.weight"])
    assert not state["merge4.1.1.weight"].any() and not state["merge4.1.1.bias"].any()
    assert _same_output(parent, child)


def test_parallel_copies_of_an_unchanged_stage_come_from_the_parent():
    parent_enc = parse_encoding("basicblock_8_1-21-21-12_0-1-0-1")
    child_enc = parse_encoding("basicblock_8_1-21-21-12_0-1-0-2")
    parent, child = _models(str(parent_enc), str(child_enc))
    report = inherit_weights(parent, child, parent_enc, child_enc)
    _assert_copies_exact(parent, child, report)
    copied = dict(report.copied)
    assert copied["parallel4.0.1.conv2.weight"] == "parallel4.0.1.conv2.weight"
    assert copied["merge2.0.1.weight"] == "merge2.0.1.weight"
    assert report.from_trunk == ("parallel4.1",)
    assert _same_output(parent, child)


def test_checkpoints_that_do_not_fit_are_refused():
    enc = parse_encoding("basicblock_8_1-21-21-12")
    parent, child = _models(str(enc), str(enc))
    other = parse_encoding("bottleneck_8_1-21-21-12")
    with pytest.raises(SpecError, match="block type basicblock vs bottleneck; a morph keeps the block type"):
        inherit_weights(parent, build_backbone(str(other)), enc, other)
    state = parent.state_dict()
    del state["layer3.1.conv2.weight"]
    with pytest.raises(SpecError, match=r"parent weights do not fit basicblock_8_1-21-21-12 \(bn\): 1 keys missing, "
                                        r"e.g. \['layer3.1.conv2.weight'\]"):
        inherit_weights(state, child, enc, enc)
    wider = build_backbone("basicblock_16_1-21-21-12").state_dict()
    with pytest.raises(SpecError, match=r"conv1.weight has shape \(16, 3, 7, 7\), expected \(8, 3, 7, 7\)"):
        inherit_weights(wider, child, enc, enc)
    deeper = build_backbone("basicblock_8_11-21-21-12").state_dict()
    with pytest.raises(SpecError, match="keys it lacks, e.g. \\['layer1.1.conv1.weight'"):
        inherit_weights(deeper, child, enc, enc)
    with pytest.raises(SpecError, match="the parent uses bn, the child gnws"):
        inherit_weights(parent, build_backbone(str(enc), norm="gnws"), enc, enc)
    with pytest.raises(SpecError, match="child weights do not fit basicblock_8_1-21-21-12"):
        inherit_weights(parent, build_backbone("basicblock_8_1-21-21-112"), enc, enc)


def test_every_serial_child_inherits_exactly():
    bounds = EncodingBounds((8,), min_blocks=4, max_blocks=9, max_stage_blocks=4)
    parent_enc = parse_encoding("basicblock_8_11-21-21-12")
    for seed in range(6):
        child_enc = serial_child(parent_enc, random.Random(seed), bounds)
        check_encoding(child_enc, bounds)
        parent, child = _models(str(parent_enc), str(child_enc))
        report = inherit_weights(parent, child, parent_enc, child_enc)
        _assert_copies_exact(parent, child, report)
        assert len(report.copied) + len(report.fresh) <= len(child.state_dict())
