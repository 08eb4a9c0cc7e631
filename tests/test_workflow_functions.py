"""The functions behind the workflow's rules, without Snakemake."""
from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import yaml

from smnas.errors import SmnasError
from smnas.models.paper import PAPER_MODELS
from smnas.models.spec import spec_hash
from smnas.report import backbone_factors, factor_correlations
from smnas.workflow.config import ConfigError, check_config
from smnas.workflow.finals import final_arch, front_picks
from smnas.workflow.generations import candidates_table, rank_generation, write_arch_files

from conftest import FIXTURES

TINY = yaml.safe_load((FIXTURES.parent / "config_tiny.yaml").read_text())
A = "basicblock_16_1-21-21-12+fpn:P2-P4:c16+rpn+2fc:32+64x48+gnws"
B = "basicblock_16_11-21-21-12+fpn:P2-P4:c16+rpn+2fc:32+64x48+gnws"
C = "basicblock_16_1-21-21-12+fpn:P2-P4:c8+rpn+2fc:32+64x48+gnws"


def _metrics(tmp_path, arch, map_, cost):
    path = tmp_path / f"{spec_hash(arch)}.json"
    path.write_text(json.dumps({"arch": arch, "status": "ok", "reason": "", "map": map_, "backbone_gmacs": cost,
                                "gmacs": 2 * cost, "params": 1, "train_seconds": 1.0, "epochs": 1}))
    return path


def test_rank_generation_merges_previous_new_and_pruned(tmp_path):
    gen0 = candidates_table([{"arch": A, "stage": "stage2", "generation": 0, "parent": "", "status": "pending", "reason": ""}])
    gen0.to_parquet(tmp_path / "c0.parquet")
    pop0 = rank_generation(tmp_path / "c0.parquet", [_metrics(tmp_path, A, 0.3, 1.0)], [], "backbone_gmacs")
    pop0.to_parquet(tmp_path / "p0.parquet")
    assert pop0["front_rank"].tolist() == [0]
    gen1 = candidates_table([
        {"arch": B, "stage": "stage2", "generation": 1, "parent": A, "status": "pending", "reason": "", "cost": 2.0},
        {"arch": C, "stage": "stage2", "generation": 1, "parent": A, "status": "pruned", "reason": "partial order", "cost": 1.0},
    ])
    gen1.to_parquet(tmp_path / "c1.parquet")
    pop1 = rank_generation(tmp_path / "c1.parquet", [_metrics(tmp_path, B, 0.2, 2.0)], [tmp_path / "p0.parquet"],
                           "backbone_gmacs")
    by_arch = pop1.set_index("arch")
    assert by_arch.loc[A, "front_rank"] == 0 and by_arch.loc[B, "front_rank"] == 1  # B is dominated by A
    assert by_arch.loc[C, "status"] == "pruned" and by_arch.loc[C, "front_rank"] == -1
    assert by_arch.loc[B, "parent"] == A and by_arch.loc[B, "generation"] == 1


def test_write_arch_files_writes_pending_once(tmp_path):
    table = candidates_table([
        {"arch": A, "stage": "s", "generation": 0, "parent": "", "status": "pending", "reason": ""},
        {"arch": C, "stage": "s", "generation": 0, "parent": "", "status": "pruned", "reason": "pop"},
    ])
    paths = write_arch_files(table, tmp_path)
    assert paths == [tmp_path / spec_hash(A) / "arch.txt"] and paths[0].read_text() == A + "\n"
    assert not (tmp_path / spec_hash(C)).exists()  # pruned: never trained
    # a later generation that meets A again leaves its file (and so its mtime) alone
    before = paths[0].stat().st_mtime_ns
    write_arch_files(table, tmp_path)
    assert paths[0].stat().st_mtime_ns == before


def test_groups_fill_a_one_model_front_from_the_next_front(tmp_path):
    # a tiny stage one can end with one model dominating the rest: stage two still gets
    # stage2.space.structures groups, from the next front (rank 1 here)
    from smnas.workflow import jobs

    pop = pd.DataFrame({"arch": [A, "resnet18@0.25+fpn:P2-P5:c32+rpn+cascade3:32+64x48+gnws"], "status": "ok",
                        "map": [0.3, 0.2], "gmacs": [1.0, 2.0], "front_rank": [0, 1]})
    pop.to_parquet(tmp_path / "population.parquet")
    jobs.groups(str(tmp_path / "population.parquet"), str(tmp_path / "groups.parquet"), TINY["stage2"]["space"], "gmacs")
    groups = pd.read_parquet(tmp_path / "groups.parquet")
    assert groups["group"].tolist() == ["C0", "C1"] and groups["structure"].tolist() == pop["arch"].tolist()


FRONT = pd.DataFrame({
    "arch": [f"basicblock_16_{'1' * n}-21-21-12+fpn:P2-P4:c16+rpn+2fc:32+64x48+gnws" for n in range(1, 6)],
    "map": [0.1, 0.2, 0.3, 0.4, 0.5], "backbone_gmacs": [1.0, 2.0, 3.0, 4.0, 5.0],
})


def test_front_picks_span_the_front_by_cost():
    archs = FRONT["arch"].tolist()
    assert front_picks(FRONT, 1, "backbone_gmacs") == [archs[4]]  # the most accurate
    assert front_picks(FRONT, 2, "backbone_gmacs") == [archs[4], archs[0]]  # ... and the cheapest
    assert front_picks(FRONT, 3, "backbone_gmacs") == [archs[4], archs[2], archs[0]]
    assert front_picks(FRONT.iloc[::-1], 5, "backbone_gmacs") == archs[::-1]  # row order does not matter
    with pytest.raises(SmnasError, match="6 picks asked from a front of 5"):
        front_picks(FRONT, 6, "backbone_gmacs")


def test_front_picks_by_hypervolume_leave_out_a_cheap_end_that_buys_little():
    # s18's stage-two front in miniature: a weak cheap end (a RetinaNet at 0.10) just below a
    # strong model (the 2FC one at 0.36); evenly spread picks take the weak end
    front = FRONT.assign(map=[0.10, 0.36, 0.37, 0.40, 0.417], backbone_gmacs=[1.0, 1.2, 2.0, 3.0, 4.0])
    archs = front["arch"].tolist()
    assert front_picks(front, 2, "backbone_gmacs") == [archs[4], archs[0]]
    assert front_picks(front, 2, "backbone_gmacs", "hypervolume") == [archs[3], archs[1]]  # dearest first
    assert front_picks(front, 1, "backbone_gmacs", "hypervolume") == [archs[1]]  # alone it holds most
    assert sorted(front_picks(front, 5, "backbone_gmacs", "hypervolume")) == sorted(archs)
    assert str(final_arch("front1", front, 2, "backbone_gmacs", how="hypervolume")) == archs[1].replace("+gnws", "+bn")
    with pytest.raises(SmnasError, match="pick must be one of spread, hypervolume, got 'knee'"):
        front_picks(front, 2, "backbone_gmacs", "knee")


def test_final_arch_switches_to_bn_and_overrides_paper_size():
    assert str(final_arch("front0", FRONT, 2, "backbone_gmacs")) == FRONT["arch"][4].replace("+gnws", "+bn")
    assert str(final_arch("front1", FRONT, 2, "backbone_gmacs")) == FRONT["arch"][0].replace("+gnws", "+bn")
    with pytest.raises(SmnasError, match="front2: needs the stage-two front and i < final.from_front"):
        final_arch("front2", FRONT, 2, "backbone_gmacs")
    e0 = final_arch("E0", None, 1, "backbone_gmacs", (160, 120))
    assert str(e0) == PAPER_MODELS["E0"].replace("512x512", "160x120")


def test_config_errors_are_one_line_naming_key_place_and_choices():
    cfg = copy.deepcopy(TINY)
    cfg["stage1"]["populaton"] = 3
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == ("config stage1: unknown key 'populaton'; "
                              "allowed: cost, generations, init, population, screen, space, train")
    cfg = copy.deepcopy(TINY)
    cfg["stage1"]["screen"] = 0
    with pytest.raises(ConfigError, match=r"^config stage1.screen: 0 is not valid: 0 is less than the minimum of 1$"):
        check_config(cfg)
    cfg = copy.deepcopy(TINY)
    cfg["stage1"]["generations"] = 0
    with pytest.raises(ConfigError, match=r"^config stage1.generations: 0 is not valid: 0 is less than the minimum of 1$"):
        check_config(cfg)
    cfg = copy.deepcopy(TINY)
    del cfg["seed"]
    with pytest.raises(ConfigError, match=r"^config \(top level\): 'seed' is a required property$"):
        check_config(cfg)
    cfg = copy.deepcopy(TINY)  # what a schema cannot say: a size range upside down
    cfg["data"]["builtin"]["object_size"] = [0.4, 0.2]
    with pytest.raises(ConfigError, match=r"^config data.builtin: object_size must be \(lo, hi\) with 0 < lo <= hi"):
        check_config(cfg)
    cfg = copy.deepcopy(TINY)
    cfg["spnas"]["serial"]["max_opz"] = 2
    with pytest.raises(ConfigError, match=r"^config spnas.serial: unknown key 'max_opz'"):
        check_config(cfg)


def test_check_config_names_missing_paths_and_models():
    cfg = copy.deepcopy(TINY)
    check_config(cfg)
    cfg["transfer"]["voc"]["root"] = "/nonexistent/voc"
    with pytest.raises(SmnasError, match="transfer.voc.root: /nonexistent/voc does not exist"):
        check_config(cfg)
    cfg = copy.deepcopy(TINY)
    cfg["detector"]["backbone_weights"] = {"resnet50": "/nonexistent/r50.pth"}
    with pytest.raises(SmnasError, match="backbone_weights.resnet50"):
        check_config(cfg)
    cfg = copy.deepcopy(TINY)
    cfg["stage2"]["space"]["max_blokcs"] = 3
    with pytest.raises(SmnasError, match="max_blokcs"):
        check_config(cfg)


def test_backbone_factors_and_correlations():
    f = backbone_factors(A)
    assert f["depth"] == 7 and f["base_width"] == 16
    assert f["share_stage2"] == pytest.approx(1 / 7) and f["share_stage5"] == pytest.approx(2 / 7)
    assert f["doubling_position"] == pytest.approx((1 / 6 + 3 / 6 + 6 / 6) / 3)
    assert backbone_factors("resnet18@0.25+none+rpn+2fc+64x48+bn") is None
    pop = pd.DataFrame({"arch": [A, B, C, "basicblock_16_111-21-21-12+fpn:P2-P4:c16+rpn+2fc:32+64x48+gnws"],
                        "map": [0.1, 0.2, 0.3, 0.4], "status": "ok", "front_rank": [0, 0, 1, 0]})
    corr = factor_correlations(pop).set_index(["factor", "models"])
    assert corr.loc[("depth", "all"), "spearman_rho"] == pytest.approx(pd.Series([7, 8, 7, 9]).corr(pd.Series([1, 2, 3, 4]), method="spearman"))
    assert math.isnan(corr.loc[("base_width", "all"), "spearman_rho"])  # constant factor
