"""A torch ``Dataset`` over a COCO instances dict and an image folder.

Items follow torchvision's detection convention: ``(image, target)`` with
``image (FloatTensor[3, H, W])`` in [0, 1] at the file's own size (the model's transform resizes)
and ``target = {"boxes": FloatTensor[N, 4] in [x1, y1, x2, y2] pixels, "labels": Int64Tensor[N],
"image_id": int}``. Labels are contiguous 1..K in the order of the sorted category ids
(0 is background, torchvision's convention); :meth:`DetectionDataset.category_id` maps back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from smnas.errors import DataFormatError


class DetectionDataset(Dataset):
    """Images and boxes of one split.

    Args:
        coco: a COCO instances dict (see :func:`smnas.data.coco.load_coco`, which validates it).
        image_dir: the folder that ``file_name`` entries are relative to.
        hflip_prob: probability of a horizontal flip per item (training augmentation; 0 for eval).
        scale_jitter: ``(lo, hi)`` factors; each item is resized by a factor drawn uniformly from
            the range (training augmentation of the final recipe), or ``None``.

    Crowd/difficult annotations (``iscrowd: 1``) are left out of training targets, as
    torchvision's references do; COCO evaluation ignores them.
    """

    def __init__(
        self,
        coco: dict[str, Any],
        image_dir: str | Path,
        hflip_prob: float = 0.0,
        scale_jitter: tuple[float, float] | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        self.category_ids = sorted(c["id"] for c in coco["categories"])
        self.category_names = [
            c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])
        ]
        self._label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self._anns: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in coco["annotations"]:
            if not ann.get("iscrowd", 0):
                self._anns[ann["image_id"]].append(ann)
        self.hflip_prob = hflip_prob
        self.scale_jitter = scale_jitter

    @property
    def num_classes(self) -> int:
        """Number of object classes K (the detector needs K + 1 outputs with background)."""
        return len(self.category_ids)

    def category_id(self, label: int) -> int:
        """The COCO category id of contiguous label ``label`` (1..K)."""
        return self.category_ids[label - 1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                image = pil_to_tensor(im.convert("RGB")).float().div_(255.0)  # (3, H, W)
        except (FileNotFoundError, OSError) as e:
            raise DataFormatError(
                f"{path}: cannot read image of image id {info['id']}: {e}"
            ) from e
        anns = self._anns[info["id"]]
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in anns],
            dtype=torch.float32,
        ).reshape(-1, 4)  # (N, 4) x1y1x2y2
        labels = torch.tensor([self._label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        image, boxes = self._augment(image, boxes)
        return image, {"boxes": boxes, "labels": labels, "image_id": info["id"]}

    def _augment(self, image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Uses torch's global RNG so that a training run seeded (and resumed) through
        # smnas.engine.train replays the same augmentations.
        if self.hflip_prob > 0 and torch.rand(()) < self.hflip_prob:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = torch.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
            )
        if self.scale_jitter is not None:
            lo, hi = self.scale_jitter
            factor = float(lo + (hi - lo) * torch.rand(()))
            h, w = image.shape[-2:]
            size = (max(1, round(h * factor)), max(1, round(w * factor)))
            image = torch.nn.functional.interpolate(
                image[None], size=size, mode="bilinear", align_corners=False
            )[0]
            boxes = boxes * torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
        return image, boxes


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images of different sizes as a list (torchvision detection models batch them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
