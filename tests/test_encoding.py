"""Backbone encodings: round trip, bounds with clear errors. (Containment: tests/test_pruning.py.)"""
from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smnas.errors import SpecError
from smnas.models.encoding import BLOCK_TYPES, Encoding, EncodingBounds, check_encoding, in_bounds, parse_encoding

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


@st.composite
def encodings_around(draw, bounds: EncodingBounds):
    """An encoding in or just outside ``bounds``: each limit kept or missed by a little."""
    n_stages = draw(st.sampled_from([bounds.num_stages - 1, bounds.num_stages, bounds.num_stages,
                                     bounds.num_stages + 1]))
    lengths = [draw(st.integers(max(1, bounds.min_stage_blocks - 1), bounds.max_stage_blocks + 1))
               for _ in range(max(n_stages, 1))]
    total = sum(lengths)
    most = bounds.max_doublings + 1 if bounds.max_doublings is not None else total
    twos = set(draw(st.permutations(range(total)))[:draw(st.integers(0, min(most, total)))])
    flat = "".join("2" if i in twos else "1" for i in range(total))
    stages = tuple(flat[sum(lengths[:k]):sum(lengths[:k + 1])] for k in range(len(lengths)))
    base = draw(st.sampled_from([*bounds.base_channels, min(bounds.base_channels) - 1, max(bounds.base_channels) + 8]))
    return Encoding(draw(st.sampled_from(BLOCK_TYPES)), base, stages)


def within_by_hand(enc: Encoding, bounds: EncodingBounds) -> bool:
    """The bounds, counted from the encoding's text rather than through its properties."""
    _block, base, blocks = str(enc).split("_")
    lengths = [len(stage) for stage in blocks.split("-")]
    twos = blocks.count("2")
    return (int(base) in bounds.base_channels and len(lengths) == bounds.num_stages
            and all(bounds.min_stage_blocks <= n <= bounds.max_stage_blocks for n in lengths)
            and bounds.min_blocks <= sum(lengths) <= bounds.max_blocks
            and twos >= bounds.min_doublings and (bounds.max_doublings is None or twos <= bounds.max_doublings))


@settings(max_examples=200, deadline=None)
@given(st.one_of(encodings(PAPER), encodings(LAPTOP), encodings(TINY), encodings_around(TINY)))
def test_round_trip_of_encodings(enc):
    text = str(enc)
    assert re.fullmatch(r"[A-Za-z]+_[0-9]+_[12]+(-[12]+)*", text)
    assert parse_encoding(text) == enc
    assert str(parse_encoding(text)) == text


@pytest.mark.parametrize("bounds", [PAPER, LAPTOP, TINY], ids=["paper", "laptop", "tiny"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_check_encoding_accepts_exactly_the_encodings_within_bounds(bounds, data):
    enc = data.draw(st.one_of(encodings(bounds), encodings_around(bounds)))
    if within_by_hand(enc, bounds):
        assert check_encoding(enc, bounds) is enc and in_bounds(enc, bounds)
    else:
        with pytest.raises(SpecError, match=re.escape(f"{enc}: ")):
            check_encoding(enc, bounds)
        assert not in_bounds(enc, bounds)


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
