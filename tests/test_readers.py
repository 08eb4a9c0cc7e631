"""Dataset readers (COCO, Pascal VOC, BDD100K) on the tiny real-format files in tests/fixtures."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from smnas.data.bdd import BDD_CLASSES, bdd_to_coco
from smnas.data.coco import coco_category_names, load_coco, validate_coco, write_coco
from smnas.data.voc import VOC_CLASSES, voc_image_dir, voc_to_coco
from smnas.errors import DataFormatError

FIXTURES = Path(__file__).parent / "fixtures"
COCO_JSON = FIXTURES / "coco" / "instances_tiny.json"
COCO_IMAGES = FIXTURES / "coco" / "images"
BDD_JSON = FIXTURES / "bdd" / "det_tiny.json"
BDD_IMAGES = FIXTURES / "bdd" / "images"


def _pycocotools_load(coco: dict, tmp_path: Path) -> COCO:
    path = tmp_path / "out.json"
    write_coco(coco, path)
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ---------------------------------------------------------------- COCO


def test_load_coco_fixture_fills_area_and_iscrowd(tmp_path):
    coco = load_coco(COCO_JSON, COCO_IMAGES)
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert len(coco["annotations"]) == 5
    ann3 = coco["annotations"][2]
    assert ann3["bbox"] == [4, 4, 30, 30]
    assert ann3["area"] == 900.0 and ann3["iscrowd"] == 0
    assert coco_category_names(coco) == ["red", "green", "blue"]
    api = _pycocotools_load(coco, tmp_path)
    assert sorted(api.getImgIds()) == [1, 2, 3]
    assert len(api.getAnnIds(imgIds=[2])) == 2
    assert load_coco(tmp_path / "out.json") == coco


def test_category_names_follow_id_order():
    coco = load_coco(COCO_JSON, check_images=False)
    coco["categories"] = [{"id": 9, "name": "z"}, {"id": 2, "name": "a"}, {"id": 4, "name": "m"}]
    for ann, cid in zip(coco["annotations"], [2, 4, 9, 2, 4]):
        ann["category_id"] = cid
    validate_coco(coco)
    assert coco_category_names(coco) == ["a", "m", "z"]


def _copy_coco(tmp_path: Path) -> tuple[Path, Path, dict]:
    images = tmp_path / "images"
    shutil.copytree(COCO_IMAGES, images)
    data = json.loads(COCO_JSON.read_text())
    return tmp_path / "instances.json", images, data


def test_coco_missing_image_file(tmp_path):
    path, images, data = _copy_coco(tmp_path)
    _write_json(path, data)
    (images / "000003.png").unlink()
    with pytest.raises(DataFormatError, match=r"missing image file .*000003\.png for image id 3"):
        load_coco(path, images)
    assert len(load_coco(path, images, check_images=False)["images"]) == 3


@pytest.mark.parametrize(
    "content, expected",
    [
        ([1, 2, 3], r"not a COCO instances file: top level is a JSON list"),
        ({"images": [], "categories": []}, r"missing key 'annotations'"),
        ({"images": {}, "annotations": [], "categories": []},
         r"'images' is a dict, expected a list"),
    ],
)
def test_coco_not_coco(tmp_path, content, expected):
    path = _write_json(tmp_path / "other.json", content)
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ".*" + expected):
        load_coco(path)


def test_coco_not_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DataFormatError, match=r"broken\.json: not valid JSON"):
        load_coco(path)
    with pytest.raises(DataFormatError, match=r"nothere\.json: file not found"):
        load_coco(tmp_path / "nothere.json")


def _bad_coco(tmp_path: Path, edit) -> Path:
    path, _, data = _copy_coco(tmp_path)
    edit(data)
    return _write_json(path, data)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["annotations"][1].update(bbox=[36, 20, -3, 20]),
         r"annotation 2: bbox width -3 must be > 0 \(x2 < x1\)"),
        (lambda d: d["annotations"][1].update(bbox=[36, 20, 3, -1.5]),
         r"annotation 2: bbox height -1.5 must be > 0 \(y2 < y1\)"),
        (lambda d: d["annotations"][3].update(category_id=7),
         r"annotation 4: unknown category 7; known: 1\.\.3"),
        (lambda d: d["annotations"][0].update(image_id=42),
         r"annotation 1: unknown image id 42; known: 1\.\.3"),
        (lambda d: d["annotations"][0].update(bbox=[8, 8, 20]),
         r"annotation 1: 'bbox' must be 4 finite numbers"),
        (lambda d: d["annotations"][4].update(bbox=[10, 20, 24, 50]),
         r"annotation 5: bbox .* lies outside image 3 of size 48x64"),
        (lambda d: d["annotations"][4].update(id=1), r"annotation 1: duplicate annotation id"),
        (lambda d: d["images"][2].update(id=2), r"image 2: duplicate image id"),
        (lambda d: d["images"][0].update(width=0), r"image 1: 'width' must be a positive integer"),
        (lambda d: d.update(images=[]), r"empty split"),
        (lambda d: d["categories"].append({"id": 4, "name": "red"}),
         r"categories\[3\]: duplicate category name 'red'"),
    ],
)
def test_coco_bad_entries(tmp_path, edit, expected):
    path = _bad_coco(tmp_path, edit)
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ": " + expected):
        load_coco(path)


def test_coco_empty_box_error_or_dropped(tmp_path):
    path = _bad_coco(tmp_path, lambda d: d["annotations"][1].update(bbox=[36, 20, 5, 0.0]))
    with pytest.raises(DataFormatError, match=r"annotation 2: bbox height 0.0 must be > 0 \(empty"):
        load_coco(path)
    with pytest.warns(UserWarning, match=r"dropped 1 annotations with an empty box .*ids \[2\]"):
        coco = load_coco(path, drop_empty_boxes=True)
    assert [a["id"] for a in coco["annotations"]] == [1, 3, 4, 5]


def test_coco_nan_box_rejected():
    coco = load_coco(COCO_JSON, check_images=False)
    coco["annotations"][0]["bbox"] = [float("nan"), 8, 20, 16]
    expected = r"<COCO dict>: annotation 1: 'bbox' must be 4 finite"
    with pytest.raises(DataFormatError, match=expected):
        validate_coco(coco)


# ---------------------------------------------------------------- Pascal VOC


def test_voc_2007_trainval(tmp_path):
    coco = voc_to_coco(FIXTURES / "VOCdevkit", "2007", "trainval")
    assert [(im["id"], im["file_name"], im["width"], im["height"]) for im in coco["images"]] == [
        (1, "VOC2007/JPEGImages/000001.jpg", 64, 48),
        (2, "VOC2007/JPEGImages/000002.jpg", 64, 48),
    ]
    assert coco["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]
    assert coco["categories"][11] == {"id": 12, "name": "dog"}
    dog, person, car = coco["annotations"]
    # <bndbox> 5 6 30 40 (1-based, inclusive) -> [4, 5, 26, 35]
    assert (dog["category_id"], dog["bbox"], dog["area"]) == (12, [4.0, 5.0, 26.0, 35.0], 910.0)
    assert (dog["iscrowd"], dog["difficult"]) == (0, 0)
    assert person["category_id"] == 15 and person["bbox"] == [39.0, 9.0, 21.0, 36.0]
    assert (person["iscrowd"], person["difficult"]) == (1, 1)
    assert car["bbox"] == [0.0, 0.0, 64.0, 48.0]  # the whole 64x48 image
    root = voc_image_dir(FIXTURES / "VOCdevkit", "2007")
    assert root == FIXTURES / "VOCdevkit"
    assert all((root / im["file_name"]).is_file() for im in coco["images"])
    api = _pycocotools_load(coco, tmp_path)
    assert len(api.getAnnIds(iscrowd=False)) == 2


def test_voc_size_from_jpeg_when_xml_has_none():
    coco = voc_to_coco(FIXTURES, "2007", "test")  # the parent of VOCdevkit is accepted too
    assert [(im["file_name"], im["width"], im["height"]) for im in coco["images"]] == [
        ("VOC2007/JPEGImages/000003.jpg", 48, 40)
    ]
    assert coco["annotations"][0]["bbox"] == [9.0, 9.0, 11.0, 11.0]


def test_voc_07_plus_12():
    coco = voc_to_coco(FIXTURES / "VOCdevkit", "2007+2012", "trainval")
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert coco["images"][2]["file_name"] == "VOC2012/JPEGImages/2008_000001.jpg"
    assert coco["images"][2]["voc_id"] == "2008_000001"
    bird = coco["annotations"][-1]
    assert bird["image_id"] == 3 and bird["category_id"] == 3  # no <difficult>: 0
    assert (bird["bbox"], bird["iscrowd"], bird["difficult"]) == ([2.0, 3.0, 11.0, 21.0], 0, 0)
    assert len({a["id"] for a in coco["annotations"]}) == 4
    with pytest.raises(DataFormatError, match=r"VOC2012.*test\.txt: split file not found"):
        voc_to_coco(FIXTURES / "VOCdevkit", "2007+2012", "test")


@pytest.fixture
def voc_copy(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "VOCdevkit", tmp_path / "VOCdevkit")
    return tmp_path / "VOCdevkit"


def test_voc_unknown_class(voc_copy):
    xml = voc_copy / "VOC2007" / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<name>person</name>", "<name>dragon</name>"))
    expected = re.escape(str(xml)) + r": object 1: unknown class 'dragon'; expected one of aerop"
    with pytest.raises(DataFormatError, match=expected) as info:
        voc_to_coco(voc_copy, "2007", "trainval")
    assert "tvmonitor" in str(info.value)


def test_voc_unreadable_and_missing_xml(voc_copy):
    xml = voc_copy / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text()[:40])
    with pytest.raises(DataFormatError, match=re.escape(str(xml)) + r": unreadable XML"):
        voc_to_coco(voc_copy, "2007", "trainval")
    xml.unlink()
    with pytest.raises(DataFormatError, match=re.escape(str(xml)) + r": annotation file not found"):
        voc_to_coco(voc_copy, "2007", "trainval")


def test_voc_missing_and_empty_split(voc_copy):
    main = voc_copy / "VOC2007" / "ImageSets" / "Main"
    with pytest.raises(DataFormatError, match=re.escape(str(main / "val.txt")) + r": split file"):
        voc_to_coco(voc_copy, "2007", "val")
    (main / "trainval.txt").write_text("\n")
    with pytest.raises(DataFormatError, match=r"trainval\.txt: empty split"):
        voc_to_coco(voc_copy, "2007", "trainval")


def test_voc_bad_box_year_and_missing_jpeg(voc_copy):
    xml = voc_copy / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<xmax>64</xmax>", "<xmax>0</xmax>"))
    with pytest.raises(DataFormatError, match=r"000002\.xml: object 0 \(car\): .*xmax < xmin"):
        voc_to_coco(voc_copy, "2007", "trainval")
    with pytest.raises(DataFormatError, match=r"VOC year '07'"):
        voc_to_coco(voc_copy, "07", "test")
    (voc_copy / "VOC2007" / "JPEGImages" / "000003.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"000003\.xml: <size> missing or zero"):
        voc_to_coco(voc_copy, "2007", "test")


# ---------------------------------------------------------------- BDD100K


def test_bdd_fixture(tmp_path):
    with pytest.warns(UserWarning) as record:
        coco = bdd_to_coco(BDD_JSON, BDD_IMAGES)
    messages = [str(w.message) for w in record]
    assert messages == [
        f"{BDD_JSON}: skipped 3 labels of categories not among the 10 detection classes: "
        "other vehicle (2), trailer (1)"
    ]
    assert [(im["id"], im["file_name"], im["width"], im["height"]) for im in coco["images"]] == [
        (1, "a0000000-00000001.jpg", 64, 36),
        (2, "a0000000-00000002.jpg", 64, 36),  # no labels: kept, no objects
        (3, "a0000000-00000003.jpg", 64, 36),
    ]
    assert coco["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(BDD_CLASSES)]
    anns = coco["annotations"]
    # box2d is pixel-inclusive (official converter): w = x2 - x1 + 1
    assert [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in anns] == [
        (1, 3, [10.5, 5.25, 31.0, 26.0], 0),  # car
        (1, 1, [50.0, 10.0, 10.0, 25.0], 0),  # pedestrian
        (1, 9, [30.0, 0.0, 4.0, 8.0], 0),  # traffic light; the lane (poly2d) is skipped
        (3, 4, [0.0, 0.0, 64.0, 36.0], 1),  # truck with attribute crowd
    ]
    assert anns[0]["area"] == 806.0
    api = _pycocotools_load(coco, tmp_path)
    assert api.getAnnIds(imgIds=[2]) == []


def test_bdd_ignored_as_crowd():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped, so nothing is warned
        coco = bdd_to_coco(BDD_JSON, BDD_IMAGES, ignored_as_crowd=True)
    crowd = [(a["category_id"], a["bbox"]) for a in coco["annotations"] if a["iscrowd"]]
    assert crowd == [(3, [1.0, 1.0, 5.0, 5.0]), (4, [2.0, 2.0, 8.0, 8.0]),
                     (3, [3.0, 3.0, 5.0, 6.0]), (4, [0.0, 0.0, 64.0, 36.0])]


@pytest.fixture
def bdd_copy(tmp_path) -> tuple[Path, Path, list]:
    shutil.copytree(BDD_IMAGES, tmp_path / "images")
    return tmp_path / "det.json", tmp_path / "images", json.loads(BDD_JSON.read_text())


def test_bdd_image_size_is_read_from_the_file(bdd_copy):
    path, images, frames = bdd_copy
    Image.new("RGB", (80, 45)).save(images / "a0000000-00000002.jpg")
    coco = bdd_to_coco(_write_json(path, frames[1:2]), images)
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (80, 45)
    assert coco["annotations"] == []


def test_bdd_x2_less_than_x1(bdd_copy):
    path, images, frames = bdd_copy
    frames[0]["labels"][1]["box2d"]["x2"] = 40.0
    _write_json(path, frames)
    expected = re.escape(f"{path}: frame 'a0000000-00000001.jpg', label '2' (pedestrian)")
    with pytest.raises(DataFormatError, match=expected + r": box2d .* has x2 < x1"):
        bdd_to_coco(path, images)


def test_bdd_missing_image(bdd_copy):
    path, images, frames = bdd_copy
    (images / "a0000000-00000003.jpg").unlink()
    _write_json(path, frames)
    with pytest.raises(
        DataFormatError,
        match=r"frame 'a0000000-00000003\.jpg': missing image file .*a0000000-00000003\.jpg",
    ):
        bdd_to_coco(path, images)


def test_bdd_bad_files(bdd_copy):
    path, images, frames = bdd_copy
    with pytest.raises(DataFormatError, match=r"det\.json: not a BDD100K det_20 file"):
        bdd_to_coco(_write_json(path, {"images": []}), images)
    with pytest.raises(DataFormatError, match=r"det\.json: empty split"):
        bdd_to_coco(_write_json(path, []), images)
    with pytest.raises(DataFormatError, match=r"frame 'a0000000-00000001\.jpg': duplicate"):
        bdd_to_coco(_write_json(path, [frames[0], frames[0]]), images)


def test_bdd_old_label_release_is_named(bdd_copy):
    path, images, frames = bdd_copy
    frames[0]["labels"][1]["category"] = "person"
    _write_json(path, frames)
    with pytest.warns(UserWarning, match=r"person \(1\).*2018 label release.*det_20"):
        bdd_to_coco(path, images)
