"""Training targets of the guided-anchoring RPN (Wang et al., "Region Proposal by Guided
Anchoring", CVPR 2019), used by :class:`smnas.models.ga_rpn.GuidedAnchorRPN`.

- Location branch: :func:`location_targets` labels each position positive, negative or ignored
  from the gt boxes' centre and ignore regions, at the level :func:`assign_levels` picks for a
  box by its scale (paper Sec. 3.3).
- Shape branch: :func:`approx_iou` is the paper's vIoU, a gt's best IoU with the 9 sampled shapes
  (:func:`approx_shapes`) at a position, which decides the positions whose shape is trained;
  :func:`bounded_iou_shape_loss` is the shape loss (Eq. 5) against the matched gt's (w, h).

Conventions (as in ``ga_rpn``): position (i, j) of a level with stride s has its centre at
((j + 0.5) s, (i + 0.5) s) in the transformed image; positions are flattened row-major; boxes are
[x1, y1, x2, y2] in pixels.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import boxes as box_ops

# Approximate anchors for the shape target (mmdet's approx_anchor_generator): 3 scales per octave
# x 3 aspect ratios around the base scale, the paper's 9 sampled (w, h) pairs.
APPROX_SCALES = (1.0, 2.0 ** (1 / 3), 2.0 ** (2 / 3))
APPROX_RATIOS = (0.5, 1.0, 2.0)  # h / w


def position_centres(height: int, width: int, stride: int, device: torch.device | None = None) -> Tensor:
    """Image-pixel centres of the positions of an H x W grid.

    Returns:
        FloatTensor[H * W, 2]: (x, y) = ((j + 0.5) * stride, (i + 0.5) * stride), row-major.
    """
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) * stride
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) * stride
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), dim=1)


def scale_boxes(boxes: Tensor, ratio: float) -> Tensor:
    """Boxes FloatTensor[K, 4] (x1y1x2y2) shrunk/grown by ``ratio`` around their centres."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (ratio / 2)
    return torch.cat((centre - half, centre + half), dim=1)


def assign_levels(gt_boxes: Tensor, base_size: float, num_levels: int) -> Tensor:
    """Feature level of each gt box by its scale, as GA (mmdet ``ga_loc_target``) does.

    level = floor(log2(sqrt(w * h) / base_size) + 0.5), clamped to [0, num_levels - 1], with
    base_size = octave_base_scale * stride of level 0: a box goes to the level whose anchor
    scale (base * stride, doubling per level) is nearest in log scale.

    Args:
        gt_boxes: FloatTensor[K, 4], x1y1x2y2.
        base_size: anchor scale of level 0 in pixels.
        num_levels: number of feature levels.

    Returns:
        LongTensor[K]: level index per box.
    """
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)
    scale = torch.sqrt(wh[:, 0] * wh[:, 1])
    level = torch.floor(torch.log2(scale / base_size) + 0.5)
    return level.clamp(0, num_levels - 1).long()


def _points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """BoolTensor[P]: point (x, y) lies inside (borders included) any of boxes[K, 4]."""
    if boxes.numel() == 0:
        return torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    x, y = points[:, None, 0], points[:, None, 1]
    inside = (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])
    return inside.any(dim=1)


def _centre_cells(boxes: Tensor, height: int, width: int, stride: int) -> Tensor:
    """BoolTensor[H * W]: the grid cells holding the centres of boxes[K, 4]."""
    mask = torch.zeros(height * width, dtype=torch.bool, device=boxes.device)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    j = torch.floor(centre[:, 0] / stride).long().clamp(0, width - 1)
    i = torch.floor(centre[:, 1] / stride).long().clamp(0, height - 1)
    mask[i * width + j] = True
    return mask


def location_targets(
    gt_boxes: Tensor,
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    octave_base_scale: float,
    center_ratio: float,
    ignore_ratio: float,
) -> list[Tensor]:
    """Targets of the location branch for one image (paper Sec. 3.3, mmdet ``ga_loc_target``).

    Each gt goes to one level (``assign_levels``). At that level a position is positive when its
    centre lies in the centre region (the gt scaled by ``center_ratio`` around its centre); the
    cell holding the gt centre is always positive so that a small gt still has one. Positions in
    the ignore region (gt scaled by ``ignore_ratio``) that are not positive are ignored, at the
    gt's level and at the two adjacent levels. All other positions are negative.

    Args:
        gt_boxes: FloatTensor[K, 4], x1y1x2y2 in image pixels (K may be 0).
        featmap_sizes: (H, W) per level.
        strides: stride per level, doubling from one level to the next.
        octave_base_scale: anchor scale = octave_base_scale * stride.
        center_ratio, ignore_ratio: the paper's sigma1 and sigma2.

    Returns:
        One FloatTensor[H_l, W_l] per level: 1 positive, 0 negative, -1 ignored.
    """
    levels = assign_levels(gt_boxes, octave_base_scale * strides[0], len(strides))
    centre_regions = scale_boxes(gt_boxes, center_ratio)
    ignore_regions = scale_boxes(gt_boxes, ignore_ratio)
    targets = []
    for level, ((height, width), stride) in enumerate(zip(featmap_sizes, strides)):
        points = position_centres(height, width, stride, gt_boxes.device)
        own = levels == level
        positive = _points_in_boxes(points, centre_regions[own])
        positive |= _centre_cells(gt_boxes[own], height, width, stride)
        ignored = _points_in_boxes(points, ignore_regions[(levels - level).abs() <= 1])
        labels = torch.zeros(height * width, device=gt_boxes.device)
        labels[ignored] = -1.0
        labels[positive] = 1.0
        targets.append(labels.view(height, width))
    return targets


def approx_iou(gt_boxes: Tensor, centres: Tensor, approx_wh: Tensor) -> Tensor:
    """The paper's vIoU: best IoU of a gt with any of the sampled shapes at each position.

    Args:
        gt_boxes: FloatTensor[G, 4], x1y1x2y2.
        centres: FloatTensor[P, 2], (x, y) of the positions.
        approx_wh: FloatTensor[P, S, 2], the S sampled (w, h) at each position.

    Returns:
        FloatTensor[G, P]: max over the S shapes of IoU(gt, box of that shape at the position).
    """
    best = gt_boxes.new_zeros(gt_boxes.shape[0], centres.shape[0])
    # One shape at a time: a (G, P * S) IoU matrix would be 9x the memory on large images.
    for shape in range(approx_wh.shape[1]):
        half = approx_wh[:, shape] / 2
        boxes = torch.cat((centres - half, centres + half), dim=1)
        best = torch.maximum(best, box_ops.box_iou(gt_boxes, boxes))
    return best


def approx_shapes(size: float, device: torch.device | None = None) -> Tensor:
    """The sampled (w, h) pairs of a level whose anchor scale is ``size`` pixels.

    Args:
        size: octave_base_scale * stride of the level.
        device: where to put the result.

    Returns:
        FloatTensor[1, 9, 2]: (w, h) for each of APPROX_SCALES x APPROX_RATIOS, scale-major.
    """
    # torchvision's AnchorGenerator convention: ratio = h / w at constant area.
    wh = [(size * s / math.sqrt(r), size * s * math.sqrt(r)) for s in APPROX_SCALES for r in APPROX_RATIOS]
    return torch.tensor(wh, device=device)[None]


def bounded_iou_shape_loss(pred_wh: Tensor, gt_wh: Tensor, beta: float = 0.2) -> Tensor:
    """The paper's shape loss (Eq. 5): smooth-L1 of the bounded-IoU terms for w and h.

    L = smoothL1(1 - min(w / w_g, w_g / w)) + smoothL1(1 - min(h / h_g, h_g / h)); the
    centre terms of the bounded IoU loss are dropped because the anchor centre is not learned.

    Args:
        pred_wh: FloatTensor[K, 2], predicted anchor (w, h), > 0.
        gt_wh: FloatTensor[K, 2], matched gt (w, h), > 0.
        beta: smooth-L1 transition point (mmdet's BoundedIoULoss default).

    Returns:
        FloatTensor[K]: the loss per anchor.
    """
    eps = 1e-6
    ratio = torch.minimum(pred_wh / (gt_wh + eps), gt_wh / (pred_wh + eps))
    loss = F.smooth_l1_loss(1 - ratio, torch.zeros_like(ratio), beta=beta, reduction="none")
    return loss.sum(dim=1)
