"""The built-in synthetic detection dataset written in three file formats (COCO, VOC, BDD100K).

Usage::

    from smnas.data.synthetic import make_dataset
    paths = make_dataset("data/synthetic", seed=0)   # 300 images per variant, ~10 s on one core
    paths["coco_train_json"], paths["voc_root"], paths["bdd_val_labels"]

The images (coloured shapes in clutter, one visual domain per variant) come from
:func:`smnas.data.scenes.render`; this module writes them and their labels:

- ``coco``: PNG, COCO instances JSON.
- ``voc``: JPEG, Pascal VOC 2007 layout.
- ``bdd``: JPEG, BDD100K det_20 JSON.

How hard the scenes are (object sizes and count, colour, sensor noise) is the ``scene``
argument, a :class:`smnas.data.scenes.SceneOptions`; every variant is drawn with the same one.

Boxes are tight around an object's *visible* pixels, as COCO and VOC annotators draw them. An
object with less than :data:`MIN_VISIBLE` of its pixels visible (occluded or out of the frame) is
not labelled in COCO/BDD and is marked ``difficult`` in VOC. Every image is drawn from its own
generator seeded by ``(seed, variant, split, index)``: the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from smnas.data.scenes import CLASSES, SPLITS, VARIANTS, Instance, SceneOptions, render
from smnas.io import atomic_open, atomic_path

GENERATOR_VERSION = "1"
VOC_NAMES: dict[str, str] = {
    "circle": "bird", "square": "tvmonitor", "triangle": "boat",
    "star": "aeroplane", "ring": "pottedplant", "cross": "person",
}
BDD_NAMES: dict[str, str] = {
    "circle": "car", "square": "truck", "triangle": "traffic sign",
    "star": "traffic light", "ring": "bicycle", "cross": "pedestrian",
}
# Distractor kinds that BDD labels with a category outside its 10 detection classes, when one
# covers at least BDD_EXTRA_MIN_AREA of the image (a few % of the labels, as in the real data).
BDD_EXTRA_NAMES: dict[str, str] = {"blob": "other vehicle", "shard": "trailer"}
BDD_EXTRA_MIN_AREA = 0.04
MIN_VISIBLE = 0.3      # visible share of an object's pixels below which it is not labelled
MIN_PIXELS = 10        # fewer visible pixels than this: not an object anyone could annotate
JPEG_QUALITY = 90
BDD_EMPTY_EVERY = 16   # frame i with i % 16 == 1 has no labels at all (key "labels" missing)


def make_dataset(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 240,
    num_val: int = 60,
    image_size: tuple[int, int] = (256, 192),
    variants: Sequence[str] = VARIANTS,
    progress: bool = False,
    scene: SceneOptions = SceneOptions(),
) -> dict[str, Path]:
    """Write the synthetic dataset under ``out_dir`` in the layouts of COCO, VOC2007 and BDD100K.

    Args:
        out_dir: root folder; ``coco/``, ``voc/`` and ``bdd/`` are made below it.
        seed: non-negative integer; the same seed gives byte-identical files.
        num_train: images in the train split (VOC ``trainval``), at least 1.
        num_val: images in the val split (VOC ``test``), at least 1.
        image_size: ``(width, height)`` in pixels, each at least 64.
        variants: which of ``"coco"``, ``"voc"``, ``"bdd"`` to write.
        progress: show a tqdm progress bar over all images.
        scene: how hard the scenes are; the defaults are the generator's own.

    Returns:
        Paths written, by key: ``coco_{train,val}_{json,images}``, ``voc_root`` (the folder
        holding ``VOCdevkit``, torchvision's convention), ``voc_year_dir`` (``.../VOC2007``),
        ``bdd_{train,val}_{labels,images}``; only for the variants asked for.
    """
    variants = _check_args(seed, num_train, num_val, image_size, variants)
    if not isinstance(scene, SceneOptions):
        raise TypeError(f"make_dataset: scene must be a SceneOptions, got {type(scene).__name__}")
    seed, num_train, num_val, image_size = _as_ints(seed, num_train, num_val, image_size)
    out = Path(out_dir)
    counts = {"train": num_train, "val": num_val}
    writers = {"coco": _write_coco, "voc": _write_voc, "bdd": _write_bdd}
    paths: dict[str, Path] = {}
    with tqdm(total=len(variants) * (num_train + num_val), disable=not progress,
              desc="synthetic", unit="img") as bar:
        for variant in variants:
            paths.update(writers[variant](out, seed, counts, image_size, scene, bar))
    return paths


def _check_args(seed: int, num_train: int, num_val: int, image_size: tuple[int, int],
                variants: Sequence[str]) -> list[str]:
    if isinstance(variants, str):
        variants = [variants]
    for name, value, low in (("seed", seed, 0), ("num_train", num_train, 1),
                             ("num_val", num_val, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"make_dataset: {name} must be an integer >= {low}, got {value!r}")
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, (int, np.integer)) for v in image_size)
            or min(image_size) < 64):
        raise ValueError(f"make_dataset: image_size must be (width, height) integers, each >= 64 "
                         f"pixels, got {image_size!r}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"make_dataset: unknown variant(s) {unknown!r}; valid ones are "
                         f"{', '.join(VARIANTS)} (at least one)")
    return list(dict.fromkeys(variants))  # drop repeats, keep order


def _as_ints(seed: int, num_train: int, num_val: int,
             image_size: tuple[int, int]) -> tuple[int, int, int, tuple[int, int]]:
    # numpy integers would reach the JSON writers, which reject them.
    return int(seed), int(num_train), int(num_val), (int(image_size[0]), int(image_size[1]))


def _labelled(instances: list[Instance], min_visible: float = MIN_VISIBLE) -> list[Instance]:
    return [i for i in instances if i.visibility >= min_visible and i.pixels >= MIN_PIXELS]


def _save_image(pixels: np.ndarray, path: Path) -> None:
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    # Sensor noise leaves little for LZ77 to find: Huffman-only deflate is as small, 2x faster.
    options: dict[str, Any] = ({"quality": JPEG_QUALITY} if fmt == "JPEG"
                               else {"compress_type": zlib.Z_HUFFMAN_ONLY})
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format=fmt, **options)


# ---------------------------------------------------------------- writers

def _write_json(path: Path, obj: Any) -> None:
    # json.dumps runs the C encoder; json.dump (as in smnas.io.atomic_write_json) runs the
    # pure-Python one, 5x slower on these files.
    with atomic_open(path) as f:
        f.write(json.dumps(obj) + "\n")


def _write_coco(out: Path, seed: int, counts: dict[str, int], size: tuple[int, int],
                scene: SceneOptions, bar: tqdm) -> dict[str, Path]:
    root, paths = out / "coco", {}
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)]
    for split in SPLITS:
        image_dir = root / split
        images, annotations = [], []
        for i in range(counts[split]):
            name = f"{i + 1:06d}.png"
            pixels, instances, _ = render(seed, "coco", split, i, size, scene=scene)
            _save_image(pixels, image_dir / name)
            images.append({"id": i + 1, "file_name": name, "width": size[0], "height": size[1]})
            for inst in _labelled(instances):
                if inst.cls < 0:
                    continue
                x0, y0, x1, y1 = inst.box
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": inst.cls + 1,
                    "bbox": [float(x0), float(y0), float(x1 + 1 - x0), float(y1 + 1 - y0)],
                    "area": float(inst.pixels), "iscrowd": 0})
            bar.update(1)
        info = {"description": "smnas synthetic shapes (coco domain)", "version": GENERATOR_VERSION,
                "generator": "smnas.data.synthetic", "seed": seed, "split": split,
                "scene": asdict(scene)}
        json_path = root / "annotations" / f"instances_{split}.json"
        _write_json(json_path, {"info": info, "licenses": [], "images": images,
                                "annotations": annotations, "categories": categories})
        paths[f"coco_{split}_json"], paths[f"coco_{split}_images"] = json_path, image_dir
    return paths


def _voc_xml(name: str, size: tuple[int, int], instances: list[Instance]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "smnas synthetic shapes (voc domain)"
    size_el = ET.SubElement(root, "size")
    for tag, value in (("width", size[0]), ("height", size[1]), ("depth", 3)):
        ET.SubElement(size_el, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for inst in instances:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = VOC_NAMES[CLASSES[inst.cls]]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(inst.truncated))
        ET.SubElement(obj, "difficult").text = str(int(inst.visibility < MIN_VISIBLE))
        bnd = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), inst.box):
            ET.SubElement(bnd, tag).text = str(value + 1)  # VOC: 1-based, inclusive
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _write_voc(out: Path, seed: int, counts: dict[str, int], size: tuple[int, int],
               scene: SceneOptions, bar: tqdm) -> dict[str, Path]:
    year_dir = out / "voc" / "VOCdevkit" / "VOC2007"
    offset = {"train": 0, "val": counts["train"]}  # one numbering over the shared JPEGImages
    for split, set_name in (("train", "trainval"), ("val", "test")):
        names = []
        for i in range(counts[split]):
            name = f"{offset[split] + i + 1:06d}"
            pixels, instances, _ = render(seed, "voc", split, i, size, scene=scene)
            _save_image(pixels, year_dir / "JPEGImages" / f"{name}.jpg")
            # Heavily covered objects stay in the XML, marked difficult, as in real VOC.
            objects = [o for o in _labelled(instances, min_visible=0.1) if o.cls >= 0]
            with atomic_open(year_dir / "Annotations" / f"{name}.xml", "wb") as f:
                f.write(_voc_xml(name, size, objects))
            names.append(name)
            bar.update(1)
        with atomic_open(year_dir / "ImageSets" / "Main" / f"{set_name}.txt") as f:
            f.write("".join(n + "\n" for n in names))
    return {"voc_root": out / "voc", "voc_year_dir": year_dir}


def _bdd_label(inst: Instance, label_id: int) -> dict[str, Any]:
    category = BDD_NAMES[CLASSES[inst.cls]] if inst.cls >= 0 else BDD_EXTRA_NAMES[inst.kind]
    x0, y0, x1, y1 = inst.box
    return {"id": str(label_id), "category": category,
            "attributes": {"occluded": inst.occluded, "truncated": inst.truncated,
                           "trafficLightColor": "NA"},
            # Scalabel's convention: corners are pixel-inclusive (COCO w = x2 - x1 + 1).
            "box2d": {"x1": float(x0), "y1": float(y0), "x2": float(x1), "y2": float(y1)}}


def _write_bdd(out: Path, seed: int, counts: dict[str, int], size: tuple[int, int],
               scene: SceneOptions, bar: tqdm) -> dict[str, Path]:
    root, paths = out / "bdd", {}
    label_id = 0
    for split in SPLITS:
        image_dir = root / "images" / "100k" / split
        frames = []
        for i in range(counts[split]):
            name = f"{seed:08x}-{split}{i + 1:05d}.jpg"
            empty = i % BDD_EMPTY_EVERY == 1
            pixels, instances, attrs = render(seed, "bdd", split, i, size, empty=empty,
                                              scene=scene)
            _save_image(pixels, image_dir / name)
            frame: dict[str, Any] = {"name": name, "attributes": attrs, "timestamp": 10000}
            min_extra = BDD_EXTRA_MIN_AREA * size[0] * size[1]
            kept = [o for o in _labelled(instances) if o.cls >= 0
                    or (o.kind in BDD_EXTRA_NAMES and o.pixels >= min_extra)]
            if not empty and kept:
                frame["labels"] = [_bdd_label(o, label_id + k) for k, o in enumerate(kept)]
                label_id += len(kept)
            frames.append(frame)
            bar.update(1)
        json_path = root / "labels" / "det_20" / f"det_{split}.json"
        _write_json(json_path, frames)
        paths[f"bdd_{split}_labels"], paths[f"bdd_{split}_images"] = json_path, image_dir
    return paths
