"""Run a detector over a dataset and produce COCO result dicts for evaluation."""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from smnas.data.dataset import DetectionDataset, collate
from smnas.engine.device_lock import DeviceLock


@torch.inference_mode()
def predict(
    model: nn.Module,
    dataset: DetectionDataset,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    progress: bool | None = None,
    lock: DeviceLock | None = None,
) -> list[dict[str, Any]]:
    """Detections of ``model`` on every image of ``dataset``.

    ``lock``, if given, is held shared for each batch (see DeviceLock).

    Returns:
        COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in the
        original image's pixels, category ids mapped back from contiguous labels.
    """
    device = torch.device(device)
    model.to(device).eval()
    progress = sys.stderr.isatty() if progress is None else progress
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    results: list[dict[str, Any]] = []
    bar = tqdm(loader, desc="predict", disable=not progress, leave=False)
    for images, targets in (lock.steps(bar) if lock is not None else bar):
        outputs = model([im.to(device) for im in images])
        for out, target in zip(outputs, targets):
            boxes = out["boxes"].cpu()  # (N, 4) x1y1x2y2
            wh = boxes[:, 2:] - boxes[:, :2]
            for box, size, label, score in zip(boxes.tolist(), wh.tolist(), out["labels"].tolist(), out["scores"].tolist()):
                results.append({
                    "image_id": int(target["image_id"]),
                    "category_id": dataset.category_id(int(label)),
                    "bbox": [round(box[0], 2), round(box[1], 2), round(size[0], 2), round(size[1], 2)],
                    "score": round(float(score), 5),
                })
    return results
