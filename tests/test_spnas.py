"""SP-NAS operators: swaps and expands give valid encodings of their kind; the parallel sampler
keeps to its limit and favours light stages."""
from __future__ import annotations

import random
import re

import pytest
import torch

from smnas.engine.measure import count_macs
from smnas.errors import SpecError
from smnas.models.backbones import build_backbone
from smnas.models.encoding import EncodingBounds, in_bounds, parse_encoding
from smnas.search.spnas import (
    count_probabilities, expand, expand_at, parallel_stage_gmacs, sample_parallel, serial_child, shift_boundary,
    shift_doubling, spnas_bounds, swap,
)

ENC = parse_encoding("basicblock_64_1-21-21-12")
R50 = parse_encoding("bottleneck_64_111-2111-211111-211")


def _lengths(enc) -> list[int]:
    return [len(s) for s in enc.stages]


def test_shift_boundary():
    assert str(shift_boundary(ENC, 1, 1)) == "basicblock_64_12-1-21-12"
    assert str(shift_boundary(ENC, 3, -1)) == "basicblock_64_1-21-2-112"
    assert str(shift_boundary(parse_encoding("basicblock_64_1-21-21-12_0-1-0-2"), 2, 1)) == \
        "basicblock_64_1-212-1-12_0-1-0-2"
    with pytest.raises(SpecError, match=re.escape("shifting boundary 1 by +2 would empty stage 2 '21'")):
        shift_boundary(ENC, 1, 2)
    with pytest.raises(SpecError, match=re.escape("shifting boundary 1 by -1 would empty stage 1 '1'")):
        shift_boundary(ENC, 1, -1)
    with pytest.raises(SpecError, match="boundaries are 1..3"):
        shift_boundary(ENC, 4, 1)


def test_shift_doubling():
    assert str(shift_doubling(ENC, 1, 1)) == "basicblock_64_1-12-21-12"
    assert str(shift_doubling(ENC, 3, -1)) == "basicblock_64_1-22-11-12"
    with pytest.raises(SpecError, match="block 0 is not a channel-doubling '2'"):
        shift_doubling(ENC, 0, 1)
    with pytest.raises(SpecError, match="block 3 is not a '1'"):
        shift_doubling(ENC, 1, 2)


def test_expand_at():
    assert str(expand_at(ENC, 2, 1)) == "basicblock_64_1-211-21-12"
    assert str(expand_at(ENC, 1, 1)) == "basicblock_64_11-21-21-12"
    with pytest.raises(SpecError, match=re.escape("stage 2 '21' at position 0; expected 1..2")):
        expand_at(ENC, 2, 0)
    with pytest.raises(SpecError, match="no stage 5"):
        expand_at(ENC, 5, 1)


def test_swap_moves_one_boundary_or_one_doubling_by_at_most_three():
    kinds = set()
    for seed in range(60):
        out = swap(R50, random.Random(seed))
        a, b = "".join(R50.stages), "".join(out.stages)
        assert out != R50 and out.doublings == R50.doublings and out.num_blocks == R50.num_blocks
        if a == b:
            diff = [x - y for x, y in zip(_lengths(out), _lengths(R50)) if x != y]
            assert len(diff) == 2 and diff[0] == -diff[1] and abs(diff[0]) <= 3
            kinds.add("boundary")
        else:
            assert _lengths(out) == _lengths(R50)
            changed = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
            assert len(changed) == 2 and changed[1] - changed[0] <= 3
            kinds.add("doubling")
    assert kinds == {"boundary", "doubling"}


def test_expand_inserts_one_block_after_a_block():
    for seed in range(40):
        out = expand(R50, random.Random(seed))
        changed = [s for s in range(4) if out.stages[s] != R50.stages[s]]
        assert len(changed) == 1 and out.num_blocks == R50.num_blocks + 1
        old, new = R50.stages[changed[0]], out.stages[changed[0]]
        assert new[0] == old[0] and any(new[:p] + new[p + 1:] == old and new[p] == "1" for p in range(1, len(new)))


def test_operators_say_when_nothing_applies():
    flat = parse_encoding("basicblock_64_1-1-1-1")  # no '2'; every boundary move empties a stage
    with pytest.raises(SpecError, match="no swap gives another encoding"):
        swap(flat, random.Random(0))
    full = EncodingBounds((64,), min_blocks=4, max_blocks=8, max_stage_blocks=3)
    with pytest.raises(SpecError, match=re.escape("no expand stays inside the bounds (8 blocks already)")):
        expand(parse_encoding("basicblock_64_1-211-21-12"), random.Random(0), full)


def test_serial_children_are_valid_and_deterministic():
    bounds = spnas_bounds()
    kinds = set()
    for seed in range(150):
        child = serial_child(R50, random.Random(seed), bounds)
        assert in_bounds(child, bounds) and child != R50 and child.block == R50.block
        assert child.doublings == R50.doublings and 0 <= child.num_blocks - R50.num_blocks <= 3
        assert child == serial_child(R50, random.Random(seed), bounds)
        kinds.add(child.num_blocks - R50.num_blocks)
    assert kinds == {0, 1, 2, 3}


def test_serial_children_at_the_block_limit_only_swap():
    bounds = EncodingBounds((64,), min_blocks=4, max_blocks=8, max_stage_blocks=3)
    for seed in range(30):
        child = serial_child(parse_encoding("basicblock_64_1-211-21-12"), random.Random(seed), bounds)
        assert in_bounds(child, bounds) and child.num_blocks == 8


def test_serial_child_refuses_a_parent_outside_the_bounds():
    with pytest.raises(SpecError, match="7 blocks in all, expected 8..60"):
        serial_child(ENC, random.Random(0), spnas_bounds())


def test_count_probabilities():
    p = count_probabilities((1.0, 2.0), 3)
    assert p[0] == pytest.approx([0.25] * 4)
    assert p[1] == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    with pytest.raises(SpecError, match="must be positive"):
        count_probabilities((1.0, 0.0), 3)


def test_costs_add_linearly():
    enc = parse_encoding("basicblock_8_1-21-21-12")
    base, per_copy = parallel_stage_gmacs(str(enc), (64, 64))
    cand = parse_encoding("basicblock_8_1-21-21-12_2-0-1-3")
    with torch.device("meta"):
        direct = count_macs(build_backbone(str(cand)), torch.empty(1, 3, 64, 64)) / 1e9
    assert direct == pytest.approx(base + 2 * per_copy[0] + per_copy[2] + 3 * per_copy[3], rel=1e-12)


def test_parallel_samples_keep_the_limit_and_favour_light_stages():
    enc = parse_encoding("basicblock_16_111-2-2-2")  # stage 1 costs ~3.7x each other stage
    base, costs = parallel_stage_gmacs(str(enc), (64, 64))
    assert costs[0] > 3.5 * max(costs[1:])
    limit = base + 8 * costs[1]
    rng = random.Random(0)
    samples = [sample_parallel(enc, rng, limit, (64, 64)) for _ in range(400)]
    for s in samples:
        assert s.serial == enc and any(s.parallel) and max(s.parallel) <= 3
        assert base + sum(k * c for k, c in zip(s.parallel, costs)) <= limit
    mean = [sum(s.parallel[i] for s in samples) / len(samples) for i in range(4)]
    assert mean[0] + 0.5 < min(mean[1:])
    again = random.Random(0)
    assert [sample_parallel(enc, again, limit, (64, 64)) for _ in range(400)] == samples


def test_parallel_sampler_errors_and_replaces_counts():
    enc = parse_encoding("basicblock_16_111-2-2-2")
    base, costs = parallel_stage_gmacs(str(enc), (64, 64))
    with pytest.raises(SpecError, match="the cheapest copy \\(stage 2\\)"):
        sample_parallel(enc, random.Random(0), base + 0.5 * costs[1], (64, 64))
    with_counts = parse_encoding("basicblock_16_111-2-2-2_3-3-3-3")
    out = sample_parallel(with_counts, random.Random(0), base + costs[1], (64, 64))
    assert sum(out.parallel) == 1 and out.parallel[0] == 0
