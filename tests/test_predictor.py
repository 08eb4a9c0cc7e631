"""The predictor that screens evolution's children: additive fit, hypervolume-greedy choice, wiring."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from smnas.errors import SmnasError
from smnas.models.encoding import parse_encoding
from smnas.models.spec import parse_spec
from smnas.search import evolution
from smnas.search.evolution import mutator, next_generation, select_parents
from smnas.search.predictor import MIN_FIT, AdditivePredictor, module_choices, screen_children
from smnas.search.random_search import random_stage2
from smnas.search.seeding import seed_spec
from smnas.search.space import StageOneSpace, StageTwoSpace
from smnas.search.tables import rank_population

SPACE = StageOneSpace()
EFFECT = {"resnet18": 0.10, "resnet34": 0.12, "resnet50": 0.15, "resnet101": 0.16, "resnext50": 0.16,
          "resnext101": 0.17, "mobilenetv2": 0.02}


def truth(arch: str) -> tuple[float, float]:
    """An additive world: mAP from backbone and input size, latency (ms) multiplicative in both."""
    spec = parse_spec(arch)
    w = spec.input_size[0]
    backbone = spec.backbone.name
    return EFFECT[backbone] + w / 1000, (1 + 10 * EFFECT[backbone]) * w / 32


def population(archs: list[str]) -> pd.DataFrame:
    maps, lats = zip(*(truth(a) for a in archs))
    return pd.DataFrame({"arch": archs, "status": "ok", "map": maps, "latency_ms": lats})


def test_module_choices_name_the_five_modules():
    spec = parse_spec("resnet18@0.25+fpn:P2-P5:c32+rpn+2fc:256+160x120+bn")
    assert module_choices(spec) == ["backbone=resnet18", "neck=fpn:P2-P5:c32", "rpn=rpn", "head=2fc:256",
                                    "size=160x120"]


def test_an_encoded_backbone_counts_as_its_base_width():
    spec = parse_spec("basicblock_24_11-21-21-21+fpn:P2-P5:c16+rpn+2fc:256+96x72+bn")
    assert module_choices(spec)[:2] == ["base=24", "neck=fpn:P2-P5:c16"]


def test_an_additive_world_is_learned_and_generalises_to_unseen_combinations():
    archs = [str(s) for s in SPACE.sample(120, seed=0)]
    fit = AdditivePredictor(ridge=1e-6).fit(*zip(*[(a, *truth(a)) for a in archs]))
    unseen = [str(s) for s in SPACE.sample(400, seed=1) if str(s) not in set(archs)][:50]
    pmap, plat = fit.predict(unseen)
    tmap, tlat = np.array([truth(a) for a in unseen]).T
    assert np.abs(pmap - tmap).max() < 1e-4
    assert np.corrcoef(np.log(plat), np.log(tlat))[0, 1] > 0.99  # log latency is additive here too


def test_a_choice_never_evaluated_gets_no_effect():
    unseen = ("resnext101", "resnet101")
    archs = [a for a in (str(s) for s in SPACE.sample(300, seed=0)) if not any(u in a for u in unseen)][:40]
    fit = AdditivePredictor().fit(*zip(*[(a, *truth(a)) for a in archs]))
    base = archs[0]
    seen = parse_spec(base).backbone.name
    pmap, pcost = fit.predict([base.replace(seen, u) for u in unseen])
    assert pmap[0] == pmap[1] and pcost[0] == pcost[1]  # judged by the other four modules alone
    assert pmap[0] != fit.predict([base])[0][0]  # where the seen backbone's effect counts


def test_fit_rejects_bad_data():
    a = "resnet18@0.25+fpn:P2-P5:c32+rpn+2fc:256+160x120+bn"
    with pytest.raises(SmnasError, match="need as many of each"):
        AdditivePredictor().fit([a, a], [0.1], [1.0])
    with pytest.raises(SmnasError, match="positive cost"):
        AdditivePredictor().fit([a], [0.1], [0.0])
    with pytest.raises(ValueError, match="ridge"):
        AdditivePredictor(ridge=-1)


def test_the_screen_keeps_children_predicted_to_lift_the_front():
    pop = population([str(s) for s in SPACE.sample(40, seed=2)])
    children = [str(s) for s in SPACE.sample(400, seed=3) if str(s) not in set(pop["arch"])][:30]
    keep, predicted = screen_children(pop, children, n=3, cost="latency_ms", ridge=1e-3)
    assert len(keep) == len(set(keep)) == 3 and set(predicted) == set(children)
    M, L = pop["map"].to_numpy(), pop["latency_ms"].to_numpy()

    def dominated(arch):  # by an evaluated candidate, in the true (additive) world
        m, lat = truth(arch)
        return bool(((M >= m) & (L <= lat)).any())

    lifts = [i for i, a in enumerate(children) if not dominated(a)]
    assert 3 <= len(lifts) < len(children) // 2  # most children would be wasted training
    assert all(i in lifts for i in keep)


def test_the_screen_needs_data_and_more_children_than_places():
    pop = population([str(s) for s in SPACE.sample(MIN_FIT - 1, seed=2)])
    children = [str(s) for s in SPACE.sample(10, seed=3)]
    assert screen_children(pop, children, n=3, cost="latency_ms") == ([0, 1, 2], {})
    big = population([str(s) for s in SPACE.sample(10, seed=2)])
    assert screen_children(big, children[:2], n=3, cost="latency_ms") == ([0, 1], {})
    with pytest.raises(SmnasError, match=r"lacks column\(s\) \['latency_ms'\]"):
        screen_children(big.drop(columns="latency_ms"), children, n=3, cost="latency_ms")


def test_next_generation_with_a_screen_keeps_n_unseen_children_of_the_front():
    pop = rank_population(population([str(s) for s in SPACE.sample(12, seed=4)]), "latency_ms")
    parents = set(select_parents(pop, 3))
    plain = next_generation(pop, "stage1", 1, 3, seed=0, mutate=mutator(SPACE), evaluated=set())
    rows = next_generation(pop, "stage1", 1, 3, seed=0, mutate=mutator(SPACE), evaluated=set(), screen=8)
    again = next_generation(pop, "stage1", 1, 3, seed=0, mutate=mutator(SPACE), evaluated=set(), screen=8)
    assert rows == again  # deterministic
    assert len(rows) == 3 and all(r["status"] == "pending" for r in rows)
    assert {r["parent"] for r in rows} <= parents and not {r["arch"] for r in rows} & set(pop["arch"])
    assert len(plain) == 3 and rows != plain  # the screen chose other children than the first three made
    with pytest.raises(SmnasError, match="screen must be >= 1"):
        next_generation(pop, "stage1", 1, 3, seed=0, mutate=mutator(SPACE), evaluated=set(), screen=0)


# ---- stage two: the cost is known before training ----------------------------------------------

SPACE2 = StageTwoSpace(fpn_channels=(16, 32, 64))
STRUCTURE = parse_spec("resnet18@0.25+fpn:P2-P5:c32+rpn+2fc:256+96x72+bn")


def gmacs(spec) -> float:
    """A stand-in for stage two's GMACs: grows with blocks, widths and FPN channels."""
    enc = parse_encoding(spec.backbone.name)
    return sum(w * w for s in enc.stage_channels() for w in s) / 1e4 + spec.neck.channels / 100


def truth2(spec) -> float:
    """mAP rising with log cost; an FPN of 64 channels trains badly (costs more, gives less)."""
    return 0.2 + 0.05 * np.log(gmacs(spec)) - 0.2 * (spec.neck.channels == 64)


def stage2_pop(n: int, seed: int, wide: bool = True) -> pd.DataFrame:
    rng, specs = random.Random(seed), [seed_spec(STRUCTURE, SPACE2)]
    while len(specs) < n:
        spec = random_stage2(STRUCTURE, SPACE2, rng)
        if spec not in specs and (wide or spec.neck.channels != 64):
            specs.append(spec)
    return pd.DataFrame({"arch": [str(s) for s in specs], "status": "ok", "map": [truth2(s) for s in specs],
                         "gmacs": [gmacs(s) for s in specs]})


def test_with_known_costs_the_predictor_learns_map_from_log_cost_and_returns_the_costs():
    pop = stage2_pop(30, seed=0, wide=False)
    fit = AdditivePredictor(ridge=1e-6).fit(pop["arch"], pop["map"], pop["gmacs"], cost_known=True)
    rng = random.Random(1)
    unseen = [s for s in (random_stage2(STRUCTURE, SPACE2, rng) for _ in range(40))
              if str(s) not in set(pop["arch"]) and s.neck.channels != 64][:20]
    costs = [gmacs(s) for s in unseen]
    pmap, pcost = fit.predict([str(s) for s in unseen], costs)
    assert np.abs(pmap - [truth2(s) for s in unseen]).max() < 1e-4  # new encodings, judged by their cost
    assert pcost.tolist() == costs
    with pytest.raises(SmnasError, match="predict needs one cost per arch"):
        fit.predict([str(s) for s in unseen])


def test_a_stage2_screen_keeps_children_with_their_computed_costs_and_skips_dominated_ones(monkeypatch):
    pop = rank_population(stage2_pop(12, seed=2), "gmacs")
    assert (pop["arch"].str.contains(":c64+") & (pop["front_rank"] > 0)).any()  # the population shows c64's cost
    seen: list[str] = []
    predicted: dict = {}

    def spy(population, children, *args, **kwargs):  # the real screen, recording what it was shown
        seen[:] = children
        keep, pred = screen_children(population, children, *args, **kwargs)
        predicted.update(pred)
        return keep, pred

    monkeypatch.setattr(evolution, "screen_children", spy)
    kwargs = dict(mutate=mutator(SPACE2), evaluated=set(pop["arch"]), cost=gmacs, screen=6, screen_cost="gmacs")
    rows = next_generation(pop, "stage2/C0", 1, 3, seed=0, **kwargs)
    assert rows == next_generation(pop, "stage2/C0", 1, 3, seed=0, **kwargs)
    kept = [r for r in rows if r["status"] == "pending"]
    assert len(kept) == 3 and len(seen) == 18 and {r["arch"] for r in kept} <= set(seen)
    assert all(r["cost"] == gmacs(parse_spec(r["arch"])) for r in rows)
    assert all(predicted[a][1] == gmacs(parse_spec(a)) for a in seen)  # costs computed, not predicted
    M, C = pop["map"].to_numpy(), pop["gmacs"].to_numpy()

    def dominated(arch):  # by an evaluated candidate, in the true world
        spec = parse_spec(arch)
        return bool(((M >= truth2(spec)) & (C <= gmacs(spec))).any())

    assert sum(map(dominated, seen)) >= len(seen) // 3  # many children would be wasted training
    assert not any(dominated(r["arch"]) for r in kept)


def test_a_screen_given_measured_costs_predicts_only_map(monkeypatch):
    """Stage one's screen times each child untrained (``measure``): the costs it judges are the
    measured ones, written to the rows; measure is not called without a screen."""
    pop = rank_population(population([str(s) for s in SPACE.sample(12, seed=4)]), "latency_ms")
    calls: list[str] = []

    def measure(spec) -> float:  # a stopwatch that sees a slow RPN the additive world does not
        calls.append(str(spec))
        return truth(str(spec))[1] * (3.0 if spec.rpn.kind == "garpn" else 1.0)

    predicted: dict = {}

    def spy(population, children, *args, **kwargs):
        keep, pred = screen_children(population, children, *args, **kwargs)
        predicted.update(pred)
        return keep, pred

    monkeypatch.setattr(evolution, "screen_children", spy)
    kwargs = dict(mutate=mutator(SPACE), evaluated=set(), screen=8, measure=measure)
    rows = next_generation(pop, "stage1", 1, 3, seed=0, **kwargs)
    assert len(calls) == 24 and set(predicted) == set(calls)  # every child made was timed, once
    assert all(predicted[a][1] == measure(parse_spec(a)) for a in predicted)  # judged by its measured cost
    assert len(rows) == 3 and all(r["cost"] == measure(parse_spec(r["arch"])) for r in rows)
    calls.clear()
    assert len(next_generation(pop, "stage1", 1, 3, seed=0, **{**kwargs, "screen": 1})) == 3 and calls == []
    with pytest.raises(SmnasError, match="computed cost or a measured one, not both"):
        next_generation(pop, "stage1", 1, 3, seed=0, **kwargs, cost=lambda spec: 1.0)
