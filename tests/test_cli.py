"""The ``smnas`` command line: help on every subcommand, JSON outputs, errors without tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smnas.cli import main
from smnas.evaluation import coco_evaluate

from conftest import FIXTURES

SUBCOMMANDS = [["make-dataset"], ["convert"], ["convert", "voc"], ["convert", "bdd"], ["evaluate"],
               ["describe"], ["space"], ["train"]]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    assert "usage: smnas " + " ".join(words) in capsys.readouterr().out


def test_installed_entry_point_runs(tmp_path):
    # The console script pip installs beside this interpreter (not ``python -m smnas.cli``): this
    # checks the [project.scripts] entry, its wrapper, and that it imports from anywhere.
    script = Path(sys.executable).parent / "smnas"
    if not script.is_file():
        pytest.skip(f"no smnas console script at {script}: install the package (pip install -e .) to test it")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.startswith("usage: smnas [-h]")
    assert "make-dataset" in out.stdout and "describe" in out.stdout


def test_evaluate_json_equals_library(tmp_path, capsys):
    gt = FIXTURES / "coco" / "instances_tiny.json"
    coco = json.loads(gt.read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": [a["bbox"][0] + 1, a["bbox"][1], a["bbox"][2], a["bbox"][3]], "score": 0.9}
            for a in coco["annotations"]]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    assert main(["evaluate", "--gt", str(gt), "--dets", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(got)
    want = coco_evaluate(gt, dets)
    assert got == pytest.approx(want)
    assert 0 < got["AP"] <= 1


def test_describe_json_keys_and_backbone_only(capsys):
    assert main(["describe", "resnet18@0.25+fpn:P2-P4:c32+rpn+2fc:256+128x96+gnws", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"] == "resnet18@0.25+fpn:P2-P4:c32+rpn+2fc:256+128x96+gnws"
    assert 0 < info["backbone_params"] < info["params"] and 0 < info["backbone_gmacs"] < info["gmacs"]
    assert main(["describe", "basicblock_64_11-21-21-21", "--size", "224x224", "--json"]) == 0
    bb = json.loads(capsys.readouterr().out)
    assert bb["backbone_params"] == 11_176_512  # torchvision resnet18 without fc
    assert bb["backbone_gmacs"] == pytest.approx(1.82, rel=0.01)


def test_errors_are_one_line_with_status_2(capsys):
    assert main(["describe", "resnet50+none+rpn+retina+800x600+bn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smnas describe: error: head retina is one-stage") and "Traceback" not in err
    assert main(["convert", "voc", str(FIXTURES / "VOCdevkit"), "--year", "2007", "--split", "nosuchsplit",
                 "--out", "x.json"]) == 2
    assert "nosuchsplit" in capsys.readouterr().err


def test_space_cli(capsys):
    assert main(["space", "size", "--config", "config/paper.yaml"]) == 0
    assert capsys.readouterr().out.strip() == "9324"
    assert main(["space", "sample", "3", "--seed", "5"]) == 0
    lines = capsys.readouterr().out.split()
    assert len(lines) == len(set(lines)) == 3


def test_make_dataset_and_convert_cli(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["make-dataset", str(out), "--num-train", "3", "--num-val", "2", "--size", "96x72", "--quiet"]) == 0
    assert main(["convert", "voc", str(out / "voc"), "--year", "2007", "--split", "test", "--out", str(tmp_path / "v.json")]) == 0
    assert len(json.loads((tmp_path / "v.json").read_text())["images"]) == 2
    assert main(["convert", "bdd", str(out / "bdd/labels/det_20/det_val.json"), "--images", str(out / "bdd/images/100k/val"),
                 "--out", str(tmp_path / "b.json")]) == 0
    assert len(json.loads((tmp_path / "b.json").read_text())["images"]) == 2
