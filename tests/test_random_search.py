"""Random search: uniform draws inside the same spaces, never repeating an architecture."""
from __future__ import annotations

import collections
import random

import pytest

from smnas.errors import SmnasError
from smnas.models.encoding import EncodingBounds, check_encoding, parse_encoding
from smnas.models.spec import parse_spec
from smnas.search.random_search import random_generation, sample_encoding
from smnas.search.space import StageOneSpace, StageTwoSpace

STRUCTURE = parse_spec("resnet50@0.25+fpn:P2-P5:c32+rpn+2fc:256+160x120+gnws")


@pytest.mark.parametrize("bounds", [EncodingBounds.laptop(), EncodingBounds.paper(),
                                    EncodingBounds((8,), min_blocks=4, max_blocks=6, max_stage_blocks=2)])
def test_sampled_encodings_lie_inside_the_bounds_and_vary(bounds):
    rng = random.Random(0)
    encs = [sample_encoding("bottleneck", bounds, rng) for _ in range(200)]
    for enc in encs:
        check_encoding(enc, bounds)
    assert len({str(e) for e in encs}) > 20
    assert len({e.base_channels for e in encs}) == len(bounds.base_channels)


def test_total_depth_is_uniform():
    """Depth first, then the split: every total in the range is drawn about equally often."""
    rng = random.Random(1)
    counts = collections.Counter(sample_encoding("basicblock", EncodingBounds.laptop(), rng).num_blocks
                                 for _ in range(1800))
    assert set(counts) == set(range(4, 13))  # laptop bounds: 4..12 blocks
    assert max(counts.values()) < 1.5 * min(counts.values())


def test_no_draw_is_an_error():
    bounds = EncodingBounds((8,), min_blocks=4, max_blocks=4, max_stage_blocks=1, min_doublings=3, max_doublings=3)
    assert sample_encoding("basicblock", bounds, random.Random(0)).doublings == 3
    with pytest.raises(SmnasError, match="no basicblock encoding drawn"):
        sample_encoding("basicblock", bounds, random.Random(0), max_tries=0)


def test_stage_two_draws_keep_the_structure_and_skip_the_evaluated():
    space2 = StageTwoSpace()
    first = random_generation("stage2/C0", 1, 6, seed=0, space2=space2, structure=STRUCTURE)
    assert first == random_generation("stage2/C0", 1, 6, seed=0, space2=space2, structure=STRUCTURE)
    assert first != random_generation("stage2/C0", 2, 6, seed=0, space2=space2, structure=STRUCTURE)
    for row in first:
        spec = parse_spec(row["arch"])
        assert (spec.neck.first, spec.neck.last, spec.rpn, spec.head, spec.input_size) == \
            (STRUCTURE.neck.first, STRUCTURE.neck.last, STRUCTURE.rpn, STRUCTURE.head, STRUCTURE.input_size)
        assert parse_encoding(spec.backbone.name).block == "bottleneck" and spec.norm == "gnws"
        assert row["parent"] == "" and row["generation"] == 1
    seen = {r["arch"] for r in first[:3]}
    again = random_generation("stage2/C0", 1, 6, seed=0, space2=space2, structure=STRUCTURE, evaluated=seen)
    assert not seen & {r["arch"] for r in again} and len(again) == 6


def test_stage_one_draws_from_the_space():
    space1 = StageOneSpace(backbones=("resnet18",), input_sizes=((128, 96),))
    rows = random_generation("stage1", 3, 4, seed=0, space1=space1)
    assert len(rows) == 4 and {str(s) for s in space1} >= {r["arch"] for r in rows}
    assert random_generation("stage1", 3, space1.size(), seed=0, space1=space1,
                             evaluated={r["arch"] for r in rows}).__len__() == space1.size() - 4
