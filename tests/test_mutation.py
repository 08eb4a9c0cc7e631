"""Mutations: every operator gives a valid, different encoding of the right kind, or says it cannot."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_encoding import LAPTOP, PAPER, TINY, encodings

from smnas.errors import SpecError
from smnas.models.encoding import Encoding, EncodingBounds, in_bounds, parse_encoding
from smnas.models.spec import parse_spec
from smnas.search.mutation import (
    ENCODING_OPS, change_base, change_fpn_channels, insert_block, move_boundary, move_doubling, mutate_encoding,
    mutate_stage1, remove_block,
)
from smnas.search.space import StageOneSpace
from smnas.search.mutation import mutate_stage2
from smnas.search.space import StageTwoSpace

ANY_BOUNDS = st.sampled_from([PAPER, LAPTOP, TINY]).flatmap(lambda b: st.tuples(st.just(b), encodings(b)))


def _flat(enc: Encoding) -> str:
    return "".join(enc.stages)


def _lengths(enc: Encoding) -> list[int]:
    return [len(s) for s in enc.stages]


def _one_deleted(long: str, short: str) -> bool:
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short for i in range(len(long)))


@settings(max_examples=150, deadline=None)
@given(ANY_BOUNDS, st.integers(0, 2**32))
def test_every_operator_gives_a_valid_different_encoding_of_its_kind(bounds_enc, seed):
    bounds, enc = bounds_enc
    for name, op in ENCODING_OPS.items():
        out = op(enc, bounds, random.Random(seed))
        if out is None:
            continue
        assert out != enc and in_bounds(out, bounds), (name, enc, out)
        assert out.block == enc.block
        if name == "insert_block":
            changed = [i for i, (a, b) in enumerate(zip(out.stages, enc.stages)) if a != b]
            assert len(changed) == 1 and _one_deleted(out.stages[changed[0]], enc.stages[changed[0]])
        elif name == "remove_block":
            changed = [i for i, (a, b) in enumerate(zip(out.stages, enc.stages)) if a != b]
            assert len(changed) == 1 and _one_deleted(enc.stages[changed[0]], out.stages[changed[0]])
        elif name == "move_doubling":
            assert _lengths(out) == _lengths(enc) and out.doublings == enc.doublings
            assert sum(a != b for a, b in zip(_flat(out), _flat(enc))) == 2
        elif name == "move_boundary":
            assert _flat(out) == _flat(enc) and out.base_channels == enc.base_channels
            diff = [i for i, (a, b) in enumerate(zip(_lengths(out), _lengths(enc))) if a != b]
            assert len(diff) == 2 and diff[1] == diff[0] + 1
        else:
            assert out.stages == enc.stages and out.base_channels != enc.base_channels


@settings(max_examples=150, deadline=None)
@given(ANY_BOUNDS)
def test_operators_say_when_they_cannot_apply(bounds_enc):
    """None exactly when no edit of that kind stays inside the bounds (checked independently)."""
    bounds, enc = bounds_enc
    rng = random.Random(0)
    lengths, total = _lengths(enc), enc.num_blocks
    can_drop_two = enc.doublings > bounds.min_doublings
    room = total < bounds.max_blocks and any(n < bounds.max_stage_blocks for n in lengths)
    assert (insert_block(enc, bounds, rng) is None) == (not room)
    removable = total > bounds.min_blocks and any(
        n > bounds.min_stage_blocks and ("1" in s or can_drop_two) for n, s in zip(lengths, enc.stages))
    assert (remove_block(enc, bounds, rng) is None) == (not removable)
    assert (move_doubling(enc, bounds, rng) is None) == (enc.doublings in (0, total))
    movable = any(
        any(left != lengths[s] and bounds.stage_ok(left) and bounds.stage_ok(lengths[s] + lengths[s + 1] - left)
            for left in range(1, lengths[s] + lengths[s + 1]))
        for s in range(len(lengths) - 1))
    assert (move_boundary(enc, bounds, rng) is None) == (not movable)
    assert (change_base(enc, bounds, rng) is None) == (len(bounds.base_channels) == 1)


def test_insert_may_add_a_doubling_only_when_allowed():
    enc = parse_encoding("basicblock_16_1-21-21-12")
    loose = replace(TINY, max_blocks=12, max_doublings=None)
    outs = {insert_block(enc, loose, random.Random(s)) for s in range(200)}
    assert any(o.doublings == 4 for o in outs) and any(o.doublings == 3 for o in outs)
    assert all(o.doublings == 3 for o in (insert_block(enc, LAPTOP, random.Random(s)) for s in range(50)))


def test_mutate_encoding_is_seeded_and_fails_clearly():
    enc = parse_encoding("basicblock_64_1-21-21-12")
    a = [mutate_encoding(enc, PAPER, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2] and a[0] != enc
    assert len({mutate_encoding(enc, PAPER, random.Random(s)) for s in range(40)}) > 10
    single = EncodingBounds((64,), min_blocks=4, max_blocks=4, max_stage_blocks=1, min_doublings=0, max_doublings=0)
    with pytest.raises(SpecError, match="basicblock_64_1-1-1-1: no mutation yields another encoding"):
        mutate_encoding(parse_encoding("basicblock_64_1-1-1-1"), single, random.Random(0))


def test_change_fpn_channels():
    spec = parse_spec("basicblock_16_1-21-21-12+fpn:P2-P5:c32+rpn+2fc+128x96+gnws")
    outs = {change_fpn_channels(spec, (16, 32, 64), random.Random(s)).neck.channels for s in range(30)}
    assert outs == {16, 64}
    assert change_fpn_channels(spec, (32,), random.Random(0)) is None
    assert change_fpn_channels(parse_spec("basicblock_16_1-21-21-12+none+rpn+2fc+128x96+gnws"), (16, 32), random.Random(0)) is None


def _modules(spec) -> dict[str, object]:
    n = spec.neck
    return {"backbone": spec.backbone, "neck": (n.kind, n.first, n.last), "fpn_channels": n.channels,
            "rpn_head": (spec.rpn, spec.head), "input_size": spec.input_size}


def test_mutate_stage1_changes_one_module_to_a_choice_of_the_space():
    space = StageOneSpace(fpn_channels=(32, 64))
    members = set(space)
    seen = set()
    for i, spec in enumerate(space.sample(60, seed=1)):
        child = mutate_stage1(spec, space, random.Random(i))
        assert child in members and child != spec
        changed = {k for k, v in _modules(child).items() if v != _modules(spec)[k]}
        # none <-> fpn changes the channel count (0 <-> c) along with the kind
        assert len(changed) == 1 or changed == {"neck", "fpn_channels"}, (spec, child)
        seen |= changed
        assert mutate_stage1(spec, space, random.Random(i)) == child
    assert {"backbone", "neck", "fpn_channels", "rpn_head", "input_size"} <= seen


def test_mutate_stage1_fails_when_the_space_has_one_member():
    space = StageOneSpace(backbones=("resnet18",), necks=("none",), rpns=("rpn",), heads=("2fc",), input_sizes=((128, 96),))
    (only,) = list(space)
    with pytest.raises(SpecError, match="no valid alternative"):
        mutate_stage1(only, space, random.Random(0))


@settings(max_examples=60, deadline=None)
@given(encodings(LAPTOP, blocks=("basicblock", "bottleneck")), st.sampled_from([16, 32, 64]), st.integers(0, 2**32))
def test_mutate_stage2_edits_backbone_or_fpn_only(enc, fpn, seed):
    space2 = StageTwoSpace.laptop()
    spec = parse_spec(f"{enc}+fpn:P1-P5:c{fpn}+rpn+cascade3:256+128x96+gnws")
    child = mutate_stage2(spec, space2, random.Random(seed))
    assert child != spec and child.validate() is child
    assert in_bounds(parse_encoding(child.backbone.name), space2.bounds)
    assert child.neck.channels in space2.fpn_channels
    assert replace(child, backbone=spec.backbone, neck=spec.neck) == spec
    assert (child.backbone != spec.backbone) != (child.neck != spec.neck)  # exactly one of them
    with pytest.raises(SpecError, match="needs an encoding"):
        mutate_stage2(parse_spec("resnet18+fpn:P1-P5:c16+rpn+2fc+128x96+gnws"), space2, random.Random(0))


def test_mutate_stage2_with_one_op_draws_as_a_single_edit():
    from smnas.search.mutation import _edit_stage2

    space2 = StageTwoSpace.laptop()
    spec = parse_spec("basicblock_16_1-21-21-12+fpn:P2-P5:c32+rpn+2fc:256+128x96+bn")
    for seed in range(50):  # runs sampled before max_ops existed resume to the same children
        assert mutate_stage2(spec, space2, random.Random(seed)) == _edit_stage2(spec, space2, random.Random(seed))
    with pytest.raises(SpecError, match=r"max_ops must be >= 1 \(edits per child\), got 0"):
        mutate_stage2(spec, space2, random.Random(0), max_ops=0)


def test_mutate_stage2_with_several_ops_reaches_beyond_one_edit():
    space2 = StageTwoSpace.laptop()
    spec = parse_spec("basicblock_16_1-21-21-12+fpn:P2-P5:c32+rpn+2fc:256+128x96+bn")
    blocks = len(_flat(parse_encoding(spec.backbone.name)))
    both, far = {1: 0, 3: 0}, {1: 0, 3: 0}
    for max_ops in (1, 3):
        for seed in range(200):
            child = mutate_stage2(spec, space2, random.Random(seed), max_ops=max_ops)
            enc = parse_encoding(child.backbone.name)
            assert child != spec and child.validate() is child and in_bounds(enc, space2.bounds)
            assert replace(child, backbone=spec.backbone, neck=spec.neck) == spec
            both[max_ops] += child.backbone != spec.backbone and child.neck != spec.neck
            far[max_ops] += abs(len(_flat(enc)) - blocks) >= 2
    assert both[1] == far[1] == 0  # one edit changes the backbone or the FPN, one block at most
    assert both[3] > 10 and far[3] > 3  # some children are two or three edits away
