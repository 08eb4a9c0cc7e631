"""Pascal VOC (VOCdevkit layout) to a COCO instances dict.

Layout read::

    VOCdevkit/VOC2007/ImageSets/Main/{split}.txt   one image id per line
    VOCdevkit/VOC2007/Annotations/{id}.xml         size and objects
    VOCdevkit/VOC2007/JPEGImages/{id}.jpg

File-name rule: ``file_name`` is ALWAYS relative to the ``VOCdevkit`` folder, e.g.
``"VOC2007/JPEGImages/000001.jpg"``, so one image folder (:func:`voc_image_dir`) serves a single
year and combined years ("2007+2012", the usual "07+12" trainval) alike.

Image ids are 1..N in split-file order (years in the order given), since VOC2012 ids such as
``2008_000008`` are not integers; the VOC id is kept as ``"voc_id"`` on each image.

Usage::

    coco = voc_to_coco("data/VOCdevkit", "2007+2012", "trainval")
    image_dir = voc_image_dir("data/VOCdevkit")
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image

from smnas.data.coco import validate_coco
from smnas.errors import DataFormatError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # category id = index + 1

_CLASS_IDS = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}


def voc_devkit(voc_root: str | os.PathLike) -> Path:
    """The ``VOCdevkit`` folder: ``voc_root`` itself, or ``voc_root/VOCdevkit`` if that exists."""
    root = Path(voc_root)
    if (root / "VOCdevkit").is_dir():
        return root / "VOCdevkit"
    if not root.is_dir():
        raise DataFormatError(f"{root}: VOC root folder does not exist")
    return root


def voc_image_dir(voc_root: str | os.PathLike, year: str | None = None) -> Path:
    """The folder that ``file_name`` of :func:`voc_to_coco` results is relative to.

    Args:
        voc_root: the ``VOCdevkit`` folder or its parent.
        year: optional "2007", "2012" or "2007+2012"; each ``VOC{year}/JPEGImages`` must exist.

    Returns:
        The ``VOCdevkit`` folder (file names look like ``"VOC2007/JPEGImages/000001.jpg"``).
    """
    devkit = voc_devkit(voc_root)
    for y in _years(year) if year else []:
        if not (devkit / f"VOC{y}" / "JPEGImages").is_dir():
            raise DataFormatError(f"{devkit / f'VOC{y}' / 'JPEGImages'}: folder does not exist")
    return devkit


def voc_to_coco(
    voc_root: str | os.PathLike, year: str, split: str, check_images: bool = True
) -> dict[str, Any]:
    """Convert one VOC split (of one or several years) to a COCO instances dict.

    Boxes: VOC ``<bndbox>`` is 1-based and pixel-inclusive, so ``[xmin, ymin, xmax, ymax]``
    becomes COCO ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``. Objects with
    ``<difficult>1</difficult>`` are kept with ``iscrowd: 1`` (COCOeval and :func:`voc_map50`
    then ignore them); every annotation carries ``"difficult": 0 | 1``. Image size comes from
    ``<size>``, or from the JPEG header when that is missing or zero.

    Args:
        voc_root: the ``VOCdevkit`` folder or its parent.
        year: "2007", "2012", or several joined by "+" ("2007+2012").
        split: the ImageSets/Main list name: "train", "val", "trainval" or "test".
        check_images: require every JPEG to exist.

    Returns:
        COCO dict; categories are :data:`VOC_CLASSES` with ids 1..20.

    Raises:
        DataFormatError: missing or empty split file, missing or unreadable XML, unknown class,
            malformed box; the message names the file and the entry.
    """
    devkit = voc_devkit(voc_root)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for y in _years(year):
        for voc_id in _read_split(devkit / f"VOC{y}" / "ImageSets" / "Main" / f"{split}.txt"):
            image_id = len(images) + 1
            img, objs = _parse_xml(devkit, f"VOC{y}", voc_id)
            images.append({"id": image_id, **img})
            for obj in objs:
                anns.append({"id": len(anns) + 1, "image_id": image_id, **obj})
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": n} for n, i in _CLASS_IDS.items()],
    }
    source = f"{devkit} (VOC{year} {split})"
    return validate_coco(coco, source, image_dir=devkit, check_images=check_images)


def _years(year: str) -> list[str]:
    years = [y.strip() for y in str(year).split("+")]
    if not all(y.isdigit() and len(y) == 4 for y in years):
        raise DataFormatError(f"VOC year {year!r}: expected e.g. '2007', '2012' or '2007+2012'")
    return years


def _read_split(path: Path) -> list[str]:
    try:
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        listing = sorted(p.stem for p in path.parent.glob("*.txt"))[:10]
        raise DataFormatError(
            f"{path}: split file not found (available here: {', '.join(listing) or 'none'})"
        ) from None
    if not ids:
        raise DataFormatError(f"{path}: empty split: the file lists no image ids")
    return ids


def _parse_xml(devkit: Path, year_dir: str, voc_id: str) -> tuple[dict, list[dict]]:
    """Read one annotation XML; return (image fields without id, annotation fields without ids)."""
    xml_path = devkit / year_dir / "Annotations" / f"{voc_id}.xml"
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DataFormatError(f"{xml_path}: annotation file not found for image {voc_id}") from None
    except ET.ParseError as e:
        raise DataFormatError(f"{xml_path}: unreadable XML ({e})") from None
    file_name = f"{year_dir}/JPEGImages/{voc_id}.jpg"
    width, height = _image_size(root, devkit / file_name, xml_path)
    img = {"file_name": file_name, "width": width, "height": height, "voc_id": voc_id}
    return img, [_parse_object(o, k, xml_path) for k, o in enumerate(root.findall("object"))]


def _image_size(root: ET.Element, jpeg: Path, xml_path: Path) -> tuple[int, int]:
    try:
        w = int(float(root.findtext("size/width", "0")))
        h = int(float(root.findtext("size/height", "0")))
    except ValueError:
        raise DataFormatError(f"{xml_path}: <size> width/height are not numbers") from None
    if w > 0 and h > 0:
        return w, h
    # Some converted VOC-style sets omit <size> or write 0: the JPEG header knows.
    try:
        with Image.open(jpeg) as im:
            return im.size
    except (FileNotFoundError, OSError) as e:
        raise DataFormatError(
            f"{xml_path}: <size> missing or zero and image {jpeg} cannot be read ({e})"
        ) from None


def _parse_object(obj: ET.Element, k: int, xml_path: Path) -> dict[str, Any]:
    where = f"{xml_path}: object {k}"
    name = (obj.findtext("name") or "").strip()
    if name not in _CLASS_IDS:
        raise DataFormatError(
            f"{where}: unknown class {name!r}; expected one of {', '.join(VOC_CLASSES)}"
        )
    try:
        xmin, ymin, xmax, ymax = (
            float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")
        )
        difficult = int(float((obj.findtext("difficult") or "0").strip() or 0))
    except (TypeError, ValueError):
        raise DataFormatError(
            f"{where} ({name}): <bndbox> needs numeric xmin, ymin, xmax, ymax "
            "and <difficult> must be 0 or 1"
        ) from None
    if xmax < xmin or ymax < ymin:
        raise DataFormatError(
            f"{where} ({name}): box xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} "
            "has xmax < xmin or ymax < ymin"
        )
    w, h = xmax - xmin + 1, ymax - ymin + 1
    return {
        "category_id": _CLASS_IDS[name],
        "bbox": [xmin - 1, ymin - 1, w, h],
        "area": w * h,
        "iscrowd": 1 if difficult else 0,
        "difficult": 1 if difficult else 0,
    }
