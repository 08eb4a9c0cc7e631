"""SP-NAS as workflow generations: the start network, serial children and their weights, the
reignite rule, the parallel draws under a MACs limit, and a child's inherited detector weights."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from smnas.errors import SpecError
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.encoding import check_encoding, parse_encoding
from smnas.models.registry import backbone_key
from smnas.models.spec import parse_spec, spec_hash
from smnas.search.space import StageTwoSpace
from smnas.search.spnas import parallel_stage_gmacs
from smnas.search.tables import make_table, rank_population
from smnas.workflow import jobs
from smnas.workflow.config import ConfigError, spnas_phase_settings, spnas_settings
from smnas.workflow.spnas import (
    SPNASSettings, hypervolume_by_generation, parallel_generation, serial_generation, stalled, start_spec,
    write_parent_files,
)

SPACE = {"base_channels": [8], "fpn_channels": [16], "min_blocks": 8, "max_blocks": 12, "max_stage_blocks": 5,
         "norm": "gnws"}
STRUCTURE = "mobilenetv2@0.125+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"


def settings(phase: str = "serial", **kw) -> SPNASSettings:
    return SPNASSettings(phase=phase, population=3, space=StageTwoSpace.from_dict(SPACE), **kw)


def test_start_network_is_a_growable_layout_inside_the_space():
    start = start_spec(STRUCTURE, StageTwoSpace.from_dict(SPACE))
    enc = parse_encoding(start.backbone.name)
    assert str(enc) == "basicblock_8_11-21-21-21"  # MobileNetV2 cannot be grown: ResNet-18's layout
    assert (start.neck, start.rpn, start.head, start.input_size) == (parse_spec(STRUCTURE).neck, parse_spec(STRUCTURE).rpn,
                                                                       parse_spec(STRUCTURE).head, (96, 72))
    r50 = start_spec("resnet50@0.125+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws", StageTwoSpace.from_dict(SPACE))
    assert parse_encoding(r50.backbone.name).block == "bottleneck"
    check_encoding(parse_encoding(r50.backbone.name), StageTwoSpace.from_dict(SPACE).bounds)


def test_serial_generation_zero_starts_from_the_pretrained_start():
    rows = serial_generation(0, settings(), 0, "spnas/C0/serial", STRUCTURE, None, "cands")
    start = str(start_spec(STRUCTURE, StageTwoSpace.from_dict(SPACE)))
    assert rows[0]["arch"] == start and rows[0]["parent"] == ""
    assert len(rows) == 3 and len({r["arch"] for r in rows}) == 3
    weights = "results/pretrained/resnet18@0.125+gnws/weights.pt"  # the start is ResNet-18's layout at base 8
    assert all(r["init"] == "pretrained" and r["weights"] == weights for r in rows)
    for r in rows[1:]:
        assert r["parent"] == start
        child, parent = parse_spec(r["arch"]), parse_spec(start)
        enc = check_encoding(parse_encoding(child.backbone.name), StageTwoSpace.from_dict(SPACE).bounds)
        assert enc.block == "basicblock" and enc.base_channels == 8
        assert sum(s.count("2") for s in enc.stages) == 3  # swaps and expands keep the doublings
        assert (child.neck, child.head, child.input_size) == (parent.neck, parent.head, parent.input_size)
    assert rows == serial_generation(0, settings(), 0, "spnas/C0/serial", STRUCTURE, None, "cands")
    assert rows != serial_generation(0, settings(), 1, "spnas/C0/serial", STRUCTURE, None, "cands")


def population(maps: dict[int, list[float]], init: dict[int, str] | None = None) -> pd.DataFrame:
    """A ranked population: per generation, models of gmacs 1, 2, ... with the given mAPs."""
    rows = []
    for g, values in maps.items():
        for i, m in enumerate(values):
            arch = f"basicblock_8_11-21-21-{'2' + '1' * (g * 3 + i)}+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"
            rows.append({"arch": arch, "stage": "spnas", "group": "C0", "generation": g, "parent": "",
                         "init": (init or {}).get(g, "inherited"), "status": "ok", "map": m, "gmacs": 1.0 + i})
    return rank_population(make_table(rows), "gmacs")


def test_hypervolume_by_generation_against_a_hand_computed_area():
    pop = population({0: [0.1, 0.2], 1: [0.3, 0.05]})
    ref = 1.1 * 2.0
    # g0: (1, .1), (2, .2): area .1 * (2.2 - 1) + (.2 - .1) * (2.2 - 2); g1 adds (1, .3) dominating (1, .1)
    expected = [0.1 * (ref - 1) + 0.1 * (ref - 2), 0.3 * (ref - 1)]
    assert np.allclose(hypervolume_by_generation(pop, "gmacs"), expected)


@pytest.mark.parametrize("maps,init,kw,expect", [
    ({0: [0.1, 0.2], 1: [0.1, 0.2001]}, None, {}, True),              # no gain: reignite
    ({0: [0.1, 0.2], 1: [0.3, 0.4]}, None, {}, False),                # the front moved
    ({0: [0.1, 0.2], 1: [0.1, 0.2001]}, {1: "reignited"}, {}, False),  # the last one was a reignite
    ({0: [0.1, 0.2], 1: [0.1, 0.2]}, {0: "reignited"}, {"max_reignites": 1}, False),  # budget spent
    ({0: [0.1, 0.2], 1: [0.3, 0.4]}, None, {"min_gain": 10.0}, True),  # a gain below 10x counts as a stall
])
def test_the_reignite_rule(maps, init, kw, expect):
    assert stalled(population(maps, init), 2, settings(**kw))[0] is expect


def test_no_reignite_before_patience_generations_were_compared():
    pop = population({0: [0.1, 0.2], 1: [0.1, 0.2]})
    assert stalled(pop, 2, settings(patience=1))[0] is True
    assert stalled(pop, 2, settings(patience=2))[0] is False  # no generation before generation 0
    assert stalled(pop.loc[pop["generation"] == 0], 1, settings(patience=1))[0] is False


def evaluated_generation_zero(tmp_path) -> tuple[pd.DataFrame, object]:
    """Serial generation 0, evaluated (mAP 0.1, 0.2, 0.3 at 1, 2, 3 GMACs) and ranked, on disk."""
    rows = serial_generation(0, settings(), 0, "spnas/C0/serial", STRUCTURE, None, "cands")
    pop = rank_population(make_table([{**r, "status": "ok", "map": 0.1 * (i + 1), "gmacs": 1.0 + i, "group": "C0"}
                                      for i, r in enumerate(rows)]), "gmacs")
    pop.to_parquet(tmp_path / "gen0.parquet")
    return pop, tmp_path / "gen0.parquet"


def test_serial_children_inherit_the_parents_model_or_a_reignited_backbone(tmp_path):
    pop, path = evaluated_generation_zero(tmp_path)
    grown = serial_generation(1, settings(min_gain=0.0), 0, "spnas/C0/serial", STRUCTURE, path, "cands")
    front = set(pop.loc[pop["front_rank"] == 0, "arch"])
    assert grown and all(r["parent"] in front and r["arch"] not in set(pop["arch"]) for r in grown)
    assert all(r["init"] == "inherited" and r["weights"] == f"cands/{spec_hash(r['parent'])}/model.pt" for r in grown)
    # generation 2 after a generation 1 that gained nothing (here: none of it was evaluated)
    reignited = serial_generation(2, settings(), 0, "spnas/C0/serial", STRUCTURE, path, "cands")
    assert reignited
    for r in reignited:
        key = backbone_key(parse_spec(r["parent"]).backbone.name, 1.0, "gnws")
        assert r["init"] == "reignited" and r["weights"] == f"results/pretrained/{key}/weights.pt"
        assert r["detector"] == f"cands/{spec_hash(r['parent'])}/model.pt"  # neck and heads


def test_parallel_candidates_widen_the_serial_best_under_the_limit(tmp_path):
    pop, path = evaluated_generation_zero(tmp_path)
    best = pop.sort_values("map")["arch"].iloc[-1]
    s = settings("parallel", max_gmacs_ratio=2.0)
    out = parallel_generation(0, s, 0, "spnas/C0/parallel", path, "cands")
    assert len(out) == 3 and len({r["arch"] for r in out}) == 3
    spec = parse_spec(best)
    serial, per_copy = parallel_stage_gmacs(spec.backbone.name, spec.input_size)
    for r in out:
        child = parse_spec(r["arch"])
        enc = parse_encoding(child.backbone.name)
        assert r["parent"] == best and r["weights"] == f"cands/{spec_hash(best)}/model.pt"
        assert str(enc.serial) == spec.backbone.name and any(enc.parallel)
        assert serial + sum(k * c for k, c in zip(enc.parallel, per_copy)) <= 2.0 * serial + 1e-12
        assert (child.neck, child.head) == (spec.neck, spec.head)


def test_parent_files_are_written_once(tmp_path):
    rows = serial_generation(0, settings(), 0, "spnas/C0/serial", STRUCTURE, None, str(tmp_path))
    write_parent_files(rows, tmp_path)
    first = tmp_path / spec_hash(rows[0]["arch"]) / "parent.json"
    assert json.loads(first.read_text()) == {"arch": rows[0]["arch"], "weights": rows[0]["weights"], "detector": "",
                                             "init": "pretrained"}
    write_parent_files([{**rows[0], "weights": "elsewhere.pt"}], tmp_path)
    assert json.loads(first.read_text())["weights"] == rows[0]["weights"]


def test_settings_errors_name_the_key():
    block = {"cost": "gmacs", "space": SPACE, "serial": {"generations": 2, "population": 2, "patience": 1},
             "parallel": {"generations": 1, "population": 2}}
    assert spnas_settings(spnas_phase_settings(block, "serial")).patience == 1
    with pytest.raises(ConfigError, match="spnas.serial: unknown key.*patiense"):
        spnas_settings(spnas_phase_settings({**block, "serial": {"population": 2, "patiense": 1}}, "serial"))
    with pytest.raises(ConfigError, match="config spnas.space.*max_blockz"):
        spnas_settings(spnas_phase_settings({**block, "space": {**SPACE, "max_blockz": 3}}, "parallel"))


def _detector(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_detector(parse_spec(arch), DetectorOptions(num_classes=6)).eval()


def test_the_inherit_job_carries_a_trained_parent_across_an_expand(tmp_path, tiny_coco):
    parent = "basicblock_8_11-21-21-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"
    child = "basicblock_8_11-211-21-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"  # a block after layer2.1
    model = _detector(parent, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # away from any initialisation
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "arch.txt").write_text(child + "\n")
    (tmp_path / "parent.json").write_text(json.dumps({"arch": parent, "weights": "model.pt", "init": "inherited"}))
    options = {"seed": 0, "detector": {}}
    jobs.inherit(str(tmp_path / "arch.txt"), str(tmp_path / "parent.json"), [str(tmp_path / "model.pt")],
                 str(tiny_coco["coco_train_json"]), str(tmp_path / "init.pt"), options)
    init = torch.load(tmp_path / "init.pt", weights_only=True)
    src = model.state_dict()
    for key in ("backbone.body.conv1.weight", "backbone.body.layer2.1.conv2.weight", "backbone.body.layer4.0.conv1.weight",
                "backbone.neck.inner.0.weight" if "backbone.neck.inner.0.weight" in src else "rpn.head.conv.0.0.weight",
                "roi_heads.box_predictor.cls_score.weight"):
        assert torch.equal(init[key], src[key]), key
    assert torch.equal(init["backbone.body.layer2.2.bn2.weight"], torch.zeros_like(init["backbone.body.layer2.2.bn2.weight"]))
    # the child computes what the parent computes (an expand is a morphism; neck and heads inherited)
    child_model = _detector(child, 5)
    child_model.load_state_dict(init)
    x = torch.rand(1, 3, 72, 96)
    with torch.no_grad():
        a, b = model.backbone(x), child_model.backbone(x)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_reignited_child_takes_its_backbone_from_the_pretraining_and_the_rest_from_the_parent(tmp_path, tiny_coco):
    parent = "basicblock_8_11-21-21-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"
    child = "basicblock_8_11-211-21-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"
    trained, pretrained = _detector(parent, 1), _detector(parent, 2).backbone.body  # two different sets of weights
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    torch.save(pretrained.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "arch.txt").write_text(child + "\n")
    (tmp_path / "parent.json").write_text(json.dumps({"arch": parent, "weights": "weights.pt", "detector": "model.pt",
                                                      "init": "reignited"}))
    jobs.inherit(str(tmp_path / "arch.txt"), str(tmp_path / "parent.json"), [str(tmp_path / "weights.pt")],
                 str(tiny_coco["coco_train_json"]), str(tmp_path / "init.pt"), {"seed": 0, "detector": {}},
                 detector=[str(tmp_path / "model.pt")])
    init = torch.load(tmp_path / "init.pt", weights_only=True)
    assert torch.equal(init["backbone.body.layer3.0.conv1.weight"], pretrained.state_dict()["layer3.0.conv1.weight"])
    assert not torch.equal(init["backbone.body.layer3.0.conv1.weight"], trained.state_dict()["backbone.body.layer3.0.conv1.weight"])
    for key in ("rpn.head.cls_logits.weight", "roi_heads.box_predictor.bbox_pred.weight"):
        assert torch.equal(init[key], trained.state_dict()[key]), key


def test_the_inherit_job_refuses_a_parent_checkpoint_that_does_not_fit(tmp_path, tiny_coco):
    parent = "basicblock_8_11-21-21-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"
    other = "basicblock_8_111-21-21-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"  # not what the checkpoint holds
    torch.save(_detector(parent, 1).state_dict(), tmp_path / "model.pt")
    (tmp_path / "arch.txt").write_text(parent + "\n")
    (tmp_path / "parent.json").write_text(json.dumps({"arch": other, "weights": "model.pt", "init": "inherited"}))
    with pytest.raises(SpecError, match="parent weights do not fit basicblock_8_111-21-21-21"):
        jobs.inherit(str(tmp_path / "arch.txt"), str(tmp_path / "parent.json"), [str(tmp_path / "model.pt")],
                     str(tiny_coco["coco_train_json"]), str(tmp_path / "init.pt"), {"seed": 0, "detector": {}})
    assert not (tmp_path / "init.pt").exists()


def test_final_models_are_picked_from_the_union_of_both_modular_fronts(tmp_path):
    a = "basicblock_8_11-21-21-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"
    b = "basicblock_8_11-211-21-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"
    c = "basicblock_8_11-21-211-21+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"
    smnas = rank_population(make_table([{"arch": a, "status": "ok", "map": 0.2, "gmacs": 1.0},
                                        {"arch": b, "status": "ok", "map": 0.3, "gmacs": 3.0}]), "gmacs")
    spnas = rank_population(make_table([{"arch": c, "status": "ok", "map": 0.35, "gmacs": 2.0}]), "gmacs")
    smnas.to_parquet(tmp_path / "s.parquet")
    spnas.to_parquet(tmp_path / "p.parquet")
    jobs.final_arch([str(tmp_path / "s.parquet"), str(tmp_path / "p.parquet")], str(tmp_path / "arch.txt"), "front0",
                    2, "gmacs", None)
    assert parse_spec((tmp_path / "arch.txt").read_text()) == parse_spec(c).with_norm("bn")  # b is dominated by c
