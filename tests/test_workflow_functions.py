"""The functions behind the workflow's scripts, without Snakemake."""
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
from smnas.workflow import candidates_table, check_config, final_arch, lookup_arch, rank_generation

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
    pop0 = rank_generation(tmp_path / "c0.parquet", [_metrics(tmp_path, A, 0.3, 1.0)], [], "backbone_gmacs", tmp_path / "p0.parquet")
    assert pop0["front_rank"].tolist() == [0]
    gen1 = candidates_table([
        {"arch": B, "stage": "stage2", "generation": 1, "parent": A, "status": "pending", "reason": "", "cost": 2.0},
        {"arch": C, "stage": "stage2", "generation": 1, "parent": A, "status": "pruned", "reason": "partial order", "cost": 1.0},
    ])
    gen1.to_parquet(tmp_path / "c1.parquet")
    pop1 = rank_generation(tmp_path / "c1.parquet", [_metrics(tmp_path, B, 0.2, 2.0)], [tmp_path / "p0.parquet"],
                           "backbone_gmacs", tmp_path / "p1.parquet")
    by_arch = pop1.set_index("arch")
    assert by_arch.loc[A, "front_rank"] == 0 and by_arch.loc[B, "front_rank"] == 1  # B is dominated by A
    assert by_arch.loc[C, "status"] == "pruned" and by_arch.loc[C, "front_rank"] == -1
    assert by_arch.loc[B, "parent"] == A and by_arch.loc[B, "generation"] == 1
    assert pd.read_parquet(tmp_path / "p1.parquet").equals(pop1)


def test_lookup_arch(tmp_path):
    candidates_table([{"arch": A, "stage": "s", "generation": 0, "parent": "", "status": "pending", "reason": ""}]).to_parquet(tmp_path / "t.parquet")
    assert lookup_arch([tmp_path / "t.parquet"], spec_hash(A)) == A
    with pytest.raises(SmnasError, match="none of the candidates tables"):
        lookup_arch([tmp_path / "t.parquet"], "0" * 12)
    # a later generation's table: a miss lists and reads the tables again (a hit does not)
    listed = []

    def tables():
        listed.append(1)
        return sorted(tmp_path.glob("*.parquet"))

    assert lookup_arch(tables, spec_hash(A)) == A and not listed
    candidates_table([{"arch": B, "stage": "s", "generation": 1, "parent": A, "status": "pending", "reason": ""}]).to_parquet(tmp_path / "u.parquet")
    assert lookup_arch(tables, spec_hash(B)) == B and len(listed) == 1


def test_final_arch_switches_to_bn_and_overrides_paper_size(tmp_path):
    pd.DataFrame({"arch": [A, B], "map": [0.1, 0.4]}).to_parquet(tmp_path / "front.parquet")
    assert str(final_arch("front0", tmp_path / "front.parquet", {})) == B.replace("+gnws", "+bn")
    with pytest.raises(SmnasError, match="only 2 models"):
        final_arch("front5", tmp_path / "front.parquet", {})
    e0 = final_arch("E0", None, {"paper_input_size": [160, 120]})
    assert str(e0) == PAPER_MODELS["E0"].replace("512x512", "160x120")


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
