"""COCO evaluation against pycocotools itself, and VOC mAP@0.5 on hand-computed cases."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from smnas.data.coco import load_coco, write_coco
from smnas.errors import DataFormatError
from smnas.evaluation import COCO_STAT_KEYS, coco_evaluate, voc_map50, write_detections

FIXTURES = Path(__file__).parent / "fixtures"


def _random_gt(rng: np.random.Generator) -> dict:
    """6 images of 200x160 with small, medium and large boxes of 3 classes, one crowd box."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 160}
              for i in (3, 5, 8, 9, 10, 11)]
    anns = []
    for im in images:
        for side in (12, 20, 45, 70, 110):  # areas on both sides of 32^2 and 96^2
            w, h = side * rng.uniform(0.8, 1.2, size=2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 160 - h)
            anns.append({"id": len(anns) + 1, "image_id": im["id"],
                         "category_id": int(rng.integers(1, 4)),
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                         "iscrowd": 0})
    anns[7]["iscrowd"] = 1
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _random_dets(gt: dict, rng: np.random.Generator) -> list[dict]:
    """Jittered copies of most gt boxes (some with the wrong class) plus pure noise boxes."""
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        dx, dy = rng.normal(0, 0.15, size=2) * (w, h)
        sw, sh = rng.uniform(0.75, 1.3, size=2)
        cat = a["category_id"] if rng.random() < 0.85 else int(rng.integers(1, 4))
        dets.append({"image_id": a["image_id"], "category_id": cat,
                     "bbox": [x + dx, y + dy, w * sw, h * sh], "score": float(rng.random())})
    for _ in range(25):
        w, h = rng.uniform(5, 80, size=2)
        dets.append({"image_id": int(rng.choice([3, 5, 8, 9, 10, 11])),
                     "category_id": int(rng.integers(1, 4)),
                     "bbox": [float(rng.uniform(0, 120)), float(rng.uniform(0, 80)),
                              float(w), float(h)],
                     "score": float(rng.random())})
    return dets


def _direct_stats(gt_path: Path, dets: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_evaluate_equals_pycocotools(tmp_path, seed):
    rng = np.random.default_rng(seed)
    gt = _random_gt(rng)
    dets = _random_dets(gt, rng)
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    write_coco(gt, gt_path)
    write_detections(dets, dets_path)
    expected = _direct_stats(gt_path, dets)
    assert 0.05 < expected[0] < 0.95 and (expected > -1).all()  # a non-trivial, defined case
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    got = coco_evaluate(gt, dets)
    assert list(got) == list(COCO_STAT_KEYS)
    np.testing.assert_array_equal(np.array(list(got.values())), expected)
    assert gt == gt_before and dets == dets_before  # inputs are not modified
    from_files = coco_evaluate(gt_path, dets_path)
    np.testing.assert_array_equal(np.array(list(from_files.values())), expected)


def test_coco_evaluate_perfect_and_empty():
    gt = load_coco(FIXTURES / "coco" / "instances_tiny.json", check_images=False)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 0.9} for a in gt["annotations"]]
    # every fixture box is small (area < 32^2): medium and large are undefined (-1)
    undefined = {"APm", "APl", "ARm", "ARl"}
    expected = {k: -1.0 if k in undefined else 1.0 for k in COCO_STAT_KEYS}
    assert coco_evaluate(gt, perfect) == expected
    assert coco_evaluate(gt, []) == {k: -1.0 if k in undefined else 0.0 for k in COCO_STAT_KEYS}


def test_coco_evaluate_quiet(capsys):
    gt = load_coco(FIXTURES / "coco" / "instances_tiny.json", check_images=False)
    coco_evaluate(gt, [])
    assert capsys.readouterr().out == ""
    coco_evaluate(gt, [], quiet=False)
    assert "Average Precision" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"image_id": 99},
         r"detection 1: unknown image id 99; ground truth has 3 images \(ids 1\.\.3\)"),
        ({"category_id": 7}, r"detection 1: unknown category 7; known: 1\.\.3"),
        ({"bbox": [1, 2, -3, 4]}, r"detection 1: bbox \[1, 2, -3, 4\] has negative width"),
        ({"bbox": [1, 2, 3]}, r"detection 1: 'bbox' must be 4 finite numbers"),
        ({"score": None}, r"detection 1: 'score' must be a finite number"),
    ],
)
def test_detections_are_checked_against_gt(tmp_path, bad, expected):
    dets = [{"image_id": 1, "category_id": 1, "bbox": [8, 8, 20, 16], "score": 0.5},
            {"image_id": 2, "category_id": 2, "bbox": [4, 4, 30, 30], "score": 0.4}]
    dets[1].update(bad)
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    gt = FIXTURES / "coco" / "instances_tiny.json"
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ": " + expected):
        coco_evaluate(gt, path)
    with pytest.raises(DataFormatError, match=expected):
        voc_map50(gt, dets)


def test_detections_file_must_be_a_list(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(DataFormatError, match=r"dets\.json: expected a JSON list of detections"):
        coco_evaluate(FIXTURES / "coco" / "instances_tiny.json", path)


def test_write_detections_converts_numpy(tmp_path):
    dets = [{"image_id": np.int64(2), "category_id": np.int32(1),
             "bbox": np.array([1.5, 2.0, 3.0, 4.0], dtype=np.float32), "score": np.float32(0.25)}]
    path = tmp_path / "sub" / "dets.json"
    write_detections(dets, path)
    assert json.loads(path.read_text()) == [
        {"image_id": 2, "category_id": 1, "bbox": [1.5, 2.0, 3.0, 4.0], "score": 0.25}
    ]
    with pytest.raises(DataFormatError, match=r"detection 0: expected image_id"):
        write_detections([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}], path)


# ---------------------------------------------------------------- VOC mAP@0.5


def _gt(anns: list[tuple], n_images: int = 2) -> dict:
    """anns: (image_id, category_id, bbox, difficult)."""
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100}
                   for i in range(1, n_images + 1)],
        "annotations": [
            {"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3],
             "iscrowd": int(d), "difficult": int(d)}
            for k, (im, c, b, d) in enumerate(anns)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def _det(image_id: int, cat: int, bbox: list, score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_voc_map50_hand_computed():
    # class a: 2 gts; dets by score: TP, FP, TP -> recall .5 .5 1, precision 1 .5 2/3
    # class b: only a difficult gt -> undefined, left out of the mean
    gt = _gt([(1, 1, [0, 0, 10, 10], False), (1, 1, [50, 50, 20, 20], False),
              (2, 2, [0, 0, 30, 30], True)])
    dets = [_det(1, 1, [0, 0, 10, 10], 0.9), _det(1, 1, [80, 80, 10, 10], 0.8),
            _det(1, 1, [52, 50, 20, 20], 0.7), _det(2, 2, [0, 0, 30, 30], 0.95)]
    result = voc_map50(gt, dets)
    assert list(result) == ["mAP50", "AP50/a", "AP50/b"]
    assert result["AP50/a"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)  # 5/6
    assert result["AP50/b"] == -1.0
    assert result["mAP50"] == pytest.approx(5 / 6, abs=1e-12)
    # 11-point: precision 1 at recall 0..0.5 (6 points), 2/3 at 0.6..1 (5 points)
    result07 = voc_map50(gt, dets, use_07_metric=True)
    assert result07["AP50/a"] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)  # 28/33


def test_voc_map50_difficult_is_neither_tp_nor_fp():
    # dets: on the difficult gt (ignored), on the real gt (TP), a duplicate of it (FP)
    gt = _gt([(1, 1, [0, 0, 10, 10], False), (1, 1, [40, 40, 10, 10], True)])
    dets = [_det(1, 1, [40, 40, 10, 10], 0.9), _det(1, 1, [0, 0, 10, 10], 0.8),
            _det(1, 1, [0, 0, 10, 10], 0.7)]
    assert voc_map50(gt, dets)["AP50/a"] == 1.0  # 0.5 if the first counted as an FP
    assert voc_map50(gt, dets)["AP50/b"] == -1.0


def test_voc_map50_greedy_best_match_and_threshold():
    # the second det's best gt is already taken: FP although it overlaps the other gt by 0.9
    gt = _gt([(1, 1, [0, 0, 10, 10], False), (1, 1, [0, 1, 10, 9], False)])
    dets = [_det(1, 1, [0, 0, 10, 10], 0.9), _det(1, 1, [0, 0, 10, 10], 0.8)]
    assert voc_map50(gt, dets)["AP50/a"] == 0.5
    one = _gt([(1, 1, [0, 0, 10, 10], False)])
    assert voc_map50(one, [_det(1, 1, [0, 0, 10, 5], 0.5)])["AP50/a"] == 1.0  # IoU exactly 0.5
    assert voc_map50(one, [_det(1, 1, [0, 0, 10, 4.9], 0.5)])["AP50/a"] == 0.0
    # a det in an image with no gt of its class is an FP; it ranks first here
    two = voc_map50(one, [_det(2, 1, [0, 0, 10, 10], 0.9), _det(1, 1, [0, 0, 10, 10], 0.5)])
    assert two["AP50/a"] == 0.5
    assert voc_map50(one, [])["mAP50"] == 0.0
