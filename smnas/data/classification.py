"""An image-classification variant of the built-in dataset, for pretraining backbones.

Usage::

    from smnas.data.classification import make_classification_dataset, load_image_folders
    paths = make_classification_dataset("data/shapes-cls", seed=0)   # 7 classes, seconds
    train_set, val_set = load_image_folders(paths["root"])           # torchvision ImageFolders

The SM-NAS paper (Yao et al., AAAI 2020) starts its named backbones from ImageNet weights and
pre-trains its searched ones on ImageNet. This module is the laptop-sized stand-in: crops of the
detection dataset's scenes (:mod:`smnas.data.scenes`, same shapes, colours, textures, clutter
and backgrounds), each centred on one object of a shape class, plus a ``background`` class of
crops with clutter only. The layout is ImageNet's as torchvision reads it,
``root/{train,val}/{class_name}/{index:05d}.png``, so real ImageNet (train/ and a val/ sorted
into class folders) is read by the same :func:`load_image_folders`.

Every crop is drawn from its own generator seeded by ``(seed, variant, split, class, index)``:
the same seed gives byte-identical files, whatever the number of images per class.
"""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, pil_loader
from tqdm import tqdm

from smnas.data import scenes
from smnas.data.scenes import CLASSES, SPLITS, VARIANTS, Item
from smnas.errors import DataFormatError, SmnasError
from smnas.io import atomic_path, atomic_write_json

GENERATOR_VERSION = "1"
BACKGROUND = "background"
MANIFEST = "dataset.json"
MIN_TARGET_VISIBLE = 0.6  # an occluder may cover at most 40% of the labelled shape
_P_OCCLUDED = 0.3         # share of crops with a distractor drawn over the object
_NAME_RE = re.compile(r"^\d{5}\.png$")


def class_names(background: bool = True) -> tuple[str, ...]:
    """The classes of the dataset: the six shapes, then ``background`` when asked for."""
    return CLASSES + ((BACKGROUND,) if background else ())


def _edge_clutter(rng: np.random.Generator, side: int) -> list[Item]:
    """Background shapes whose centres lie near the crop's border: only part of each shows.

    They are distractors (``cls = -1``), so they never take the crop's label.
    """
    items = []
    for _ in range(int(rng.integers(0, 3))):
        item = scenes._sample_object(rng, int(rng.integers(len(CLASSES))), side, side)
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 0.7) * side
        items.append(replace(item, cls=-1, r=float(rng.uniform(0.1, 0.3) * side),
                             cx=side / 2 + dist * math.cos(angle), cy=side / 2 + dist * math.sin(angle)))
    kinds = ["blob"] * int(rng.integers(0, 2)) + ["shard"] * int(rng.integers(0, 2))
    kinds += ["line"] * int(rng.integers(1, 3))
    items += [scenes._sample_distractor(rng, kind, side, side) for kind in kinds]
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def _target(rng: np.random.Generator, cls: int, side: int) -> Item:
    """The labelled shape: centred within +-15% of the crop, its area that of a disc of radius
    15..32% of the side (a star's points and a square's corners may leave the frame)."""
    item = scenes._sample_object(rng, cls, side, side)
    area_radius = rng.uniform(0.15, 0.32) * side
    r = area_radius * math.sqrt(math.pi / scenes._FILL[CLASSES[cls]])
    cx, cy = side / 2 + np.clip(rng.normal(0.0, 0.07, size=2), -0.15, 0.15) * side
    return replace(item, cx=float(cx), cy=float(cy), r=float(r))


def render_crop(seed: int, variant: str, split: str, label: str, index: int,
                size: int) -> np.ndarray:
    """Draw one crop of class ``label``.

    Args:
        seed: non-negative integer; with the other arguments it seeds the crop's own generator.
        variant: one of :data:`smnas.data.scenes.VARIANTS`, the visual domain.
        split: ``"train"`` or ``"val"``.
        label: a shape class of :data:`smnas.data.scenes.CLASSES`, or ``"background"``.
        index: 0-based index of the crop within its class and split.
        size: side of the square crop in pixels.

    Returns:
        (size, size, 3) uint8 pixels.
    """
    if label not in class_names():
        raise ValueError(f"render_crop: unknown class {label!r}; valid: {', '.join(class_names())}")
    cls = CLASSES.index(label) if label != BACKGROUND else len(CLASSES)
    rng = np.random.default_rng([seed, VARIANTS.index(variant), SPLITS.index(split), cls, index])
    attrs = {"weather": scenes._WEATHER[rng.integers(len(scenes._WEATHER))],
             "scene": scenes._SCENES[rng.integers(len(scenes._SCENES))],
             "timeofday": scenes._TIMES[rng.integers(len(scenes._TIMES))]}
    background = scenes._background(rng, variant, size, size, attrs)
    items = _edge_clutter(rng, size)
    if label != BACKGROUND:
        items.append(_target(rng, cls, size))
    occluder = [scenes._sample_distractor(rng, ("blob", "shard", "line")[rng.integers(3)], size, size)
                for _ in range(int(label != BACKGROUND and rng.random() < _P_OCCLUDED))]
    # A covered object would not show its class: up to 3 places for the occluder, then none.
    attempts = [[replace(o, cx=float(rng.uniform(0, size)), cy=float(rng.uniform(0, size)))
                 for o in occluder] for _ in range(2)]
    for extra in [occluder, *attempts, []] if occluder else [[]]:
        img = background.copy()
        drawn = scenes._draw_items(rng, img, items + extra)
        if not extra or any(i.cls >= 0 and i.visibility >= MIN_TARGET_VISIBLE for i in drawn):
            break
    return scenes._finish(rng, img, variant, attrs)


def make_classification_dataset(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 50,
    image_size: int = 64,
    variant: str = "coco",
    background: bool = True,
    progress: bool = False,
) -> dict[str, Path]:
    """Write the classification dataset under ``out_dir`` in ImageFolder layout.

    Rerunning with the same arguments rewrites the same bytes. Files of an earlier run with more
    images per class (``NNNNN.png`` past the count) are removed, so the folder always holds
    exactly what the arguments say; a class folder this run would not write is an error.
    ``dataset.json`` (the arguments and class list) is written last: it marks a complete run.

    Args:
        out_dir: root folder; ``train/`` and ``val/`` are made below it.
        seed: non-negative integer; the same seed gives byte-identical files.
        num_train: train crops per class, at least 1.
        num_val: val crops per class, at least 1.
        image_size: side of the square crops in pixels, at least 16.
        variant: the visual domain (``"coco"``, ``"voc"`` or ``"bdd"``).
        background: add a ``background`` class of crops without a labelled shape.
        progress: show a tqdm progress bar.

    Returns:
        ``{"root", "train", "val", "manifest"}``: the folders and ``dataset.json``.
    """
    for name, value, low in (("seed", seed, 0), ("num_train", num_train, 1), ("num_val", num_val, 1),
                             ("image_size", image_size, 16)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"make_classification_dataset: {name} must be an integer >= {low}, got {value!r}")
    if variant not in VARIANTS:
        raise ValueError(f"make_classification_dataset: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    root, names = Path(out_dir), class_names(background)
    counts = {"train": int(num_train), "val": int(num_val)}
    _check_no_foreign_classes(root, names)
    with tqdm(total=len(names) * sum(counts.values()), disable=not progress, desc="classification",
              unit="img") as bar:
        for split, count in counts.items():
            for label in names:
                folder = root / split / label
                for i in range(count):
                    _save_png(render_crop(int(seed), variant, split, label, i, int(image_size)),
                              folder / f"{i:05d}.png")
                    bar.update(1)
                _remove_stale(folder, count)
    manifest = {"generator": "smnas.data.classification", "version": GENERATOR_VERSION,
                "seed": int(seed), "variant": variant, "image_size": int(image_size),
                "classes": list(names), "num_train_per_class": counts["train"],
                "num_val_per_class": counts["val"]}
    atomic_write_json(root / MANIFEST, manifest, indent=2)
    return {"root": root, "train": root / "train", "val": root / "val", "manifest": root / MANIFEST}


def _save_png(pixels: np.ndarray, path: Path) -> None:
    # Sensor noise leaves little for LZ77 to find: Huffman-only deflate is as small, 2x faster.
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_type=zlib.Z_HUFFMAN_ONLY)


def _check_no_foreign_classes(root: Path, names: tuple[str, ...]) -> None:
    # ImageFolder takes every sub-folder as a class: one left from another run would be read.
    for split in SPLITS:
        if (root / split).is_dir():
            foreign = sorted(p.name for p in (root / split).iterdir() if p.is_dir() and p.name not in names)
            if foreign:
                raise SmnasError(f"{root / split}: holds class folder(s) {foreign} that this dataset "
                                 f"({', '.join(names)}) does not have; remove them or use another folder")


def _remove_stale(folder: Path, count: int) -> None:
    for path in folder.iterdir():
        if _NAME_RE.match(path.name) and int(path.name[:5]) >= count:
            path.unlink()


# ---------------------------------------------------------------- reading

def _loader(path: str) -> Image.Image:
    try:
        return pil_loader(path)
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataFormatError(f"{path}: cannot read image ({e})") from None


def load_image_folder(folder: str | Path, transform: Callable | None = None) -> ImageFolder:
    """An ImageFolder over ``folder/{class_name}/*.{png,jpg,...}``, checked first.

    Args:
        folder: a split folder such as ``root/train``.
        transform: applied to each PIL image (e.g. a torchvision transform to a tensor).

    Returns:
        ``torchvision.datasets.ImageFolder``: items ``(image, label)`` with labels 0..K-1 in
        the sorted order of the class folder names (``classes``); an unreadable image raises
        DataFormatError naming the file when it is read.

    Raises:
        DataFormatError: the folder is missing, has no class sub-folders, or a class folder
        holds no image; the message names the path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: no such folder (expected an image folder with one "
                              "sub-folder of images per class)")
    subdirs = [p for p in folder.iterdir() if p.is_dir()]
    if not subdirs:
        files = sum(1 for p in folder.iterdir() if p.is_file())
        raise DataFormatError(f"{folder}: no class sub-folders (found {files} file(s) directly in it); "
                              f"expected {folder}/<class_name>/<image>.png, one folder per class")
    dataset = ImageFolder(str(folder), transform=transform, loader=_loader, allow_empty=True)
    per_class = np.bincount(np.asarray(dataset.targets, dtype=np.int64), minlength=len(dataset.classes))
    empty = [dataset.classes[i] for i in np.flatnonzero(per_class == 0)]
    if empty:
        raise DataFormatError(f"{folder / empty[0]}: class folder holds no image "
                              f"(extensions {', '.join(IMG_EXTENSIONS)}); {len(empty)} such class(es): {empty}")
    return dataset


def load_image_folders(root: str | Path, train_transform: Callable | None = None,
                       val_transform: Callable | None = None) -> tuple[ImageFolder, ImageFolder]:
    """The ``train`` and ``val`` ImageFolders under ``root``, checked to have the same classes.

    ImageFolder numbers classes by the sorted folder names of each split separately: a class
    missing from one split would silently shift every label after it.

    Args:
        root: holds ``train/`` and ``val/``.
        train_transform, val_transform: applied to the PIL images of each split.

    Returns:
        (train, val) ImageFolders with equal ``classes``.
    """
    root = Path(root)
    train = load_image_folder(root / "train", train_transform)
    val = load_image_folder(root / "val", val_transform)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataFormatError(f"{root}: train/ and val/ have different classes (only in train: {only_train}, "
                              f"only in val: {only_val}); both need one folder per class")
    return train, val


def classification_transforms(image_size: int, augment: bool,
                              mean: tuple[float, ...], std: tuple[float, ...],
                              crop_scale: tuple[float, float] = (0.08, 1.0)) -> Callable:
    """The torchvision ImageNet transforms: PIL image -> FloatTensor[3, image_size, image_size].

    Training (``augment``): RandomResizedCrop to ``image_size`` over ``crop_scale`` of the area,
    horizontal flip. Evaluation: resize the short side to ``image_size / 0.875``, centre crop.
    Both normalise by ``mean``/``std``. Randomness comes from torch's global RNG, which
    :func:`smnas.engine.train.train` seeds and checkpoints, so a resumed run replays it.
    """
    if augment:
        steps = [transforms.RandomResizedCrop(image_size, scale=crop_scale), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(round(image_size / 0.875)), transforms.CenterCrop(image_size)]
    return transforms.Compose([*steps, transforms.PILToTensor(),
                               transforms.ConvertImageDtype(torch.float32), transforms.Normalize(mean, std)])
