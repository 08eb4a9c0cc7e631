"""Backbone encodings: round trip, bounds with clear errors, and the containment partial order."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smnas.errors import SpecError
from smnas.models.encoding import (
    BLOCK_TYPES, Encoding, EncodingBounds, check_encoding, contains, in_bounds, parse_encoding, spec_contains,
)
from smnas.models.spec import parse_spec

PAPER = EncodingBounds.paper()
LAPTOP = EncodingBounds.laptop()
# Small and loose: many pairs contain each other, doublings free.
TINY = EncodingBounds((16, 24, 32), min_blocks=4, max_blocks=9, max_stage_blocks=3, min_doublings=0, max_doublings=None)


@st.composite
def encodings(draw, bounds: EncodingBounds = LAPTOP, blocks=BLOCK_TYPES):
    """A random encoding inside ``bounds`` (any block type of ``blocks``)."""
    lengths, left = [], bounds.max_blocks
    for s in range(bounds.num_stages):
        rest = bounds.num_stages - s - 1
        lengths.append(draw(st.integers(bounds.min_stage_blocks,
                                        min(bounds.max_stage_blocks, left - rest * bounds.min_stage_blocks))))
        left -= lengths[-1]
    assume(sum(lengths) >= bounds.min_blocks)
    total = sum(lengths)
    hi = total if bounds.max_doublings is None else min(bounds.max_doublings, total)
    twos = set(draw(st.permutations(range(total)))[:draw(st.integers(bounds.min_doublings, hi))])
    flat = "".join("2" if i in twos else "1" for i in range(total))
    stages, i = [], 0
    for n in lengths:
        stages.append(flat[i:i + n])
        i += n
    return Encoding(draw(st.sampled_from(blocks)), draw(st.sampled_from(bounds.base_channels)), tuple(stages))


@settings(max_examples=200, deadline=None)
@given(st.one_of(encodings(PAPER), encodings(LAPTOP), encodings(TINY)))
def test_round_trip_of_valid_encodings(enc):
    assert parse_encoding(str(enc)) == enc
    assert str(parse_encoding(str(enc))) == str(enc)
    assert in_bounds(enc, PAPER) or in_bounds(enc, LAPTOP) or in_bounds(enc, TINY)


def test_examples_inside_bounds():
    enc = parse_encoding("basicblock_64_1-21-21-12")
    assert check_encoding(enc, PAPER) is enc
    assert enc.num_blocks == 7 and enc.doublings == 3
    assert enc.stage_channels() == [[64], [128, 128], [256, 256], [256, 512]]


@pytest.mark.parametrize("text, bounds, message", [
    ("basicblock_60_1-21", PAPER, "basicblock_60_1-21: base channels 60 not in [48, 56, 64, 72]"),
    ("basicblock_64_1-21", PAPER, "basicblock_64_1-21: 2 stages, expected 4"),
    ("basicblock_64_1-21-21-" + "1" * 25 + "2", PAPER, "stage 4 '" + "1" * 25 + "2' has 26 blocks, expected 1..24"),
    ("bottleneck_16_1-2-2-2111111", LAPTOP, "stage 4 '2111111' has 7 blocks, expected 1..6"),
    ("bottleneck_16_111111-111111-22-2", LAPTOP, "15 blocks in all, expected 4..12"),
    ("bottleneck_16_11-21-21-22", LAPTOP, "4 channel doublings ('2'), expected 3..3"),
])
def test_bounds_errors_name_the_field(text, bounds, message):
    with pytest.raises(SpecError) as err:
        check_encoding(parse_encoding(text), bounds)
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("resblock_64_1-21", "unknown block type 'resblock'"),
    ("basicblock_x64_1-21", "base channels 'x64' is not a whole number"),
    ("basicblock_64_1-31", "character '3' at position 3"),
    ("basicblock_64_1--21", "empty stage"),
    ("basicblock_64", "expected 3 fields"),
])
def test_parse_errors_name_the_bad_part(text, message):
    with pytest.raises(SpecError, match=message):
        parse_encoding(text)


@pytest.mark.parametrize("kwargs, message", [
    (dict(base_channels=(), min_blocks=4, max_blocks=8, max_stage_blocks=3), "base_channels"),
    (dict(base_channels=(8,), min_blocks=4, max_blocks=8, max_stage_blocks=3, min_stage_blocks=4), "min_stage_blocks"),
    (dict(base_channels=(8,), min_blocks=13, max_blocks=20, max_stage_blocks=3), "cannot be met"),
    (dict(base_channels=(8,), min_blocks=4, max_blocks=8, max_stage_blocks=3, min_doublings=2, max_doublings=1), "min_doublings"),
])
def test_bad_bounds(kwargs, message):
    with pytest.raises(SpecError, match=message):
        EncodingBounds(**kwargs)


def contains_by_definition(a: Encoding, b: Encoding) -> bool:
    """The docstring's definition, by trying every order-preserving injection per stage."""
    if a.block != b.block or len(a.stages) != len(b.stages) or a.base_channels < b.base_channels:
        return False
    for wa, wb in zip(a.stage_channels(), b.stage_channels()):
        if len(wa) < len(wb) or wa[-1] < wb[-1]:
            return False
        if not any(all(wa[p] >= w for p, w in zip(pos, wb)) for pos in itertools.combinations(range(len(wa)), len(wb))):
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(encodings(TINY, blocks=("basicblock",)), encodings(TINY, blocks=("basicblock",)))
def test_contains_matches_its_definition(a, b):
    assert contains(a, b) == contains_by_definition(a, b)


@settings(max_examples=200, deadline=None)
@given(encodings(TINY, blocks=("basicblock",)), encodings(TINY, blocks=("basicblock",)),
       encodings(TINY, blocks=("basicblock",)))
def test_contains_is_a_partial_order(a, b, c):
    assert contains(a, a)
    if contains(a, b) and contains(b, a):
        assert a == b
    if contains(a, b) and contains(b, c):
        assert contains(a, c)


def test_contains_examples():
    r18, r34 = parse_encoding("basicblock_64_11-21-21-21"), parse_encoding("basicblock_64_111-2111-211111-211")
    assert contains(r34, r18) and not contains(r18, r34)
    assert contains(parse_encoding("basicblock_72_11-21-21-21"), r18)  # wider stem and blocks
    assert not contains(parse_encoding("basicblock_56_111-2111-211111-211"), r18)  # narrower
    assert not contains(parse_encoding("bottleneck_64_111-2111-211111-211"), r18)  # other block type
    # a doubling moved later narrows the blocks before it: neither contains the other
    a, b = parse_encoding("basicblock_64_1-21-21-12"), parse_encoding("basicblock_64_1-21-12-12")
    assert contains(a, b) and not contains(b, a)


def test_spec_contains():
    small = parse_spec("basicblock_64_1-21-21-12+fpn:P2-P5:c128+rpn+2fc+512x512+gnws")
    big = parse_spec("basicblock_64_11-21-211-12+fpn:P2-P5:c256+rpn+2fc+512x512+gnws")
    assert spec_contains(big, small) and not spec_contains(small, big) and spec_contains(small, small)
    for other in ("basicblock_64_11-21-211-12+fpn:P1-P5:c256+rpn+2fc+512x512+gnws",
                  "basicblock_64_11-21-211-12+fpn:P2-P5:c256+garpn+2fc+512x512+gnws",
                  "basicblock_64_11-21-211-12+fpn:P2-P5:c256+rpn+cascade3+512x512+gnws",
                  "basicblock_64_11-21-211-12+fpn:P2-P5:c256+rpn+2fc+800x600+gnws",
                  "basicblock_64_11-21-211-12+fpn:P2-P5:c256+rpn+2fc+512x512+bn",
                  "basicblock_64_11-21-211-12+fpn:P2-P5:c64+rpn+2fc+512x512+gnws"):
        assert not spec_contains(parse_spec(other), small), other
    named = parse_spec("resnet18+fpn:P2-P5:c128+rpn+2fc+512x512+gnws")
    assert spec_contains(named, named) and not spec_contains(named, small)
    assert not spec_contains(parse_spec("resnet34+fpn:P2-P5:c128+rpn+2fc+512x512+gnws"), named)


@settings(max_examples=8, deadline=None)
@given(encodings(TINY), st.data())
def test_containment_implies_no_fewer_macs(a, data):
    """The prior's cost half holds for our builder: a containing network costs at least as much."""
    from smnas.search.stage2 import backbone_gmacs

    # b: a with blocks deleted (at least one kept per stage) and maybe a narrower stem
    stages = []
    for stage in a.stages:
        keep = data.draw(st.lists(st.booleans(), min_size=len(stage), max_size=len(stage)))
        kept = "".join(ch for ch, k in zip(stage, keep) if k)
        stages.append(kept or stage[-1])
    base = data.draw(st.sampled_from([c for c in TINY.base_channels if c <= a.base_channels]))
    b = Encoding(a.block, base, tuple(stages))
    assert contains(a, b)
    size = "+fpn:P2-P5:c16+rpn+2fc+128x96+gnws"
    assert backbone_gmacs(parse_spec(str(a) + size)) >= backbone_gmacs(parse_spec(str(b) + size))
