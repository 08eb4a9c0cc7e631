"""Detection metrics: official COCO evaluation (pycocotools) and Pascal VOC mAP@0.5.

Ground truth is a COCO instances dict (or its JSON file, see :mod:`smnas.data.coco`); detections
are COCO result dicts ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h],
"score": float}`` (a list, or a JSON file holding one). All metrics are fractions in [0, 1];
``-1.0`` means "undefined" (no ground truth of that kind), as pycocotools reports it.

Usage::

    stats = coco_evaluate("instances_val2017.json", "results/dets.json")   # stats["AP"], ...
    voc = voc_map50(voc_gt, dets)                                          # voc["mAP50"], ...
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from smnas.data.coco import describe_ids, load_coco, validate_coco
from smnas.errors import DataFormatError
from smnas.io import atomic_write_json, read_json

# Names of COCOeval.stats entries, in its order.
COCO_STAT_KEYS: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)

GtLike = dict[str, Any] | str | os.PathLike
DetsLike = list[dict[str, Any]] | str | os.PathLike


def coco_evaluate(gt: GtLike, dets: DetsLike, quiet: bool = True) -> dict[str, float]:
    """Official COCO box evaluation (pycocotools ``COCOeval``, iouType "bbox").

    Args:
        gt: COCO instances dict or JSON path (validated; image files are not checked).
        dets: detections, a list of COCO result dicts or a JSON path to one. Every ``image_id``
            and ``category_id`` must exist in ``gt``. An empty list is evaluated as "nothing
            detected": AP and AR are 0.0 wherever ``gt`` has objects (pycocotools' ``loadRes``
            cannot take an empty list, so the empty result set is built directly).
        quiet: suppress pycocotools' printing.

    Returns:
        ``{key: float}`` for :data:`COCO_STAT_KEYS` (AP, AP50, AP75, APs, APm, APl, AR1, AR10,
        AR100, ARs, ARm, ARl), exactly ``COCOeval.stats``; -1.0 where undefined (e.g. APs when
        ``gt`` has no small objects).
    """
    gt_dict, _ = _load_gt(gt)
    det_list, det_source = load_detections(dets)
    check_detections(det_list, gt_dict, det_source)
    with _silenced(quiet):
        coco_gt = _coco_api(gt_dict)
        if det_list:
            # loadRes writes area/id/iscrowd/segmentation into the dicts: give it copies.
            coco_dt = coco_gt.loadRes([dict(d) for d in det_list])
        else:
            coco_dt = _coco_api({
                "images": gt_dict["images"],
                "categories": gt_dict["categories"],
                "annotations": [],
            })
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(COCO_STAT_KEYS, ev.stats)}


def voc_map50(gt: GtLike, dets: DetsLike, use_07_metric: bool = False) -> dict[str, float]:
    """Pascal VOC detection AP at IoU >= 0.5, per class and averaged (the VOC devkit algorithm).

    Per class: detections sorted by score (descending; ties keep input order) are matched
    greedily, each to the ground-truth box of the same image with the highest IoU. IoU >= 0.5
    with a difficult box (``iscrowd`` or ``difficult`` 1): neither TP nor FP; with a box not yet
    matched: TP; with a box already matched, or IoU < 0.5: FP. AP is the area under the
    precision envelope over all recall points (VOC2010+), or the 11-point mean at recall
    0, 0.1, ..., 1 when ``use_07_metric``.

    IoU is the plain continuous one on COCO float boxes, not the devkit's +1 pixel-inclusive
    formula: our boxes are already converted to continuous ``[x, y, w, h]`` (VOC's
    ``[xmin - 1, ymin - 1, xmax - xmin + 1, ...]``), on which both agree.

    Args:
        gt: COCO instances dict or JSON path; category names give the result keys.
        dets: detections as in :func:`coco_evaluate`.
        use_07_metric: 11-point interpolated AP (VOC2007 test as published) instead of all-point.

    Returns:
        ``{"mAP50": mean, "AP50/<class name>": AP, ...}`` in category-id order. A class without
        non-difficult ground truth gets -1.0 and is left out of the mean; -1.0 for the mean if
        no class has any.
    """
    gt_dict, _ = _load_gt(gt)
    det_list, det_source = load_detections(dets)
    check_detections(det_list, gt_dict, det_source)
    gts: dict[int, dict[int, list[tuple[list[float], bool]]]] = {}
    for a in gt_dict["annotations"]:
        hard = bool(a.get("iscrowd", 0) or a.get("difficult", 0))
        by_image = gts.setdefault(a["category_id"], {})
        by_image.setdefault(a["image_id"], []).append((a["bbox"], hard))
    dets_of: dict[int, list[dict[str, Any]]] = {}
    for d in det_list:
        dets_of.setdefault(d["category_id"], []).append(d)
    per_class: dict[str, float] = {}
    aps: list[float] = []
    for cat in sorted(gt_dict["categories"], key=lambda c: c["id"]):
        ap = _voc_class_ap(gts.get(cat["id"], {}), dets_of.get(cat["id"], []), use_07_metric)
        per_class[f"AP50/{cat['name']}"] = -1.0 if ap is None else ap
        if ap is not None:
            aps.append(ap)
    return {"mAP50": float(np.mean(aps)) if aps else -1.0, **per_class}


def write_detections(dets: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write detections as a COCO results JSON list, atomically.

    Args:
        dets: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts; numpy or
            torch scalars are converted to plain numbers.
        path: output file.
    """
    rows = []
    for i, d in enumerate(dets):
        try:
            rows.append({
                "image_id": int(d["image_id"]),
                "category_id": int(d["category_id"]),
                "bbox": [float(v) for v in d["bbox"]],
                "score": float(d["score"]),
            })
        except (KeyError, TypeError, ValueError) as e:
            raise DataFormatError(
                f"{path}: detection {i}: expected image_id, category_id, bbox [x, y, w, h] and "
                f"score as numbers ({type(e).__name__}: {e}); got {d!r}"
            ) from None
        if len(rows[-1]["bbox"]) != 4:
            raise DataFormatError(f"{path}: detection {i}: bbox must have 4 numbers, got {d!r}")
    atomic_write_json(path, rows)


def load_detections(dets: DetsLike) -> tuple[list[dict[str, Any]], str]:
    """Return ``(list of detection dicts, name for messages)`` from a list or a JSON path."""
    if isinstance(dets, list):
        return dets, "<detections list>"
    path = Path(dets)
    data = read_json(path, "a detections JSON (a list of COCO results)")
    if not isinstance(data, list):
        raise DataFormatError(
            f"{path}: expected a JSON list of detections, got a {type(data).__name__}"
        )
    return data, str(path)


def check_detections(dets: list[Any], gt: dict[str, Any], source: str) -> None:
    """Raise DataFormatError for the first malformed detection or one unknown to ``gt``.

    Checked: a dict; ``image_id`` and ``category_id`` present in ``gt``; ``bbox`` four finite
    numbers with w >= 0 and h >= 0 (a model may output zero-size boxes); ``score`` finite.
    """
    image_ids = {im["id"] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    for i, d in enumerate(dets):
        where = f"{source}: detection {i}"
        if not isinstance(d, dict):
            raise DataFormatError(f"{where}: expected an object, got {d!r}")
        if d.get("image_id") not in image_ids:
            raise DataFormatError(
                f"{where}: unknown image id {d.get('image_id')!r}; "
                f"ground truth has {len(image_ids)} images (ids {describe_ids(image_ids)})"
            )
        if d.get("category_id") not in cat_ids:
            raise DataFormatError(
                f"{where}: unknown category {d.get('category_id')!r}; "
                f"known: {describe_ids(cat_ids)}"
            )
        box, score = d.get("bbox"), d.get("score")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(map(_finite, box))):
            raise DataFormatError(f"{where}: 'bbox' must be 4 finite numbers, got {box!r}")
        if box[2] < 0 or box[3] < 0:
            raise DataFormatError(f"{where}: bbox {list(box)} has negative width or height")
        if not _finite(score):
            raise DataFormatError(f"{where}: 'score' must be a finite number, got {score!r}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)


def _load_gt(gt: GtLike) -> tuple[dict[str, Any], str]:
    if isinstance(gt, dict):
        # Validation fills missing area/iscrowd: do it on a copy, the caller's dict stays as is.
        return validate_coco(copy.deepcopy(gt), "<ground-truth dict>"), "<ground-truth dict>"
    return load_coco(gt, check_images=False), str(gt)


def _coco_api(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over ``dataset`` without a file round trip."""
    coco = COCO()
    # COCOeval writes an "ignore" key into ground-truth annotations: copy them.
    coco.dataset = {**dataset, "annotations": [dict(a) for a in dataset["annotations"]]}
    coco.createIndex()
    return coco


@contextlib.contextmanager
def _silenced(quiet: bool) -> Iterator[None]:
    if quiet:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    else:
        yield


def _voc_class_ap(
    gts: dict[int, list[tuple[list[float], bool]]],
    dets: list[dict[str, Any]],
    use_07_metric: bool,
) -> float | None:
    """AP of one class; ``gts`` maps image id to ``[(bbox xywh, difficult)]``. None if no gt."""
    boxes = {img: _xyxy(np.array([b for b, _ in g], dtype=np.float64)) for img, g in gts.items()}
    hard = {img: np.array([h for _, h in g], dtype=bool) for img, g in gts.items()}
    npos = int(sum((~h).sum() for h in hard.values()))
    if npos == 0:
        return None
    matched = {img: np.zeros(len(h), dtype=bool) for img, h in hard.items()}
    order = sorted(range(len(dets)), key=lambda k: -float(dets[k]["score"]))  # stable
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, k in enumerate(order):
        img = dets[k]["image_id"]
        if img not in boxes:
            fp[rank] = 1
            continue
        iou = _iou(_xyxy(np.array([dets[k]["bbox"]], dtype=np.float64))[0], boxes[img])
        j = int(np.argmax(iou))
        if iou[j] < 0.5:
            fp[rank] = 1
        elif hard[img][j]:
            pass  # a difficult object: the devkit counts this detection neither way
        elif not matched[img][j]:
            tp[rank], matched[img][j] = 1, True
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _ap_11_point(recall, precision) if use_07_metric else _ap_all_point(recall, precision)


def _xyxy(b: np.ndarray) -> np.ndarray:
    """(N, 4) [x, y, w, h] -> (N, 4) [x1, y1, x2, y2]."""
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) xyxy box with (N, 4) xyxy boxes -> (N,); 0 where the union is empty."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _ap_all_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope (VOC2010+ devkit)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """Mean of the best precision at recall >= t for t = 0, 0.1, ..., 1 (VOC2007 devkit)."""
    total = 0.0
    for t in np.arange(11) / 10.0:  # exact tenths: 3 / 10, not 0.1 * 3 = 0.30000000000000004
        above = precision[recall >= t]
        total += float(above.max()) if above.size else 0.0
    return total / 11.0
