"""Read, validate and write COCO instances files: the one dataset format used everywhere.

Every dataset (COCO, Pascal VOC, BDD100K) is turned into a plain COCO instances dict::

    {"images":      [{"id": int, "file_name": str, "width": int, "height": int}, ...],
     "annotations": [{"id": int, "image_id": int, "category_id": int,
                      "bbox": [x, y, w, h], "area": float, "iscrowd": 0 | 1}, ...],
     "categories":  [{"id": int, "name": str}, ...]}

``bbox`` is ``[x, y, w, h]`` in float pixels, ``(x, y)`` the top-left corner. ``file_name`` is
relative to an image folder passed separately. Category ids are positive (1-based); COCO itself
uses 1..90 with gaps, the VOC and BDD converters use 1..K without gaps.

Usage::

    coco = load_coco("annotations/instances_val2017.json", image_dir="val2017")
    names = coco_category_names(coco)      # ["person", "bicycle", ...] in id order
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

from smnas.errors import DataFormatError
from smnas.io import atomic_write_json, read_json

# Boxes may overhang the image border by this much: annotation tools and the +1 pixel-inclusive
# conventions of VOC and BDD100K put valid boxes up to a pixel past the edge.
BOX_TOLERANCE_PX = 2.0

_TOP_LEVEL_KEYS = ("images", "annotations", "categories")


def load_coco(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    check_images: bool = True,
    drop_empty_boxes: bool = False,
) -> dict[str, Any]:
    """Read a COCO instances JSON and validate it (see :func:`validate_coco`).

    Args:
        json_path: the instances JSON file.
        image_dir: folder that ``file_name`` is relative to; ``None`` skips the file check.
        check_images: with ``image_dir``, require every image file to exist.
        drop_empty_boxes: drop annotations whose box has width or height exactly 0, with one
            counted warning, instead of failing. COCO train2017 holds two such annotations
            (ids 918 and 2206849, height 0.0); nothing else is dropped.

    Returns:
        The COCO dict, with ``area`` (w * h) and ``iscrowd`` (0) filled in where missing.

    Raises:
        DataFormatError: the file is missing, is not JSON, or is not a valid COCO instances file;
            the message names the file, the entry and what was expected.
    """
    path = Path(json_path)
    coco = read_json(path, "a COCO instances JSON")
    return validate_coco(coco, str(path), image_dir, check_images, drop_empty_boxes)


def validate_coco(
    coco: Any,
    source: str = "<COCO dict>",
    image_dir: str | os.PathLike | None = None,
    check_images: bool = True,
    drop_empty_boxes: bool = False,
) -> dict[str, Any]:
    """Check a COCO instances dict in place and fill in missing ``area`` and ``iscrowd``.

    Checked: the three top-level lists; image ids, file names and positive sizes; category ids
    (positive ints) and names; annotation ids unique, ``image_id`` and ``category_id`` known,
    ``bbox`` four finite numbers with w > 0 and h > 0 lying inside the image (within
    ``BOX_TOLERANCE_PX``); at least one image; with ``image_dir`` and ``check_images``, every
    image file exists.

    Args:
        coco: the parsed JSON.
        source: name used in error messages (usually the file path).
        image_dir, check_images, drop_empty_boxes: as in :func:`load_coco`.

    Returns:
        ``coco`` itself (modified in place).
    """
    _check_top_level(coco, source)
    images = _check_images(coco["images"], source)
    cat_ids = _check_categories(coco["categories"], source)
    empty = _check_annotations(coco["annotations"], images, cat_ids, source, drop_empty_boxes)
    if empty:
        dropped = set(empty)
        coco["annotations"] = [a for a in coco["annotations"] if a["id"] not in dropped]
        warnings.warn(
            f"{source}: dropped {len(empty)} annotations with an empty box (width or height 0): "
            f"ids {sorted(empty)[:20]}",
            stacklevel=2,
        )
    if image_dir is not None and check_images:
        check_image_files(coco, image_dir, source)
    return coco


def write_coco(coco: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a COCO dict as JSON atomically (temporary file, then rename)."""
    atomic_write_json(path, coco)


def coco_category_names(coco: dict[str, Any]) -> list[str]:
    """Category names sorted by category id (index i is the i-th smallest id)."""
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def check_image_files(coco: dict[str, Any], image_dir: str | os.PathLike, source: str) -> None:
    """Raise DataFormatError for the first image whose file is not under ``image_dir``."""
    root = Path(image_dir)
    if not root.is_dir():
        raise DataFormatError(f"{source}: image folder {root} does not exist")
    for img in coco["images"]:
        file = root / img["file_name"]
        if not file.is_file():
            raise DataFormatError(f"{source}: missing image file {file} for image id {img['id']}")


def describe_ids(ids: set[int] | list[int], limit: int = 20) -> str:
    """Short text for a set of ids: ``"1..5"`` when contiguous, else the first ``limit``."""
    s = sorted(ids)
    if not s:
        return "none"
    if s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}..{s[-1]}"
    more = f", ... ({len(s)} in all)" if len(s) > limit else ""
    return ", ".join(map(str, s[:limit])) + more


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_top_level(coco: Any, source: str) -> None:
    if not isinstance(coco, dict):
        raise DataFormatError(
            f"{source}: not a COCO instances file: top level is a JSON {type(coco).__name__}, "
            f"expected an object with keys {', '.join(_TOP_LEVEL_KEYS)}"
        )
    for key in _TOP_LEVEL_KEYS:
        if key not in coco:
            raise DataFormatError(
                f"{source}: not a COCO instances file: missing key '{key}' "
                f"(expected keys {', '.join(_TOP_LEVEL_KEYS)})"
            )
        if not isinstance(coco[key], list):
            raise DataFormatError(
                f"{source}: not a COCO instances file: '{key}' is a {type(coco[key]).__name__}, "
                "expected a list"
            )
    if not coco["images"]:
        raise DataFormatError(f"{source}: empty split: 'images' is an empty list")


def _check_images(images: list[Any], source: str) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(images):
        where = f"{source}: images[{i}]"
        if not isinstance(img, dict):
            raise DataFormatError(f"{where}: expected an object, got {type(img).__name__}")
        if not _is_int(img.get("id")):
            raise DataFormatError(f"{where}: 'id' must be an integer, got {img.get('id')!r}")
        where = f"{source}: image {img['id']}"
        if img["id"] in by_id:
            raise DataFormatError(f"{where}: duplicate image id")
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            raise DataFormatError(f"{where}: 'file_name' must be a non-empty string, got {name!r}")
        for key in ("width", "height"):
            v = img.get(key)
            if isinstance(v, float) and v.is_integer():
                img[key] = v = int(v)
            if not _is_int(v) or v <= 0:
                raise DataFormatError(f"{where}: '{key}' must be a positive integer, got {v!r}")
        by_id[img["id"]] = img
    return by_id


def _check_categories(categories: list[Any], source: str) -> set[int]:
    if not categories:
        raise DataFormatError(f"{source}: 'categories' is an empty list")
    ids: set[int] = set()
    names: set[str] = set()
    for i, cat in enumerate(categories):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, dict):
            raise DataFormatError(f"{where}: expected an object, got {type(cat).__name__}")
        cid, name = cat.get("id"), cat.get("name")
        if not _is_int(cid) or cid < 1:
            raise DataFormatError(f"{where}: 'id' must be an integer >= 1, got {cid!r}")
        if cid in ids:
            raise DataFormatError(f"{where}: duplicate category id {cid}")
        if not isinstance(name, str) or not name:
            raise DataFormatError(f"{where}: 'name' must be a non-empty string, got {name!r}")
        if name in names:
            raise DataFormatError(f"{where}: duplicate category name {name!r}")
        ids.add(cid)
        names.add(name)
    return ids


def _check_annotations(
    anns: list[Any],
    images: dict[int, dict[str, Any]],
    cat_ids: set[int],
    source: str,
    drop_empty_boxes: bool,
) -> list[int]:
    """Validate annotations in place; return the ids of empty boxes to drop (if allowed)."""
    seen: set[int] = set()
    empty: list[int] = []
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise DataFormatError(f"{source}: annotations[{i}]: expected an object")
        if not _is_int(ann.get("id")):
            raise DataFormatError(
                f"{source}: annotations[{i}]: 'id' must be an integer, got {ann.get('id')!r}"
            )
        where = f"{source}: annotation {ann['id']}"
        if ann["id"] in seen:
            raise DataFormatError(f"{where}: duplicate annotation id")
        seen.add(ann["id"])
        img = images.get(ann.get("image_id"))
        if img is None:
            raise DataFormatError(
                f"{where}: unknown image id {ann.get('image_id')!r}; "
                f"known: {describe_ids(set(images))}"
            )
        if ann.get("category_id") not in cat_ids:
            raise DataFormatError(
                f"{where}: unknown category {ann.get('category_id')!r}; "
                f"known: {describe_ids(cat_ids)}"
            )
        if _check_bbox(ann.get("bbox"), img, where, allow_empty=drop_empty_boxes):
            empty.append(ann["id"])
        x, y, w, h = ann["bbox"]
        ann.setdefault("area", float(w * h))
        ann.setdefault("iscrowd", 0)
        if ann["iscrowd"] not in (0, 1):
            raise DataFormatError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
    return empty


def _check_bbox(bbox: Any, img: dict[str, Any], where: str, allow_empty: bool) -> bool:
    """Raise for a malformed box; return True for an empty (w or h == 0) one if allowed."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
        raise DataFormatError(
            f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}"
        )
    x, y, w, h = bbox
    for size, name, why in ((w, "width", "x2 < x1"), (h, "height", "y2 < y1")):
        if size < 0:
            raise DataFormatError(f"{where}: bbox {name} {size} must be > 0 ({why})")
        if size == 0:
            if allow_empty:
                return True
            raise DataFormatError(
                f"{where}: bbox {name} {size} must be > 0 (empty box); "
                "load_coco(..., drop_empty_boxes=True) drops such boxes with a warning"
            )
    W, H, tol = img["width"], img["height"], BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
        raise DataFormatError(
            f"{where}: bbox {list(bbox)} (x2 = {x + w:g}, y2 = {y + h:g}) lies outside image "
            f"{img['id']} of size {W}x{H} (tolerance {tol:g} px)"
        )
    return False
