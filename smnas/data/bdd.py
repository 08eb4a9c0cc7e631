"""BDD100K detection labels (det_20, Scalabel JSON) to a COCO instances dict.

Input: ``bdd100k/labels/det_20/det_{train,val}.json``, a list of frames::

    [{"name": "b1c66a42-6f7d68ca.jpg",
      "labels": [{"id": "0", "category": "car",
                  "box2d": {"x1": 45.2, "y1": 254.5, "x2": 357.8, "y2": 487.9}}, ...]}, ...]

and the image folder ``bdd100k/images/100k/{train,val}``.

Box convention: as in the official converter (scalabel ``box2d_to_bbox``), ``box2d`` corners are
pixel-inclusive, so the COCO box is ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``; this keeps our
numbers equal to those of the official COCO-format BDD100K labels.

Usage::

    coco = bdd_to_coco("labels/det_20/det_val.json", "images/100k/val")
"""
from __future__ import annotations

import collections
import math
import os
import warnings
from pathlib import Path
from typing import Any

from PIL import Image

from smnas.data.coco import validate_coco
from smnas.errors import DataFormatError
from smnas.io import read_json

BDD_CLASSES: tuple[str, ...] = (
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    "traffic light", "traffic sign",
)  # category id = index + 1

_CLASS_IDS = {name: i + 1 for i, name in enumerate(BDD_CLASSES)}

# Names of the 2018 label release (bdd100k_labels_images_*.json); seeing them among the skipped
# categories means the wrong file was given, which the warning then says.
_OLD_FORMAT_NAMES = {"person", "bike", "motor"}

# The official BDD100K evaluation keeps these as ignore regions of a detection class.
IGNORE_MAP: dict[str, str] = {
    "other person": "pedestrian", "other vehicle": "car", "trailer": "truck",
}


def bdd_to_coco(
    labels_json: str | os.PathLike, image_dir: str | os.PathLike, ignored_as_crowd: bool = False
) -> dict[str, Any]:
    """Convert a BDD100K det_20 label file to a COCO instances dict.

    Labels without ``box2d`` (lanes, drivable areas) are skipped silently; labels of categories
    outside :data:`BDD_CLASSES` ("other vehicle", "trailer", ...) are skipped and counted in one
    ``UserWarning``. Frames without labels stay as images with no objects. Image sizes are read
    from the image files (header only). A label with attribute ``crowd: true`` gets
    ``iscrowd: 1``.

    Args:
        labels_json: the det_20 JSON file (a list of frames).
        image_dir: folder holding the frames' images; ``file_name`` is the frame ``name``.
        ignored_as_crowd: keep "other person", "other vehicle" and "trailer" as ``iscrowd: 1``
            boxes of pedestrian, car and truck (:data:`IGNORE_MAP`), as the official BDD100K
            evaluation does, instead of skipping them: detections there then cost nothing.

    Returns:
        COCO dict; image ids 1..N in file order; categories :data:`BDD_CLASSES`, ids 1..10.

    Raises:
        DataFormatError: not a frame list, duplicate frame, missing or unreadable image,
            malformed box or x2 < x1; the message names the file, the frame and the label id.
    """
    path, root = Path(labels_json), Path(image_dir)
    frames = _read_frames(path)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    skipped: collections.Counter[str] = collections.Counter()
    names: set[str] = set()
    for i, frame in enumerate(frames):
        name = frame.get("name") if isinstance(frame, dict) else None
        if not isinstance(name, str) or not name:
            raise DataFormatError(f"{path}: frame {i}: expected an object with a string 'name'")
        if name in names:
            raise DataFormatError(f"{path}: frame {name!r}: duplicate frame name")
        names.add(name)
        width, height = _image_size(root / name, path, name)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for label in frame.get("labels") or []:  # det_20 writes null for frames without labels
            obj = _convert_label(label, path, name, skipped, ignored_as_crowd)
            if obj is not None:
                anns.append({"id": len(anns) + 1, "image_id": image_id, **obj})
    if skipped:
        warnings.warn(_skipped_message(path, skipped), stacklevel=2)
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": n} for n, i in _CLASS_IDS.items()],
    }
    # Files were opened above for their sizes: no second existence check needed.
    return validate_coco(coco, str(path), image_dir=None)


def _read_frames(path: Path) -> list[Any]:
    frames = read_json(path, "a BDD100K det_20 JSON")
    # Scalabel's dataset form wraps the list: {"frames": [...], "config": ...}.
    if isinstance(frames, dict) and isinstance(frames.get("frames"), list):
        frames = frames["frames"]
    if not isinstance(frames, list):
        raise DataFormatError(
            f"{path}: not a BDD100K det_20 file: expected a list of frames, "
            f"got a JSON {type(frames).__name__}"
        )
    if not frames:
        raise DataFormatError(f"{path}: empty split: the file lists no frames")
    return frames


def _image_size(file: Path, path: Path, name: str) -> tuple[int, int]:
    try:
        with Image.open(file) as im:  # lazy: reads the header only
            return im.size
    except FileNotFoundError:
        raise DataFormatError(f"{path}: frame {name!r}: missing image file {file}") from None
    except OSError as e:
        raise DataFormatError(f"{path}: frame {name!r}: unreadable image {file} ({e})") from None


def _convert_label(
    label: Any, path: Path, name: str, skipped: collections.Counter[str], ignored_as_crowd: bool
) -> dict[str, Any] | None:
    """One label to COCO annotation fields, or None if it is not a detection box."""
    if not isinstance(label, dict):
        raise DataFormatError(f"{path}: frame {name!r}: label is not an object: {label!r}")
    box = label.get("box2d")
    if box is None:
        return None
    original = label.get("category")
    ignored = ignored_as_crowd and original in IGNORE_MAP
    category = IGNORE_MAP[original] if ignored else original
    if category not in _CLASS_IDS:
        skipped[str(category)] += 1
        return None
    where = f"{path}: frame {name!r}, label {label.get('id')!r} ({original})"
    try:
        x1, y1, x2, y2 = (float(box[k]) for k in ("x1", "y1", "x2", "y2"))
    except (TypeError, KeyError, ValueError):
        raise DataFormatError(
            f"{where}: box2d must hold numbers x1, y1, x2, y2, got {box!r}"
        ) from None
    if not all(map(math.isfinite, (x1, y1, x2, y2))):
        raise DataFormatError(f"{where}: box2d has a non-finite coordinate: {box!r}")
    if x2 < x1 or y2 < y1:
        which = "x2 < x1" if x2 < x1 else "y2 < y1"
        raise DataFormatError(f"{where}: box2d {box!r} has {which}")
    w, h = x2 - x1 + 1, y2 - y1 + 1
    attributes = label.get("attributes") or {}
    crowd = ignored or bool(isinstance(attributes, dict) and attributes.get("crowd"))
    return {
        "category_id": _CLASS_IDS[category],
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": int(crowd),
    }


def _skipped_message(path: Path, skipped: collections.Counter[str]) -> str:
    by_count = sorted(skipped.items(), key=lambda t: (-t[1], t[0]))
    counts = ", ".join(f"{name} ({n})" for name, n in by_count)
    msg = (
        f"{path}: skipped {sum(skipped.values())} labels of categories not among the "
        f"{len(BDD_CLASSES)} detection classes: {counts}"
    )
    if _OLD_FORMAT_NAMES & set(skipped):
        msg += (
            "; 'person', 'bike' and 'motor' are names of the 2018 label release "
            "(bdd100k_labels_images_*.json): use the det_20 labels (labels/det_20/det_*.json)"
        )
    return msg
