"""Tests of the built-in synthetic detection dataset (smnas.data.synthetic, smnas.data.scenes)."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from smnas.data import scenes, synthetic
from smnas.data.scenes import CLASSES
from smnas.data.synthetic import BDD_NAMES, VOC_NAMES, make_dataset

SIZE = (128, 96)  # (width, height)
BDD_DETECTION_CLASSES = {"pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle",
                         "bicycle", "traffic light", "traffic sign"}
VOC_CLASSES = {"aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, make_dataset(root, seed=0, num_train=6, num_val=3, image_size=SIZE)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_maps_name_real_classes() -> None:
    assert len(CLASSES) >= 5 and len(set(CLASSES)) == len(CLASSES)
    assert set(VOC_NAMES) == set(CLASSES) and set(BDD_NAMES) == set(CLASSES)
    assert set(VOC_NAMES.values()) <= VOC_CLASSES and len(set(VOC_NAMES.values())) == len(CLASSES)
    assert set(BDD_NAMES.values()) <= BDD_DETECTION_CLASSES
    assert len(set(BDD_NAMES.values())) == len(CLASSES)
    assert not set(synthetic.BDD_EXTRA_NAMES.values()) & BDD_DETECTION_CLASSES


def test_layout(tiny: tuple[Path, dict[str, Path]]) -> None:
    root, paths = tiny
    assert set(paths) == {"coco_train_json", "coco_val_json", "coco_train_images",
                          "coco_val_images", "voc_root", "voc_year_dir", "bdd_train_labels",
                          "bdd_val_labels", "bdd_train_images", "bdd_val_images"}
    assert paths["coco_train_json"] == root / "coco/annotations/instances_train.json"
    assert sorted(p.name for p in (root / "coco/train").iterdir()) == [
        f"{i:06d}.png" for i in range(1, 7)]
    assert len(list((root / "coco/val").glob("*.png"))) == 3
    year = root / "voc/VOCdevkit/VOC2007"
    assert paths["voc_root"] == root / "voc" and paths["voc_year_dir"] == year
    assert len(list((year / "JPEGImages").glob("*.jpg"))) == 9
    assert len(list((year / "Annotations").glob("*.xml"))) == 9
    assert paths["bdd_val_labels"] == root / "bdd/labels/det_20/det_val.json"
    assert len(list((root / "bdd/images/100k/train").glob("*.jpg"))) == 6
    assert len(list((root / "bdd/images/100k/val").glob("*.jpg"))) == 3
    assert not list(root.rglob("*.tmp"))  # atomic writes left no temporaries


@pytest.mark.parametrize("split,count", [("train", 6), ("val", 3)])
def test_coco_json_is_valid(tiny: tuple[Path, dict[str, Path]], split: str, count: int) -> None:
    _, paths = tiny
    coco = COCO(str(paths[f"coco_{split}_json"]))
    assert sorted(coco.getImgIds()) == list(range(1, count + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert coco.dataset["info"]["seed"] == 0
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(paths[f"coco_{split}_images"] / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) == SIZE and im.mode == "RGB"
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert 1 <= len(anns) <= scenes.MAX_OBJECTS
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert synthetic.MIN_PIXELS <= a["area"] <= w * h
            assert 1 <= a["category_id"] <= len(CLASSES) and a["iscrowd"] == 0
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)


def test_voc_xml(tiny: tuple[Path, dict[str, Path]]) -> None:
    _, paths = tiny
    year = paths["voc_year_dir"]
    trainval = (year / "ImageSets/Main/trainval.txt").read_text().split()
    test = (year / "ImageSets/Main/test.txt").read_text().split()
    assert trainval == [f"{i:06d}" for i in range(1, 7)]
    assert test == [f"{i:06d}" for i in range(7, 10)]
    n_objects = 0
    for name in trainval + test:
        root = ET.parse(year / "Annotations" / f"{name}.xml").getroot()
        assert root.findtext("filename") == f"{name}.jpg"
        assert (year / "JPEGImages" / f"{name}.jpg").is_file()
        size = root.find("size")
        assert [int(size.findtext(t)) for t in ("width", "height", "depth")] == [*SIZE, 3]
        for obj in root.iter("object"):
            n_objects += 1
            assert obj.findtext("name") in set(VOC_NAMES.values())
            assert obj.findtext("difficult") in ("0", "1")
            assert obj.findtext("truncated") in ("0", "1")
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (int(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 <= x1 <= SIZE[0] and 1 <= y0 <= y1 <= SIZE[1]
    assert n_objects >= 9


def test_voc_marks_heavily_covered_objects_difficult() -> None:
    inst = scenes.Instance("ring", CLASSES.index("ring"), (0, 4, 9, 20), 30, 0.2, True, True)
    root = ET.fromstring(synthetic._voc_xml("000005", (64, 64), [inst]))
    obj = root.find("object")
    assert obj.findtext("name") == VOC_NAMES["ring"]
    assert (obj.findtext("difficult"), obj.findtext("truncated")) == ("1", "1")
    assert [int(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")] == [
        1, 5, 10, 21]


def test_bdd_json(tiny: tuple[Path, dict[str, Path]]) -> None:
    _, paths = tiny
    categories, empty = set(), 0
    for split, count in (("train", 6), ("val", 3)):
        frames = json.loads(paths[f"bdd_{split}_labels"].read_text())
        assert len(frames) == count
        for i, frame in enumerate(frames):
            assert (paths[f"bdd_{split}_images"] / frame["name"]).is_file()
            assert set(frame["attributes"]) == {"weather", "scene", "timeofday"}
            assert frame["timestamp"] == 10000
            if "labels" not in frame:
                empty += 1
                continue
            assert i % synthetic.BDD_EMPTY_EVERY != 1 and frame["labels"]
            for label in frame["labels"]:
                categories.add(label["category"])
                b = label["box2d"]
                # pixel-inclusive corners, as scalabel writes them
                assert 0 <= b["x1"] <= b["x2"] < SIZE[0] and 0 <= b["y1"] <= b["y2"] < SIZE[1]
                assert all(isinstance(b[k], float) for k in ("x1", "y1", "x2", "y2"))
                attrs = label["attributes"]
                assert isinstance(attrs["occluded"], bool) and isinstance(attrs["truncated"], bool)
    assert empty == 2  # frame index 1 of each split
    assert categories - BDD_DETECTION_CLASSES  # e.g. "other vehicle", "trailer"
    assert categories <= set(BDD_NAMES.values()) | set(synthetic.BDD_EXTRA_NAMES.values())


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path,
                                                  tiny: tuple[Path, dict[str, Path]]) -> None:
    root, _ = tiny
    make_dataset(tmp_path / "again", seed=0, num_train=6, num_val=3, image_size=SIZE)
    make_dataset(tmp_path / "other", seed=1, num_train=6, num_val=3, image_size=SIZE)
    first, again = _files(root), _files(tmp_path / "again")
    other = _files(tmp_path / "other")
    assert first == again  # JSON, XML, lists, PNG and JPEG files byte for byte
    def not_bdd_image(names: dict[str, bytes]) -> set[str]:
        return {p for p in names if not p.startswith("bdd/images")}  # BDD names carry the seed
    assert not_bdd_image(first) == not_bdd_image(other)
    coco = "coco/annotations/instances_train.json"
    assert json.loads(first[coco])["annotations"] != json.loads(other[coco])["annotations"]
    with Image.open(root / "coco/train/000001.png") as a, \
            Image.open(tmp_path / "other/coco/train/000001.png") as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_default_size_spans_coco_size_ranges(tmp_path: Path) -> None:
    paths = make_dataset(tmp_path, seed=3, num_train=40, num_val=1, variants=("coco",))
    data = json.loads(paths["coco_train_json"].read_text())
    areas = np.array([a["area"] for a in data["annotations"]])
    small, large = (areas < 32 ** 2).mean(), (areas > 96 ** 2).mean()
    assert small >= 0.25 and large >= 0.04 and 1 - small - large >= 0.2
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=41)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 12 and per_image.mean() >= 3
    counts = np.bincount([a["category_id"] for a in data["annotations"]], minlength=7)[1:]
    assert counts.min() >= 0.5 * counts.mean()  # every class well represented


def test_colour_alone_does_not_decide_the_class() -> None:
    rng = np.random.default_rng(0)
    centres = np.arange(len(CLASSES)) / len(CLASSES)
    hits = 0
    n = 3000
    for _ in range(n):
        cls = int(rng.integers(len(CLASSES)))
        item = scenes._sample_object(rng, cls, 256, 192)
        hue = _hue(item.colour)
        nearest = int(np.argmin(np.abs((hue - centres + 0.5) % 1.0 - 0.5)))
        hits += nearest == cls
    assert 0.45 < hits / n < 0.85  # informative, but far from decisive


def _hue(rgb: np.ndarray) -> float:
    r, g, b = (float(v) for v in rgb)
    mx, mn = max(r, g, b), min(r, g, b)
    if mx == mn:
        return 0.0
    if mx == r:
        return ((g - b) / (mx - mn) / 6) % 1.0
    if mx == g:
        return ((b - r) / (mx - mn) + 2) / 6
    return ((r - g) / (mx - mn) + 4) / 6


def test_occlusion_and_truncation_are_measured_exactly() -> None:
    white = np.ones(3, np.float32)
    back = scenes.Item("circle", 0, 30.0, 30.0, 10.0, 0.0, white, "solid")
    front = scenes.Item("square", 1, 38.0, 30.0, 8.0, math.pi / 4, white * 0.5, "solid")
    edge = scenes.Item("circle", 0, 2.0, 50.0, 6.0, 0.0, white, "solid")
    img = Image.new("RGB", (64, 64))
    back_inst, front_inst, edge_inst = scenes._draw_items(np.random.default_rng(0), img,
                                                          [back, front, edge])

    # Redraw the masks independently: the back circle loses what the square covers.
    def full(item: scenes.Item) -> np.ndarray:
        mask, x0, y0 = scenes._shape_mask(item)
        canvas = np.zeros((64 + 40, 64 + 40), bool)
        canvas[y0 + 20:y0 + 20 + mask.height, x0 + 20:x0 + 20 + mask.width] = np.asarray(mask) > 0
        return canvas
    back_m, front_m, edge_m = full(back), full(front), full(edge)
    visible = back_m & ~front_m
    assert back_inst.pixels == visible.sum() and back_inst.occluded and not back_inst.truncated
    assert back_inst.visibility == pytest.approx(visible.sum() / back_m.sum())
    ys, xs = np.nonzero(visible)
    assert back_inst.box == (xs.min() - 20, ys.min() - 20, xs.max() - 20, ys.max() - 20)
    assert front_inst.visibility == 1.0 and not front_inst.occluded
    inside = edge_m[20:84, 20:84].sum()
    assert edge_inst.truncated and edge_inst.pixels == inside and edge_inst.box[0] == 0
    assert edge_inst.visibility == pytest.approx(inside / edge_m.sum())
    pixels = np.asarray(img)
    assert (pixels[ys - 20, xs - 20] == 255).all()  # visible pixels keep the back object's colour
    assert (pixels[front_m[20:84, 20:84]] == 128).all() and pixels[0, 63].max() == 0


def test_hidden_objects_are_not_labelled() -> None:
    def make(vis: float, px: int) -> scenes.Instance:
        return scenes.Instance("star", 3, (0, 0, 5, 5), px, vis, False, True)

    kept = synthetic._labelled([make(0.29, 500), make(0.3, 500), make(0.9, 9), make(0.9, 10)])
    assert [(i.visibility, i.pixels) for i in kept] == [(0.3, 500), (0.9, 10)]


@pytest.mark.parametrize("kwargs,match", [
    ({"num_train": 0}, "num_train must be an integer >= 1"),
    ({"num_val": 0}, "num_val"),
    ({"seed": -1}, "seed"),
    ({"image_size": (63, 128)}, "each >= 64"),
    ({"image_size": (128,)}, "image_size"),
    ({"variants": ("coco", "kitti")}, "valid ones are coco, voc, bdd"),
    ({"variants": ()}, "valid ones are"),
])
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_dataset(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())  # checked before anything is written


def test_progress_bar_and_variant_subset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = make_dataset(tmp_path, num_train=1, num_val=1, image_size=(64, 64),
                         variants=("bdd", "bdd"), progress=True)
    assert set(paths) == {"bdd_train_labels", "bdd_val_labels", "bdd_train_images",
                          "bdd_val_images"}
    assert [p.name for p in tmp_path.iterdir()] == ["bdd"]
    err = capsys.readouterr().err
    assert "synthetic" in err and "2/2" in err


def test_project_readers_accept_the_files(tiny: tuple[Path, dict[str, Path]]) -> None:
    from smnas.data.bdd import bdd_to_coco
    from smnas.data.coco import load_coco
    from smnas.data.voc import voc_to_coco

    _, paths = tiny
    coco = load_coco(paths["coco_val_json"], paths["coco_val_images"])
    assert len(coco["images"]) == 3
    voc = voc_to_coco(paths["voc_root"], "2007", "trainval")
    assert len(voc["images"]) == 6 and voc["annotations"]
    frames = json.loads(paths["bdd_train_labels"].read_text())
    labels = [lab for f in frames for lab in f.get("labels", [])]
    detection = [lab for lab in labels if lab["category"] in BDD_DETECTION_CLASSES]
    assert 0 < len(labels) - len(detection) < len(detection)  # a few extras, not most
    with pytest.warns(UserWarning, match="skipped .* not among the 10 detection classes"):
        bdd = bdd_to_coco(paths["bdd_train_labels"], paths["bdd_train_images"])
    assert len(bdd["images"]) == 6 and len(bdd["annotations"]) == len(detection)
    first = detection[0]["box2d"]
    match = [a for a in bdd["annotations"] if a["bbox"][:2] == [first["x1"], first["y1"]]]
    assert match and match[0]["bbox"][2] == first["x2"] - first["x1"] + 1


# ---------------------------------------------------------------- scene options

def _area_radius(item: scenes.Item) -> float:
    return item.r / math.sqrt(math.pi / scenes._FILL[item.kind])


def test_scene_defaults_are_the_generators() -> None:
    # The measurements in config/config.yaml and every dataset not configured otherwise rely on them.
    assert scenes.SceneOptions() == scenes.SceneOptions(
        object_size=(0.025, 0.25), large_share=0.25, max_objects=12, hue_spread=0.09, noise=22.0,
        distractors=True)


def test_object_size_and_large_share_bound_the_sizes() -> None:
    rng = np.random.default_rng(0)
    side = 96

    def sizes(opts: scenes.SceneOptions) -> np.ndarray:
        return np.array([_area_radius(scenes._sample_object(rng, k % len(CLASSES), 128, side, opts))
                         for k in range(600)]) / side

    eased = sizes(scenes.SceneOptions(object_size=(0.2, 0.3), large_share=0.0))
    assert eased.min() >= 0.2 - 1e-9 and eased.max() <= 0.3 + 1e-9
    assert eased.min() < 0.21 and eased.max() > 0.29  # the whole range is used
    default = sizes(scenes.SceneOptions())
    assert default.min() < 0.05 and default.max() > 0.3 and (default > 0.27).mean() > 0.15
    large = sizes(scenes.SceneOptions(object_size=(0.05, 0.05), large_share=1.0))
    assert large.min() >= 0.27 and large.max() <= 0.4


def test_scene_options_reach_every_layout(tmp_path: Path,
                                          tiny: tuple[Path, dict[str, Path]]) -> None:
    scene = scenes.SceneOptions(object_size=(0.2, 0.3), large_share=0.0, max_objects=3,
                                distractors=False)
    paths = make_dataset(tmp_path, seed=0, num_train=8, num_val=4, image_size=SIZE, scene=scene)
    side = min(SIZE)
    # The widest box: the circumdiameter of the least filled shape at the largest size.
    longest = 2 * 0.3 * side * math.sqrt(math.pi / min(scenes._FILL.values())) + 2
    smallest = 0.8 * synthetic.MIN_VISIBLE * math.pi * (0.2 * side) ** 2  # 0.8: rasterisation
    coco = json.loads(paths["coco_train_json"].read_text())
    assert coco["info"]["scene"]["max_objects"] == 3
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=9)[1:]
    assert 1 <= per_image.min() and per_image.max() <= 3
    for a in coco["annotations"]:
        assert max(a["bbox"][2:]) <= longest and a["area"] >= smallest
    year = paths["voc_year_dir"]
    for xml in (year / "Annotations").glob("*.xml"):
        assert 1 <= len(ET.parse(xml).getroot().findall("object")) <= 3
    for split in ("train", "val"):
        for frame in json.loads(paths[f"bdd_{split}_labels"].read_text()):
            assert len(frame.get("labels", [])) <= 3  # no clutter labels either: distractors off
    # The same checks fail on the default scenes.
    default = json.loads(tiny[1]["coco_train_json"].read_text())["annotations"]
    assert max(np.bincount([a["image_id"] for a in default])) > 3
    assert min(a["area"] for a in default) < smallest



def test_zero_hue_spread_lets_colour_decide() -> None:
    rng = np.random.default_rng(0)
    centres = np.arange(len(CLASSES)) / len(CLASSES)
    opts = scenes.SceneOptions(hue_spread=0.0)
    for k in range(300):
        item = scenes._sample_object(rng, k % len(CLASSES), 256, 192, opts)
        hue = _hue(item.colour)
        assert int(np.argmin(np.abs((hue - centres + 0.5) % 1.0 - 0.5))) == k % len(CLASSES)


def test_noise_and_distractors() -> None:
    quiet = scenes.SceneOptions(noise=0.0)
    a, inst_a, _ = scenes.render(0, "coco", "train", 0, SIZE)
    b, inst_b, _ = scenes.render(0, "coco", "train", 0, SIZE, scene=quiet)
    assert inst_a == inst_b  # the same scene, only the sensor noise differs
    diff = a.astype(int) - b.astype(int)
    assert np.abs(diff).max() <= 12 and diff.std() > 4  # uniform +-11 grey levels
    _, with_clutter, _ = scenes.render(0, "voc", "val", 2, SIZE)
    _, without, _ = scenes.render(0, "voc", "val", 2, SIZE,
                                  scene=scenes.SceneOptions(distractors=False))
    assert any(i.cls < 0 for i in with_clutter) and all(i.cls >= 0 for i in without)


def test_scene_options_from_config() -> None:
    builtin = {"num_train": 3, "image_size": [64, 64], "object_size": [0.1, 0.2], "max_objects": 4}
    assert scenes.SceneOptions.from_config(builtin) == scenes.SceneOptions(
        object_size=(0.1, 0.2), max_objects=4)
    assert scenes.SceneOptions.from_config({}) == scenes.SceneOptions()


@pytest.mark.parametrize("kwargs,match", [
    ({"object_size": (0.3, 0.2)}, "object_size must be"),
    ({"object_size": (0.0, 0.2)}, "object_size"),
    ({"object_size": (0.1, 0.6)}, "object_size"),
    ({"object_size": (0.1,)}, "object_size"),
    ({"large_share": 1.5}, "large_share"),
    ({"max_objects": 0}, "max_objects must be an integer >= 1"),
    ({"max_objects": 2.5}, "max_objects"),
    ({"hue_spread": -0.1}, "hue_spread"),
    ({"noise": -1.0}, "noise"),
])
def test_bad_scene_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        scenes.SceneOptions(**kwargs)


def test_make_dataset_takes_scene_options_only(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="SceneOptions"):
        make_dataset(tmp_path, num_train=1, num_val=1, scene={"max_objects": 3})


def test_make_dataset_job_passes_the_scene_keys(tmp_path: Path) -> None:
    from smnas.workflow.jobs import make_dataset as job

    out = {"coco_train": tmp_path / "coco/annotations/instances_train.json",
           "coco_val": tmp_path / "coco/annotations/instances_val.json",
           "voc_test": tmp_path / "voc/VOCdevkit/VOC2007/ImageSets/Main/test.txt",
           "bdd_train": tmp_path / "bdd/labels/det_20/det_train.json",
           "bdd_val": tmp_path / "bdd/labels/det_20/det_val.json"}
    builtin = {"num_train": 3, "num_val": 1, "image_size": [64, 64], "object_size": [0.3, 0.3],
               "large_share": 0.0, "max_objects": 1}
    job(**{k: str(v) for k, v in out.items()}, seed=0, builtin=builtin)
    coco = json.loads(out["coco_train"].read_text())
    assert coco["info"]["scene"]["object_size"] == [0.3, 0.3]
    assert np.bincount([a["image_id"] for a in coco["annotations"]]).max() <= 1


@pytest.mark.parametrize("value,match", [
    ([0.2], "data.builtin.object_size"),
    ([0.2, 0.6], "data.builtin.object_size"),
    (0.2, "data.builtin.object_size"),
])
def test_config_schema_checks_the_scene_keys(value: Any, match: str) -> None:
    import yaml

    from smnas.workflow.config import ConfigError, validate_schema

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    validate_schema(config)
    config["data"]["builtin"]["object_size"] = value
    with pytest.raises(ConfigError, match=match):
        validate_schema(config)
    config["data"]["builtin"]["object_size"] = [0.2, 0.4]
    config["data"]["builtin"]["max_objects"] = 0
    with pytest.raises(ConfigError, match="data.builtin.max_objects"):
        validate_schema(config)
