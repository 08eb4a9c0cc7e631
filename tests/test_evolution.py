"""Evolution: parents from the front, no architecture twice, deterministic, POP; stage-two seeding."""
from __future__ import annotations

import logging
import random

import numpy as np
import pandas as pd
import pytest

from smnas.errors import SmnasError, SpecError
from smnas.models.encoding import EncodingBounds, in_bounds, parse_encoding
from smnas.models.spec import parse_spec
from smnas.search.evolution import initial_generation, mutator, next_generation, select_parents
from smnas.engine.cost import backbone_gmacs
from smnas.search.pruning import spec_contains
from smnas.search.seeding import clip_encoding, family_encoding, pick_structures, seed_spec, stage2_groups
from smnas.search.space import StageOneSpace, StageTwoSpace
from smnas.search.tables import rank_population

SPACE1 = StageOneSpace(fpn_channels=(32, 64))
SPACE2 = StageTwoSpace.laptop()


def proxy_cost(spec) -> float:
    """A cheap cost that grows with containment (blocks x base, plus FPN width)."""
    enc = parse_encoding(spec.backbone.name)
    return sum(w * w for s in enc.stage_channels() for w in s) / 1e4 + spec.neck.channels / 100


def stage1_population(n: int, seed: int) -> pd.DataFrame:
    specs = SPACE1.sample(n, seed=seed)
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"arch": [str(s) for s in specs], "status": "ok", "map": rng.random(n).round(2),
                       "latency_ms": rng.integers(1, 50, n).astype(float)})
    df.loc[0, "status"] = "failed"
    return rank_population(df, "latency_ms")


def test_select_parents_takes_the_front_then_later_ranks():
    df = pd.DataFrame({"arch": list("abcdef"), "front_rank": [1, 0, 0, 2, 1, -1],
                       "crowding": [np.inf, 0.5, np.inf, np.inf, 0.2, np.nan]})
    assert select_parents(df, 1) == ["c", "b"]  # the whole front, most isolated first
    assert select_parents(df, 4) == ["c", "b", "a", "e"]
    assert select_parents(df, 10) == ["c", "b", "a", "e", "d"]  # never an unranked row
    with pytest.raises(SmnasError, match=r"lacks column\(s\) \['crowding'\]"):
        select_parents(df.drop(columns="crowding"), 2)
    with pytest.raises(SmnasError, match="nothing to mutate"):
        select_parents(df.assign(front_rank=-1), 2)


def test_next_generation_dedupes_and_is_deterministic():
    pop = stage1_population(30, seed=3)
    front = set(pop.loc[pop["front_rank"] == 0, "arch"])
    evaluated = set(pop["arch"]) | {str(s) for s in SPACE1.sample(200, seed=9)}
    mutate = mutator(SPACE1)
    rows = next_generation(pop, "stage1", 1, 12, seed=0, mutate=mutate, evaluated=evaluated)
    archs = [r["arch"] for r in rows]
    assert len(rows) == 12 and len(set(archs)) == 12 and not set(archs) & evaluated
    assert all(r["status"] == "pending" and r["generation"] == 1 and r["stage"] == "stage1" for r in rows)
    assert set(r["parent"] for r in rows) <= set(pop.loc[pop["front_rank"] >= 0, "arch"])
    assert front <= set(r["parent"] for r in rows) or len(front) > 12
    assert set(rows[0]) == {"arch", "stage", "generation", "parent", "status", "reason"}
    again = next_generation(pop.sample(frac=1.0, random_state=1), "stage1", 1, 12, seed=0, mutate=mutate,
                            evaluated=set(evaluated))
    assert again == rows  # row order of the table does not matter
    assert next_generation(pop, "stage1", 2, 12, seed=0, mutate=mutate, evaluated=evaluated) != rows
    # a second generation never repeats the first
    later = next_generation(pop, "stage1", 2, 12, seed=0, mutate=mutate, evaluated=evaluated | set(archs))
    assert not {r["arch"] for r in later} & set(archs)


def test_exhausted_space_gives_fewer_and_says_so(caplog):
    space = StageOneSpace(backbones=("resnet18", "resnet34"), necks=("none",), rpns=("rpn",), heads=("2fc",),
                          input_sizes=((128, 96), (160, 120)))
    specs = list(space)  # 4 structures
    pop = rank_population(pd.DataFrame({"arch": [str(specs[0])], "status": "ok", "map": [0.1], "latency_ms": [1.0]}),
                          "latency_ms")
    with caplog.at_level(logging.WARNING, logger="smnas.search.evolution"):
        rows = next_generation(pop, "stage1", 1, 5, seed=0, mutate=mutator(space), evaluated=set(), max_tries=40)
    # one edit away from specs[0]: the other backbone or the other size (not both)
    assert sorted(r["arch"] for r in rows) == sorted(map(str, (specs[1], specs[2])))
    assert "only 2 of 5 new children after 40 tries" in caplog.text


def stage2_population(seed: int) -> pd.DataFrame:
    """Seeds and their mutations, with accuracy following the prior (log of the cost) + noise."""
    rng = random.Random(seed)
    specs = [seed_spec(parse_spec(f"{b}@0.25+fpn:P2-P5:c32+rpn+2fc:256+128x96+gnws"), SPACE2)
             for b in ("resnet18", "resnet34")]
    while len(specs) < 40:
        child = mutator(SPACE2)(rng.choice(specs), rng)
        if child not in specs:
            specs.append(child)
    # a big model that trained badly: it contains every child with <= 3 blocks a stage
    specs.append(parse_spec("basicblock_32_222-111-111-111+fpn:P2-P5:c64+rpn+2fc:256+128x96+gnws"))
    costs = np.array([proxy_cost(s) for s in specs])
    acc = 0.1 * np.log1p(costs) + np.random.default_rng(seed).normal(0, 0.005, len(specs))
    acc[-1] = 0.0
    df = pd.DataFrame({"arch": [str(s) for s in specs], "status": "ok", "map": acc, "cost": costs})
    return rank_population(df, "cost")


def test_stage2_generation_applies_pop():
    pop = stage2_population(0)
    rows = next_generation(pop, "stage2", 1, 10, seed=0, mutate=mutator(SPACE2), evaluated=set(pop["arch"]),
                           cost=proxy_cost)
    pending = [r for r in rows if r["status"] == "pending"]
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert len(pending) == 10 and pruned, "this population prunes some children"
    ok = pop[pop["status"] == "ok"]
    for r in rows:
        spec = parse_spec(r["arch"])
        assert r["cost"] == proxy_cost(spec) and in_bounds(parse_encoding(spec.backbone.name), SPACE2.bounds)
        prunable = any(spec_contains(parse_spec(a), spec) and (
            (ok["cost"] <= r["cost"]) & (ok["map"] >= acc_a)).any() for a, acc_a in zip(ok["arch"], ok["map"]))
        assert prunable == (r["status"] == "pruned"), r
    assert pruned[0]["reason"].startswith("partial order pruning: contained in ")
    assert next_generation(pop, "stage2", 1, 10, seed=0, mutate=mutator(SPACE2), evaluated=set(pop["arch"]),
                           cost=proxy_cost) == rows


def test_initial_generation_stage1():
    rows = initial_generation("stage1", 6, seed=4, space1=SPACE1)
    assert [r["arch"] for r in rows] == [str(s) for s in SPACE1.sample(6, seed=4)]
    skip = {rows[0]["arch"], rows[3]["arch"]}
    again = initial_generation("stage1", 6, seed=4, space1=SPACE1, evaluated=skip)
    assert len(again) == 6 and not {r["arch"] for r in again} & skip
    with pytest.raises(SmnasError, match="needs space1"):
        initial_generation("stage1", 6, seed=4)


def test_pick_structures_spreads_along_the_front():
    df = pd.DataFrame({"arch": [str(s) for s in SPACE1.sample(12, seed=0)], "status": "ok",
                       "latency_ms": [float(x) for x in range(12, 0, -1)], "front_rank": [0] * 10 + [1, 1]})
    picked = [str(s) for s in pick_structures(df, 4)]
    front = df[df["front_rank"] == 0].sort_values("latency_ms")["arch"].tolist()
    assert picked == [front[i] for i in (0, 3, 6, 9)]  # ends included, evenly spaced
    assert len(pick_structures(df, 11)) == 11  # the next front fills in
    assert [str(s) for s in pick_structures(df.head(3), 6)] == df.head(3).sort_values("latency_ms")["arch"].tolist()
    with pytest.raises(SmnasError, match="no column 'latency_ms'"):
        pick_structures(df.drop(columns="latency_ms"), 2)
    with pytest.raises(SmnasError, match="no evaluated"):
        pick_structures(df.assign(status="failed"), 2)


def test_pick_structures_by_hypervolume_leaves_out_a_cheap_end_that_buys_little():
    # s18's stage-one front: a RetinaNet 0.27 mAP worse for 0.75 ms less than the 2FC model
    maps, ms = [0.102, 0.369, 0.376, 0.393, 0.414], [6.16, 6.91, 13.44, 14.93, 16.16]
    df = pd.DataFrame({"arch": [str(s) for s in SPACE1.sample(5, seed=1)], "status": "ok", "map": maps,
                       "latency_ms": ms, "front_rank": 0})
    by_ms = df.sort_values("latency_ms")["arch"].tolist()
    assert [str(s) for s in pick_structures(df, 3)] == [by_ms[0], by_ms[2], by_ms[4]]
    assert [str(s) for s in pick_structures(df, 3, how="hypervolume")] == [by_ms[0], by_ms[1], by_ms[4]]
    assert [str(s) for s in pick_structures(df, 1, how="hypervolume")] == [by_ms[1]]  # alone it holds most
    assert len(pick_structures(df, 5, how="hypervolume")) == 5
    with pytest.raises(SmnasError, match="no column 'map'"):
        pick_structures(df.drop(columns="map"), 2, how="hypervolume")
    with pytest.raises(SmnasError, match="how must be"):
        pick_structures(df, 2, how="knee")


def test_initial_generation_stage2_seeds_then_mutants():
    df = pd.DataFrame({"arch": ["resnet18@0.25+fpn:P2-P5:c32+rpn+2fc:256+128x96+gnws",
                                "resnet50@0.25+fpn:P1-P5:c32+rpn+cascade3:256+160x120+gnws",
                                "mobilenetv2@0.25+none+none+retina+128x96+gnws"],
                       "status": "ok", "latency_ms": [3.0, 9.0, 1.0], "front_rank": 0})
    rows = initial_generation("stage2", 8, seed=0, structures=pick_structures(df, 3), space2=SPACE2, cost=proxy_cost)
    assert [r["arch"] for r in rows[:3]] == [
        "invres_16_1-211-2111-2111+none+none+retina+128x96+gnws",
        "basicblock_16_11-21-21-21+fpn:P2-P5:c32+rpn+2fc:256+128x96+gnws",
        "bottleneck_16_111-211-211-211+fpn:P1-P5:c32+rpn+cascade3:256+160x120+gnws",
    ]
    assert [r["parent"] for r in rows[:3]] == sorted(df["arch"], key=lambda a: df.set_index("arch").loc[a, "latency_ms"])
    assert len(rows) == 8 and len({r["arch"] for r in rows}) == 8
    assert {r["parent"] for r in rows[3:]} <= {r["arch"] for r in rows[:3]}
    assert all(r["cost"] == proxy_cost(parse_spec(r["arch"])) for r in rows)


def test_stage2_groups_one_per_distinct_seed_cheapest_first():
    df = pd.DataFrame({"arch": ["resnet18@0.25+fpn:P2-P5:c32+rpn+2fc:256+128x96+gnws",
                                "resnet18@0.25+fpn:P2-P5:c64+rpn+2fc:256+128x96+gnws",  # same seed: c64 -> 32
                                "resnet50@0.25+fpn:P1-P5:c32+rpn+cascade3:256+160x120+gnws",
                                "mobilenetv2@0.25+none+none+retina+128x96+gnws"],
                       "status": "ok", "latency_ms": [3.0, 4.0, 9.0, 1.0], "front_rank": 0})
    groups = stage2_groups(df, StageTwoSpace(fpn_channels=(16, 32)), "latency_ms")
    assert groups["group"].tolist() == ["C0", "C1", "C2"]
    assert groups["structure"].tolist() == [df["arch"][3], df["arch"][0], df["arch"][2]]
    assert groups["seed"].tolist() == [str(seed_spec(parse_spec(a), StageTwoSpace(fpn_channels=(16, 32))))
                                       for a in groups["structure"]]
    assert stage2_groups(df, StageTwoSpace(structures=1), "latency_ms")["group"].tolist() == ["C0"]


def test_seed_spec_and_clipping():
    paper = StageTwoSpace.paper()
    r18 = parse_spec("resnet18+fpn:P2-P5:c256+rpn+2fc+800x600+bn")
    assert str(seed_spec(r18, paper)) == "basicblock_64_11-21-21-21+fpn:P2-P5:c256+rpn+2fc+800x600+gnws"
    assert str(family_encoding(parse_spec("resnet50@0.5+none+rpn+2fc+800x600+bn").backbone)) == "bottleneck_32_111-2111-211111-211"
    tight = EncodingBounds((48, 56), min_blocks=10, max_blocks=12, max_stage_blocks=4, min_doublings=2, max_doublings=2)
    assert str(clip_encoding(parse_encoding("bottleneck_64_111-2111-2" + "1" * 22 + "-211"), tight)) == "bottleneck_56_111-211-211-111"
    assert str(clip_encoding(parse_encoding("basicblock_16_1-1-1-1"), tight)) == "basicblock_48_111-211-21-11"
    with pytest.raises(SpecError, match="3 stages, the stage-two bounds need 4"):
        clip_encoding(parse_encoding("basicblock_64_1-2-2"), tight)


def test_backbone_gmacs_counts_the_backbone_alone():
    spec = parse_spec("bottleneck_64_111-2111-211111-211+fpn:P2-P5:c256+rpn+2fc+224x224+bn")
    assert backbone_gmacs(spec) == pytest.approx(4.087136256)  # ResNet-50 without its classifier
    assert backbone_gmacs(parse_spec("resnet50+none+rpn+2fc+224x224+gnws")) == pytest.approx(4.087136256)


def test_stage2_space_from_dict():
    s = StageTwoSpace.from_dict({"base_channels": [48, 64], "fpn_channels": [128], "max_blocks": 20, "structures": 2})
    assert s.base_channels == (48, 64) and s.fpn_channels == (128,) and s.bounds.max_blocks == 20
    assert s.bounds.min_blocks == EncodingBounds.laptop().min_blocks and s.structures == 2
    with pytest.raises(SmnasError, match=r"^cfg.yaml spnas.space: unknown key\(s\) \['blocks'\]"):
        StageTwoSpace.from_dict({"blocks": 3}, "cfg.yaml spnas.space")
    with pytest.raises(SmnasError, match="^cfg.yaml stage2.space: encoding bounds: blocks 30..20"):
        StageTwoSpace.from_dict({"min_blocks": 30, "max_blocks": 20}, "cfg.yaml stage2.space")
    with pytest.raises(SmnasError, match="^config stage2.space: stage two: norm 'gn'"):
        StageTwoSpace.from_dict({"norm": "gn"})
    assert StageTwoSpace.from_dict({}).pick == "spread" and StageTwoSpace.from_dict({"pick": "hypervolume"}).pick == "hypervolume"
    with pytest.raises(SmnasError, match="^config stage2.space: stage two: pick 'knee' is not one of spread, hypervolume"):
        StageTwoSpace.from_dict({"pick": "knee"})
    assert StageTwoSpace.paper().fpn_channels == (128, 256, 512) and StageTwoSpace.paper().base_channels == (48, 56, 64, 72)


def test_stage2_sample_generation_reads_max_ops(tmp_path):
    from smnas.workflow.generations import StageSettings, sample_generation

    pop = stage2_population(0)
    pop.to_parquet(tmp_path / "population.parquet")
    changed = {}
    for max_ops in (1, 3):
        settings = StageSettings(population=12, space=SPACE2, cost="cost", max_ops=max_ops)
        table = sample_generation("stage2", 1, settings, seed=0, population=tmp_path / "population.parquet", group="C0")
        pairs = [(parse_spec(a), parse_spec(p)) for a, p in zip(table["arch"], table["parent"])]
        assert len(pairs) == 12 and not set(table["arch"]) & set(pop["arch"])
        changed[max_ops] = sum(c.backbone != p.backbone and c.neck != p.neck for c, p in pairs)
    assert changed[1] == 0 and changed[3] > 0  # backbone and FPN in one child: more than one edit
