"""Partial Order Pruning against its brute-force definition on random populations."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest

from smnas.models.encoding import spec_contains
from smnas.models.spec import parse_spec
from smnas.search.pruning import PartialOrderPruner

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
