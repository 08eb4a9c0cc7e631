"""DetectionDataset: labels, boxes, crowd handling and augmentations that move boxes with pixels."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from smnas.data.dataset import DetectionDataset
from smnas.errors import DataFormatError


def _coco(tmp_path):
    img = torch.zeros(40, 60, 3, dtype=torch.uint8)
    img[10:20, 5:15] = 255  # a white square at x 5..15, y 10..20
    Image.fromarray(img.numpy()).save(tmp_path / "a.png")
    return {
        "images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 40}],
        "categories": [{"id": 3, "name": "square"}, {"id": 9, "name": "ring"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "bbox": [5, 10, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [30, 0, 5, 5], "iscrowd": 1},
        ],
    }


def test_item_labels_are_contiguous_and_crowd_is_left_out(tmp_path):
    ds = DetectionDataset(_coco(tmp_path), tmp_path)
    image, target = ds[0]
    assert image.shape == (3, 40, 60) and image.max() == 1.0
    assert target["boxes"].tolist() == [[5.0, 10.0, 15.0, 20.0]]
    assert target["labels"].tolist() == [2] and ds.category_id(2) == 9 and ds.num_classes == 2
    assert target["image_id"] == 7


def test_flip_moves_boxes_with_pixels(tmp_path):
    ds = DetectionDataset(_coco(tmp_path), tmp_path, hflip_prob=1.0)
    image, target = ds[0]
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0].tolist())
    assert (x1, x2) == (45, 55)
    assert image[:, y1:y2, x1:x2].min() == 1.0 and image.sum() == 3 * 100


def test_scale_jitter_scales_boxes_and_image_together(tmp_path):
    torch.manual_seed(0)
    ds = DetectionDataset(_coco(tmp_path), tmp_path, scale_jitter=(2.0, 2.0))
    image, target = ds[0]
    assert image.shape == (3, 80, 120)
    assert target["boxes"].tolist() == [[10.0, 20.0, 30.0, 40.0]]
    assert image[:, 22:38, 12:28].min() > 0.99


def test_missing_image_names_file_and_id(tmp_path):
    coco = _coco(tmp_path)
    (tmp_path / "a.png").unlink()
    with pytest.raises(DataFormatError, match="a.png: cannot read image of image id 7"):
        DetectionDataset(coco, tmp_path)[0]
