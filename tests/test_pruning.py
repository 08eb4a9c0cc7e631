"""Partial Order Pruning: the containment partial order, and the pruner against its brute-force
definition on random populations."""
from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_encoding import TINY, encodings

from smnas.models.encoding import Encoding, parse_encoding
from smnas.models.spec import parse_spec
from smnas.search.pruning import PartialOrderPruner, contains, spec_contains


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
    # a doubling moved later narrows the blocks before it: the earlier doubling contains the later
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
    from smnas.engine.cost import backbone_gmacs

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


TAILS = ["+fpn:P2-P5:c{}+rpn+2fc+128x96+gnws", "+fpn:P2-P5:c{}+rpn+2fc+160x120+gnws", "+none+rpn+2fc+128x96+gnws"]


def random_spec(rng: random.Random) -> str:
    """Small encodings (1..3 blocks a stage, few bases) so containment is common."""
    stages = ["".join(rng.choice("1112") for _ in range(rng.randint(1, 3))) for _ in range(4)]
    tail = rng.choice(TAILS).format(rng.choice([16, 32]))
    return f"basicblock_{rng.choice([16, 24])}_{'-'.join(stages)}{tail}"


def pruned_by_definition(c, cost_c, specs, costs, accs) -> bool:
    containers = [i for i, a in enumerate(specs) if spec_contains(a, c)]
    return any(costs[j] <= cost_c and accs[j] >= accs[i] for i in containers for j in range(len(specs)))


@pytest.mark.parametrize("seed", range(40))
def test_pop_prunes_exactly_what_the_definition_prunes(seed):
    rng = random.Random(seed)
    archs = [random_spec(rng) for _ in range(rng.randint(0, 40))]
    # integer costs and accuracies: ties test the <= and >= of the definition
    costs = [float(rng.randint(0, 8)) for _ in archs]
    accs = [float(rng.randint(0, 8)) for _ in archs]
    pruner = PartialOrderPruner(archs, costs, accs)
    specs = [parse_spec(a) for a in archs]
    verdicts = []
    for _ in range(40):
        c = parse_spec(random_spec(rng))
        cost_c = float(rng.randint(0, 8))
        record = pruner.check(c, cost_c)
        expected = pruned_by_definition(c, cost_c, specs, costs, accs)
        assert (record is not None) == expected, (c, cost_c)
        verdicts.append(expected)
        if record is not None:
            a, b = archs.index(record.container), archs.index(record.dominator)
            assert spec_contains(specs[a], c) and record.candidate == str(c) and record.candidate_cost == cost_c
            assert (record.container_acc, record.container_cost) == (accs[a], costs[a])
            assert (record.dominator_acc, record.dominator_cost) == (accs[b], costs[b])
            assert costs[b] <= cost_c and accs[b] >= accs[a]
    if seed == 0:
        assert 0 < sum(verdicts) < len(verdicts)  # both verdicts occur


def test_record_names_the_justifying_models():
    big = "basicblock_16_11-21-21-21+fpn:P2-P5:c32+rpn+2fc+128x96+gnws"
    cheap = "basicblock_16_1-2-2-2+fpn:P2-P5:c16+rpn+2fc+128x96+gnws"
    pruner = PartialOrderPruner([big, cheap], [2.0, 0.5], [0.30, 0.31])
    small = parse_spec("basicblock_16_1-21-21-21+fpn:P2-P5:c32+rpn+2fc+128x96+gnws")
    record = pruner.check(small, 1.0)
    assert (record.container, record.dominator) == (big, cheap)
    assert record.reason == (f"partial order pruning: contained in {big} (acc 0.3, cost 2); "
                             f"{cheap} has acc 0.31 >= 0.3 at cost 0.5 <= 1")
    assert pruner.check(small, 0.4) is None  # nothing evaluated is that cheap
    assert PartialOrderPruner([big, cheap], [2.0, 0.5], [0.30, 0.29]).check(small, 1.0) is None
    # b may be a itself when a is no dearer than the candidate
    assert PartialOrderPruner([big], [1.0], [0.3]).check(small, 1.0).dominator == big
    assert PartialOrderPruner([], [], []).check(small, 1.0) is None


def test_best_within_is_the_first_most_accurate():
    archs = [f"basicblock_16_1-2-2-{'1' * k}2+none+rpn+2fc+128x96+gnws" for k in range(5)]
    pruner = PartialOrderPruner(archs, [3.0, 1.0, 2.0, 2.0, 5.0], [0.1, 0.2, 0.4, 0.4, 0.9])
    assert [pruner.best_within(x) for x in (0.5, 1.0, 2.5, 3.0, 4.9, 5.0)] == [None, 1, 2, 2, 2, 4]


def test_bad_inputs():
    a = "basicblock_16_1-2-2-2+none+rpn+2fc+128x96+gnws"
    with pytest.raises(ValueError, match="differ in length"):
        PartialOrderPruner([a], [1.0, 2.0], [0.1])
    with pytest.raises(ValueError, match=re.escape(f"evaluated model {a!r}: accuracy nan is not finite")):
        PartialOrderPruner([a], [1.0], [np.nan])


@pytest.mark.parametrize("cost, acc, message", [
    (np.nan, 0.3, "cost nan"), (np.inf, 0.3, "cost inf"), (1.0, np.inf, "accuracy inf"), (1.0, -np.inf, "accuracy -inf"),
])
def test_non_finite_evaluated_model_is_named(cost, acc, message):
    good = "basicblock_16_1-2-2-2+none+rpn+2fc+128x96+gnws"
    bad = "basicblock_16_11-2-2-2+none+rpn+2fc+128x96+gnws"
    with pytest.raises(ValueError, match=re.escape(f"evaluated model {bad!r}: {message} is not finite")):
        PartialOrderPruner([good, bad], [1.0, cost], [0.2, acc])


@pytest.mark.parametrize("cost", [np.nan, np.inf, -np.inf])
def test_candidate_with_non_finite_cost_is_an_error_naming_it(cost):
    big = "basicblock_16_11-21-21-21+fpn:P2-P5:c32+rpn+2fc+128x96+gnws"
    cheap = "basicblock_16_1-2-2-2+fpn:P2-P5:c16+rpn+2fc+128x96+gnws"
    pruner = PartialOrderPruner([big, cheap], [2.0, 0.5], [0.30, 0.31])
    small = parse_spec("basicblock_16_1-21-21-21+fpn:P2-P5:c32+rpn+2fc+128x96+gnws")
    assert pruner.check(small, 1.0) is not None  # with a finite cost this candidate is pruned
    with pytest.raises(ValueError, match=re.escape(f"candidate {small}: cost {cost} is not finite")):
        pruner.check(small, cost)


def test_parallel_counts_take_part_in_containment():
    serial = parse_encoding("basicblock_16_1-21-21-12")
    more = parse_encoding("basicblock_16_1-21-21-12_0-1-0-2")
    fewer = parse_encoding("basicblock_16_1-21-21-12_0-1-0-1")
    assert contains(more, fewer) and contains(more, serial) and contains(fewer, serial)
    assert not contains(fewer, more) and not contains(serial, fewer)
    # the vectorised pruner agrees: the one with more copies is a container, never the other way
    tail = "+fpn:P2-P4:c16+rpn+2fc:32+64x48+gnws"
    pruner = PartialOrderPruner([str(fewer) + tail, "basicblock_16_1-21-21-1" + tail], [2.0, 0.5], [0.3, 0.4])
    assert pruner.check(parse_spec(str(serial) + tail), 1.0) is not None  # inside `fewer`, beaten by the cheap one
    assert pruner.check(parse_spec(str(more) + tail), 3.0) is None  # contains `fewer`, not contained by it


def test_spec_strings_of_one_encoding_are_one_identity():
    assert str(parse_spec("basicblock_016_1-21-21-12_0-0-0-0+none+rpn+2fc+64x48+bn")) == \
        "basicblock_16_1-21-21-12+none+rpn+2fc+64x48+bn"
