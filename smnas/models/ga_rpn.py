"""Guided-anchoring RPN (Wang et al., "Region Proposal by Guided Anchoring", CVPR 2019).

A drop-in replacement for torchvision's ``RegionProposalNetwork``::

    model = FasterRCNN(backbone, num_classes=81)
    model.rpn = GuidedAnchorRPN(in_channels=backbone.out_channels, strides=(4, 8, 16, 32))

Per feature level, with weights shared across levels (as mmdet's ``GARPNHead``):
3x3 conv + ReLU, then a location branch (where are object centres), a shape branch (one anchor
w/h per position), a feature adaption (the predicted shape drives the offsets of a 3x3
deformable conv) and, on the adapted feature, objectness and box deltas relative to the one
guided anchor per position. Proposals come only from positions whose location probability
reaches ``loc_filter_thr``: this sparsity is what GA-RPN is about. The training targets of the
location and shape branches are computed in :mod:`smnas.models.ga_targets`.

Conventions: position (i, j) of a level with stride s has its centre at ((j + 0.5) s, (i + 0.5) s)
in the transformed (resized, padded) image; positions are flattened row-major, levels
concatenated in the order given (finest first); boxes are [x1, y1, x2, y2] in pixels.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import DeformConv2d, sigmoid_focal_loss
from torchvision.ops import boxes as box_ops

from smnas.models.ga_targets import (
    approx_iou,
    approx_shapes,
    bounded_iou_shape_loss,
    location_targets,
    position_centres,
)

# exp(dw) is clamped like torchvision's BoxCoder so that an untrained net cannot overflow.
SHAPE_CLAMP = math.log(1000.0 / 16)


class LevelPredictions(NamedTuple):
    """Raw head outputs for one level, for a batch of N images on an H x W grid."""

    loc_logits: Tensor  # (N, 1, H, W): logit that an object centre lies at the position
    shape_pred: Tensor  # (N, 2, H, W): (dw, dh), anchor w = base * stride * exp(dw)
    objectness: Tensor  # (N, 1, H, W): objectness logit of the guided anchor
    deltas: Tensor  # (N, 4, H, W): (dx, dy, dw, dh) of the proposal w.r.t. the guided anchor


def _flat(t: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, H * W, C), row-major positions."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])


def _check_settings(strides: Sequence[int], center_ratio: float, ignore_ratio: float, **top_n: dict) -> None:
    """Raise ValueError naming the bad constructor argument."""
    if not strides or any(int(s) != s or s <= 0 for s in strides):
        raise ValueError(f"GuidedAnchorRPN: strides must be positive integers, got {tuple(strides)}")
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"GuidedAnchorRPN: strides must double level to level (FPN), got {tuple(strides)}")
    if not 0 < center_ratio <= ignore_ratio <= 1:
        raise ValueError(
            f"GuidedAnchorRPN: need 0 < center_ratio <= ignore_ratio <= 1, "
            f"got center_ratio={center_ratio}, ignore_ratio={ignore_ratio}"
        )
    for name, value in top_n.items():
        if set(value) != {"training", "testing"}:
            raise ValueError(
                f"GuidedAnchorRPN: {name} needs keys 'training' and 'testing', got {sorted(value)}"
            )


class GuidedAnchorRPN(nn.Module):
    """Guided-anchoring region proposal network, called like torchvision's RPN.

    Args:
        in_channels: channels of every feature map.
        strides: stride of each feature level, finest first, e.g. (8,) or (4, 8, 16, 32).
        octave_base_scale: anchor scale = octave_base_scale * stride before the shape branch.
        loc_filter_thr: proposals only from positions with location probability >= this.
        center_ratio, ignore_ratio: sizes of the centre and ignore regions (paper's sigma1/2).
        fg_iou_thresh, bg_iou_thresh: IoU thresholds for positives / negatives, used both for
            the shape target (vIoU) and for objectness on the guided anchors.
        batch_size_per_image, positive_fraction: sampling for the shape and objectness losses.
        pre_nms_top_n: proposals kept per level before NMS, keys "training" and "testing".
        post_nms_top_n: proposals kept per image after NMS, keys "training" and "testing".
        nms_thresh: NMS IoU threshold (NMS runs per level).
        score_thresh: minimum objectness probability of a proposal.
        min_kept_per_level: when fewer positions pass loc_filter_thr on a level, this many
            most likely ones are kept, so that an untrained net still proposes.
    """

    def __init__(
        self,
        in_channels: int,
        strides: Sequence[int],
        octave_base_scale: float = 8.0,
        loc_filter_thr: float = 0.01,
        center_ratio: float = 0.2,
        ignore_ratio: float = 0.5,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: Optional[dict[str, int]] = None,
        post_nms_top_n: Optional[dict[str, int]] = None,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_kept_per_level: int = 16,
    ) -> None:
        super().__init__()
        # None stands for torchvision's defaults (a dict default would be shared between instances).
        if pre_nms_top_n is None:
            pre_nms_top_n = {"training": 2000, "testing": 1000}
        if post_nms_top_n is None:
            post_nms_top_n = {"training": 2000, "testing": 1000}
        if in_channels <= 0 or not 0.0 <= loc_filter_thr <= 1.0:
            raise ValueError(
                f"GuidedAnchorRPN: need in_channels > 0 and 0 <= loc_filter_thr <= 1, "
                f"got in_channels={in_channels}, loc_filter_thr={loc_filter_thr}"
            )
        _check_settings(
            strides, center_ratio, ignore_ratio, pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n
        )
        self.in_channels = in_channels
        self.strides = tuple(int(s) for s in strides)
        self.octave_base_scale = octave_base_scale
        self.loc_filter_thr = loc_filter_thr
        self.center_ratio = center_ratio
        self.ignore_ratio = ignore_ratio
        self._pre_nms_top_n = dict(pre_nms_top_n)
        self._post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_kept_per_level = min_kept_per_level
        self.min_size = 1e-3
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction
        )
        self._build_layers(in_channels)

    def _build_layers(self, channels: int) -> None:
        """Layers and mmdet GARPNHead's initialisation."""
        self.rpn_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_loc = nn.Conv2d(channels, 1, 1)
        self.conv_shape = nn.Conv2d(channels, 2, 1)
        # Offsets for one deformable group: (dy, dx) for each of the 3x3 taps.
        self.conv_offset = nn.Conv2d(2, 2 * 3 * 3, 1, bias=False)
        self.conv_adaption = DeformConv2d(channels, channels, 3, padding=1)
        self.conv_cls = nn.Conv2d(channels, 1, 1)
        self.conv_reg = nn.Conv2d(channels, 4, 1)
        layers = (self.rpn_conv, self.conv_loc, self.conv_shape, self.conv_adaption, self.conv_cls, self.conv_reg)
        for layer in layers:
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.conv_offset.weight, std=0.1)
        # Prior probability 0.01 of a centre, as RetinaNet/GA do, so the focal loss starts small.
        nn.init.constant_(self.conv_loc.bias, -math.log(99.0))

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def adapt_feature(self, feature: Tensor, shape_pred: Tensor) -> Tensor:
        """Feature adaption: offsets of the 3x3 deformable conv come from the predicted shape.

        Args:
            feature: FloatTensor[N, C, H, W], the RPN-conv output.
            shape_pred: FloatTensor[N, 2, H, W]; detached, as in GA, so that only the shape
                loss trains the shape branch.

        Returns:
            FloatTensor[N, C, H, W]: ReLU(DeformConv2d(feature, offsets)).
        """
        offset = self.conv_offset(shape_pred.detach())
        return F.relu(self.conv_adaption(feature, offset))

    def predict_level(self, feature: Tensor) -> LevelPredictions:
        """Run the head on one level. feature: FloatTensor[N, C, H, W]."""
        x = F.relu(self.rpn_conv(feature))
        shape_pred = self.conv_shape(x)
        adapted = self.adapt_feature(x, shape_pred)
        return LevelPredictions(self.conv_loc(x), shape_pred, self.conv_cls(adapted), self.conv_reg(adapted))

    def anchor_wh(self, shape_pred: Tensor, stride: int) -> Tensor:
        """Guided anchor (w, h): octave_base_scale * stride * exp(clamped (dw, dh)).

        Args:
            shape_pred: FloatTensor[N, 2, H, W].
            stride: the level's stride.

        Returns:
            FloatTensor[N, 2, H, W]: anchor width and height in pixels.
        """
        return self.octave_base_scale * stride * torch.exp(shape_pred.clamp(-SHAPE_CLAMP, SHAPE_CLAMP))

    def guided_anchors(self, shape_pred: Tensor, stride: int) -> Tensor:
        """Guided anchors of one level: FloatTensor[N, H * W, 4], x1y1x2y2, centred on positions."""
        _, _, height, width = shape_pred.shape
        wh = _flat(self.anchor_wh(shape_pred, stride))  # (N, HW, 2)
        centres = position_centres(height, width, stride, shape_pred.device).to(wh.dtype)
        return torch.cat((centres - wh / 2, centres + wh / 2), dim=2)

    def _check_features(self, images: ImageList, features: dict[str, Tensor]) -> list[Tensor]:
        """The feature maps as a list, after checking count, channels and strides."""
        maps = list(features.values())
        if len(maps) != len(self.strides):
            raise ValueError(
                f"GuidedAnchorRPN: got {len(maps)} feature maps {list(features)} but strides {self.strides}"
            )
        image_hw = images.tensors.shape[-2:]
        for name, fmap, stride in zip(features, maps, self.strides):
            if fmap.shape[1] != self.in_channels:
                raise ValueError(
                    f"GuidedAnchorRPN: feature '{name}' has {fmap.shape[1]} channels, "
                    f"expected {self.in_channels}"
                )
            if any(abs(f * stride - i) >= stride for f, i in zip(fmap.shape[-2:], image_hw)):
                raise ValueError(
                    f"GuidedAnchorRPN: feature '{name}' of size {tuple(fmap.shape[-2:])} does not have "
                    f"stride {stride} on images of size {tuple(image_hw)}"
                )
        return maps

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: Optional[list[dict[str, Tensor]]] = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Propose boxes, and in training compute the four GA-RPN losses.

        Args:
            images: the transformed batch; image_sizes gives each image's (H, W) for clipping.
            features: one FloatTensor[N, C, H_l, W_l] per level, finest first.
            targets: in training, per image a dict with "boxes": FloatTensor[K, 4], x1y1x2y2.

        Returns:
            boxes: per image FloatTensor[M, 4], x1y1x2y2 proposals in transformed-image pixels.
            losses: loss_anchor_loc, loss_anchor_shape, loss_objectness, loss_rpn_box_reg in
                training; empty in eval.
        """
        maps = self._check_features(images, features)
        preds = [self.predict_level(fmap) for fmap in maps]
        anchors = [self.guided_anchors(p.shape_pred.detach(), s) for p, s in zip(preds, self.strides)]
        boxes = self.filter_proposals(preds, anchors, images.image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None or any("boxes" not in t for t in targets):
                raise ValueError("GuidedAnchorRPN: training needs targets, each with a 'boxes' entry")
            losses = self.compute_losses(preds, anchors, [t["boxes"] for t in targets])
        return boxes, losses

    # Proposals ----------------------------------------------------------------------------------

    def _select_positions(self, loc_logits: Tensor, objectness: Tensor) -> Tensor:
        """Indices (LongTensor[k]) of the positions of one level and image that may propose.

        Positions with location probability >= loc_filter_thr (at least min_kept_per_level of
        the most likely ones), then the pre_nms_top_n of those with the highest objectness.
        loc_logits, objectness: FloatTensor[H * W].
        """
        prob = torch.sigmoid(loc_logits)
        keep = torch.where(prob >= self.loc_filter_thr)[0]
        if keep.numel() < self.min_kept_per_level:
            keep = prob.topk(min(self.min_kept_per_level, prob.numel())).indices
        top = objectness[keep].topk(min(self.pre_nms_top_n(), keep.numel())).indices
        return keep[top]

    def _image_candidates(
        self, preds: list[LevelPredictions], anchors: list[Tensor], b: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decoded candidates of image b: boxes FloatTensor[M, 4], scores logits[M], levels[M]."""
        boxes, scores, levels = [], [], []
        for level, (pred, level_anchors) in enumerate(zip(preds, anchors)):
            objectness = pred.objectness[b].flatten().detach()
            keep = self._select_positions(pred.loc_logits[b].flatten().detach(), objectness)
            deltas = _flat(pred.deltas[b : b + 1].detach())[0, keep]
            boxes.append(self.box_coder.decode_single(deltas, level_anchors[b, keep]))
            scores.append(objectness[keep])
            levels.append(torch.full_like(keep, level))
        return torch.cat(boxes), torch.cat(scores), torch.cat(levels)

    def filter_proposals(
        self, preds: list[LevelPredictions], anchors: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Location filter, per-level top-n, clip, remove small, NMS per level, post-NMS top-n.

        Args:
            preds: per-level head outputs.
            anchors: per level FloatTensor[N, H * W, 4], the guided anchors.
            image_sizes: (H, W) per image, for clipping.

        Returns:
            Per image FloatTensor[M, 4] proposals, x1y1x2y2, sorted by objectness.
        """
        proposals = []
        for b, image_size in enumerate(image_sizes):
            boxes, logits, levels = self._image_candidates(preds, anchors, b)
            boxes = box_ops.clip_boxes_to_image(boxes, image_size)
            scores = torch.sigmoid(logits)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            keep = keep[scores[keep] >= self.score_thresh]
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = box_ops.batched_nms(boxes, scores, levels, self.nms_thresh)[: self.post_nms_top_n()]
            proposals.append(boxes[keep])
        return proposals

    # Losses -------------------------------------------------------------------------------------

    def compute_losses(
        self, preds: list[LevelPredictions], anchors: list[Tensor], gt_boxes: list[Tensor]
    ) -> dict[str, Tensor]:
        """The four GA-RPN losses for a batch.

        Args:
            preds: per-level head outputs for N images.
            anchors: per level FloatTensor[N, H * W, 4], guided anchors (detached).
            gt_boxes: per image FloatTensor[K, 4], x1y1x2y2.

        Returns:
            loss_anchor_loc (focal), loss_anchor_shape (bounded IoU), loss_objectness (BCE),
            loss_rpn_box_reg (smooth L1), each a scalar.
        """
        sizes = [tuple(p.loc_logits.shape[-2:]) for p in preds]
        loc_logits = torch.cat([_flat(p.loc_logits) for p in preds], dim=1)[..., 0]  # (N, P)
        pred_wh = torch.cat([_flat(self.anchor_wh(p.shape_pred, s)) for p, s in zip(preds, self.strides)], 1)
        objectness = torch.cat([_flat(p.objectness) for p in preds], dim=1)[..., 0]  # (N, P)
        deltas = torch.cat([_flat(p.deltas) for p in preds], dim=1)  # (N, P, 4)
        loss_objectness, loss_box = self._rpn_loss(objectness, deltas, torch.cat(anchors, dim=1), gt_boxes)
        return {
            "loss_anchor_loc": self._loc_loss(loc_logits, gt_boxes, sizes),
            "loss_anchor_shape": self._shape_loss(pred_wh, gt_boxes, sizes),
            "loss_objectness": loss_objectness,
            "loss_rpn_box_reg": loss_box,
        }

    def _loc_loss(self, loc_logits: Tensor, gt_boxes: list[Tensor], sizes: list[tuple[int, int]]) -> Tensor:
        """Sigmoid focal loss over non-ignored positions / number of positives. logits (N, P)."""
        settings = (self.strides, self.octave_base_scale, self.center_ratio, self.ignore_ratio)
        labels = torch.stack([
            torch.cat([t.flatten() for t in location_targets(gt, sizes, *settings)]) for gt in gt_boxes
        ]).to(loc_logits.dtype)
        valid = labels >= 0
        num_pos = (labels == 1).sum().clamp(min=1)
        loss = sigmoid_focal_loss(loc_logits[valid], labels[valid], alpha=0.25, gamma=2.0, reduction="sum")
        return loss / num_pos

    def _match(self, quality: Tensor, num_positions: int) -> tuple[Tensor, Tensor]:
        """Matcher on a (G, P) quality matrix: labels FloatTensor[P] (1/0/-1), gt index LongTensor[P]."""
        if quality.shape[0] == 0:
            zeros = torch.zeros(num_positions, device=quality.device)
            return zeros, zeros.long()
        matched = self.matcher(quality)
        labels = (matched >= 0).float()
        labels[matched == self.matcher.BETWEEN_THRESHOLDS] = -1.0
        return labels, matched.clamp(min=0)

    def _shape_loss(self, pred_wh: Tensor, gt_boxes: list[Tensor], sizes: list[tuple[int, int]]) -> Tensor:
        """Bounded-IoU shape loss on sampled positions whose vIoU marks them positive.

        pred_wh: FloatTensor[N, P, 2], predicted anchor (w, h) with gradient.
        """
        device = pred_wh.device
        levels = list(zip(sizes, self.strides))
        centres = torch.cat([position_centres(h, w, s, device) for (h, w), s in levels])
        approx = torch.cat(
            [approx_shapes(self.octave_base_scale * s, device).expand(h * w, -1, -1) for (h, w), s in levels]
        )
        labels, gt_wh = [], []
        for gt in gt_boxes:
            image_labels, matched = self._match(approx_iou(gt, centres, approx), centres.shape[0])
            labels.append(image_labels)
            wh = gt[:, 2:] - gt[:, :2]
            gt_wh.append(wh[matched] if gt.numel() else torch.ones_like(centres))
        positive = torch.cat(self.fg_bg_sampler(labels)[0]).bool()
        loss = bounded_iou_shape_loss(pred_wh.reshape(-1, 2)[positive], torch.cat(gt_wh)[positive])
        # The zero term keeps the graph connected when no position is positive.
        return loss.sum() / positive.sum().clamp(min=1) + 0.0 * pred_wh.sum()

    def _rpn_loss(
        self, objectness: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """torchvision-RPN losses on the guided anchors.

        objectness (N, P) logits, deltas (N, P, 4), anchors (N, P, 4) detached.
        Returns (BCE on sampled positions, smooth-L1 on sampled positives / number sampled).
        """
        labels, regression_targets = [], []
        for image_anchors, gt in zip(anchors, gt_boxes):
            image_labels, matched = self._match(box_ops.box_iou(gt, image_anchors), image_anchors.shape[0])
            labels.append(image_labels)
            matched_boxes = gt[matched] if gt.numel() else image_anchors
            regression_targets.append(self.box_coder.encode_single(matched_boxes, image_anchors))
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(pos_masks))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(neg_masks))[0]])
        box_loss = F.smooth_l1_loss(
            deltas.reshape(-1, 4)[positive], torch.cat(regression_targets)[positive],
            beta=1 / 9, reduction="sum",
        ) / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels)[sampled]
        )
        return objectness_loss, box_loss
