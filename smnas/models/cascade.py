"""Cascade R-CNN box heads (Cai & Vasconcelos, CVPR 2018), a drop-in for torchvision's RoIHeads.

Usage::

    model = torchvision.models.detection.FasterRCNN(backbone, num_classes=81)
    model.roi_heads = cascade_roi_heads(3, in_channels=256, featmap_names=["0", "1", "2", "3"],
                                        num_classes=81)

Choices where detectron2 and mmdetection differ, or torchvision has no precedent:
- Class-agnostic regression: each stage's predictor returns ``(class_logits[R, num_classes],
  box_deltas[R, 4])`` (``CascadeBoxPredictor``), as in both references' cascade configs; a
  predictor with ``num_classes * 4`` deltas is rejected with a ValueError.
- Training: stage 1 samples the RPN proposals plus the ground truth, as torchvision does. Stage
  k > 1 takes stage k-1's sampled boxes decoded with stage k-1's deltas, detached (like RPN
  proposals, no gradient flows through box coordinates), clipped to the image, empty ones
  dropped; the ground truth is appended again, then matched at stage k's IoU threshold and
  subsampled (mmdetection's scheme).
- Loss scaling: stage losses are reported unscaled as ``loss_classifier_stage{k}`` and
  ``loss_box_reg_stage{k}``; the gradient from each stage's box head into the pooled features is
  multiplied by 1/num_stages (detectron2's ``_ScaleGradient``). The backbone sees the mean of the
  stages' gradients, each head its full gradient: the original's averaged stage losses with the
  heads' learning rate scaled up by num_stages.
- Inference: stage k classifies its own input boxes (stage k-1's output); the class scores are
  the mean of the stages' softmax scores, the boxes the last stage's regression (detectron2 and
  mmdetection), then torchvision's postprocess: per-class score threshold, small boxes removed,
  per-class NMS, top-k.

The per-stage pieces (default thresholds and box-coder weights, ``CascadeBoxPredictor``, the stage
loss) are in :mod:`smnas.models.cascade_stage`; this module holds the cascade loop and its factory.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from smnas.errors import SpecError
from smnas.models.cascade_stage import (
    STAGE_BBOX_REG_WEIGHTS,
    STAGE_IOU_THRESHOLDS,
    BoxWeights,
    CascadeBoxPredictor,
    ScaleGradient,
    StageOutput,
    cascade_stage_loss,
)

_MIN_BOX_SIZE = 1e-2  # torchvision's threshold for an empty box


class CascadeRoIHeads(nn.Module):
    """Cascade of box heads with rising IoU thresholds; same interface as torchvision's RoIHeads.

    Args:
        box_roi_pool: pools features for boxes, e.g. ``MultiScaleRoIAlign``; shared by the stages.
        box_heads: one module per stage, pooled features -> Tensor[R, representation].
        box_predictors: one module per stage, representation -> (logits[R, C], deltas[R, 4]).
        stage_iou_thresholds: per stage, the IoU with a ground-truth box at or above which a box
            is foreground (below: background).
        stage_bbox_reg_weights: per stage, the (wx, wy, ww, wh) weights of the BoxCoder.
        batch_size_per_image: boxes sampled per image and stage for the losses.
        positive_fraction: largest share of foreground boxes in a sample.
        score_thresh: detections scoring at or below this are dropped at inference.
        nms_thresh: per-class NMS IoU threshold at inference.
        detections_per_img: detections kept per image at inference.

    Raises:
        ValueError: the per-stage sequences are empty or differ in length.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        stage_iou_thresholds: Sequence[float] = STAGE_IOU_THRESHOLDS[3],
        stage_bbox_reg_weights: Sequence[BoxWeights] = STAGE_BBOX_REG_WEIGHTS[:3],
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        lengths = {
            "box_heads": len(box_heads),
            "box_predictors": len(box_predictors),
            "stage_iou_thresholds": len(stage_iou_thresholds),
            "stage_bbox_reg_weights": len(stage_bbox_reg_weights),
        }
        if len(set(lengths.values())) != 1 or lengths["box_heads"] == 0:
            raise ValueError(
                f"CascadeRoIHeads: per-stage lists must be non-empty and of one length, got {lengths}"
            )
        self.box_roi_pool = box_roi_pool
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.stage_iou_thresholds = tuple(float(t) for t in stage_iou_thresholds)
        self.box_coders = [det_utils.BoxCoder(tuple(w)) for w in stage_bbox_reg_weights]
        # One threshold per stage, no "ignore" band (detectron2's cascade labels [0, 1]).
        self.proposal_matchers = [
            det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in self.stage_iou_thresholds
        ]
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Args:
            features: feature maps by name, each Tensor[N, C, H_l, W_l].
            proposals: per image Tensor[P_i, 4] in x1y1x2y2 image coordinates.
            image_shapes: per image (height, width) after the transform's resize.
            targets: training only; per image "boxes" FloatTensor[G_i, 4] x1y1x2y2 and
                "labels" Int64Tensor[G_i] in 1..num_classes-1.

        Returns:
            (detections, losses). Training: ([], {"loss_classifier_stage{k}",
            "loss_box_reg_stage{k}"} for k = 1..num_stages). Inference: (per image {"boxes":
            FloatTensor[D, 4] x1y1x2y2, "labels": Int64Tensor[D], "scores": FloatTensor[D]}, {}).
        """
        if self.training:
            _check_targets(targets)
        outputs = self._run_cascade(features, proposals, image_shapes, targets)
        if self.training:
            return [], self._losses(outputs)
        return self._detections(outputs, image_shapes), {}

    def _run_cascade(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None,
    ) -> list[StageOutput]:
        outputs: list[StageOutput] = []
        boxes = proposals
        for stage in range(self.num_stages):
            if stage > 0:
                boxes = self._refined_boxes(stage - 1, outputs[-1], image_shapes)
            labels = regression_targets = None
            if self.training:
                boxes, labels, regression_targets = self.select_training_samples(stage, boxes, targets)
            class_logits, box_deltas = self._run_stage(stage, features, boxes, image_shapes)
            outputs.append(StageOutput(boxes, class_logits, box_deltas, labels, regression_targets))
        return outputs

    def _refined_boxes(
        self, stage: int, output: StageOutput, image_shapes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Stage ``stage``'s output boxes, the next stage's input: detached, clipped, and in
        training without empty boxes (at inference all are kept so scores stay aligned)."""
        boxes = self.decode_boxes(stage, output.box_deltas.detach(), output.proposals)
        boxes = [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(boxes, image_shapes)]
        if self.training:
            boxes = [b[box_ops.remove_small_boxes(b, _MIN_BOX_SIZE)] for b in boxes]
        return boxes

    def decode_boxes(self, stage: int, box_deltas: Tensor, proposals: list[Tensor]) -> list[Tensor]:
        """Apply class-agnostic deltas with stage ``stage``'s box coder (0-based stage).

        Args:
            stage: 0-based stage index.
            box_deltas: Tensor[sum P_i, 4].
            proposals: per image Tensor[P_i, 4] x1y1x2y2.

        Returns:
            per image Tensor[P_i, 4] x1y1x2y2 (not clipped).
        """
        decoded = self.box_coders[stage].decode_single(box_deltas, torch.cat(proposals, dim=0))
        return list(decoded.split([len(p) for p in proposals], dim=0))

    def _run_stage(
        self, stage: int, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        pooled = self.box_roi_pool(features, boxes, image_shapes)
        if self.training:
            pooled = ScaleGradient.apply(pooled, 1.0 / self.num_stages)
        class_logits, box_deltas = self.box_predictors[stage](self.box_heads[stage](pooled))
        num_boxes = sum(len(b) for b in boxes)
        if box_deltas.shape != (num_boxes, 4) or class_logits.shape[0] != num_boxes:
            raise ValueError(
                f"CascadeRoIHeads: box_predictors[{stage}] must return class_logits[R, num_classes] and "
                f"class-agnostic box_deltas[R, 4] for R={num_boxes} boxes, got {tuple(class_logits.shape)} "
                f"and {tuple(box_deltas.shape)}"
            )
        return class_logits, box_deltas

    def select_training_samples(
        self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Append the ground truth, match at the stage's IoU threshold, subsample.

        Args:
            stage: 0-based stage index (selects the IoU threshold and the box coder).
            proposals: per image Tensor[P_i, 4] x1y1x2y2.
            targets: per image {"boxes": Tensor[G_i, 4], "labels": Int64Tensor[G_i]}.

        Returns:
            per image: sampled boxes Tensor[S_i, 4], their labels Int64Tensor[S_i] (0 =
            background), regression targets Tensor[S_i, 4] encoded with the stage's coder.
        """
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        boxes = [torch.cat((p, g)) for p, g in zip(proposals, gt_boxes)]
        matched, labels = self._match(stage, boxes, gt_boxes, [t["labels"] for t in targets])
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        matched_gt_boxes = []
        for i, (pos, neg) in enumerate(zip(sampled_pos, sampled_neg)):
            keep = torch.where(pos | neg)[0]
            boxes[i], labels[i], matched[i] = boxes[i][keep], labels[i][keep], matched[i][keep]
            gt = gt_boxes[i] if gt_boxes[i].numel() else boxes[i].new_zeros((1, 4))
            matched_gt_boxes.append(gt[matched[i]])
        regression_targets = list(self.box_coders[stage].encode(matched_gt_boxes, boxes))
        return boxes, labels, regression_targets

    def _match(
        self, stage: int, boxes: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: index of the matched gt box (0 when none) and the label (0 = background)."""
        matched_idxs, labels = [], []
        for boxes_i, gt_i, gt_labels_i in zip(boxes, gt_boxes, gt_labels):
            if gt_i.numel() == 0:  # background-only image
                matched_i = torch.zeros(len(boxes_i), dtype=torch.int64, device=boxes_i.device)
                labels_i = torch.zeros_like(matched_i)
            else:
                raw = self.proposal_matchers[stage](box_ops.box_iou(gt_i, boxes_i))
                matched_i = raw.clamp(min=0)
                labels_i = gt_labels_i[matched_i].to(torch.int64)
                labels_i[raw == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0
            matched_idxs.append(matched_i)
            labels.append(labels_i)
        return matched_idxs, labels

    def _losses(self, outputs: list[StageOutput]) -> dict[str, Tensor]:
        losses = {}
        for k, out in enumerate(outputs, start=1):
            assert out.labels is not None and out.regression_targets is not None  # set in training
            cls_loss, box_loss = cascade_stage_loss(
                out.class_logits, out.box_deltas, out.labels, out.regression_targets
            )
            losses[f"loss_classifier_stage{k}"] = cls_loss
            losses[f"loss_box_reg_stage{k}"] = box_loss
        return losses

    def _detections(
        self, outputs: list[StageOutput], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        scores = torch.stack([F.softmax(out.class_logits, dim=-1) for out in outputs]).mean(dim=0)
        last = outputs[-1]
        boxes = self.decode_boxes(self.num_stages - 1, last.box_deltas, last.proposals)
        scores_per_image = scores.split([len(b) for b in boxes], dim=0)
        return [self.postprocess_image(b, s, shape) for b, s, shape in zip(boxes, scores_per_image, image_shapes)]

    def postprocess_image(self, boxes: Tensor, scores: Tensor, image_shape: tuple[int, int]) -> dict[str, Tensor]:
        """torchvision's per-image postprocess for class-agnostic boxes.

        Args:
            boxes: Tensor[R, 4] x1y1x2y2 final boxes.
            scores: Tensor[R, num_classes] class probabilities (column 0 = background).
            image_shape: (height, width) to clip to.

        Returns:
            {"boxes": Tensor[D, 4], "labels": Int64Tensor[D], "scores": Tensor[D]}, D <=
            detections_per_img, sorted by decreasing score; one box may appear with several labels.
        """
        num_classes = scores.shape[1]
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
        labels = torch.arange(1, num_classes, device=scores.device).expand(len(boxes), -1).reshape(-1)
        boxes = boxes[:, None, :].expand(-1, num_classes - 1, 4).reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=_MIN_BOX_SIZE)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}


def _check_targets(targets: list[dict[str, Tensor]] | None) -> None:
    if targets is None:
        raise ValueError("CascadeRoIHeads: targets are required in training mode")
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"CascadeRoIHeads: targets[{i}] needs 'boxes' and 'labels', has {sorted(t)}")
        if not t["boxes"].is_floating_point():
            raise TypeError(f"CascadeRoIHeads: targets[{i}]['boxes'] must be floating point, got {t['boxes'].dtype}")
        if t["labels"].dtype != torch.int64:
            raise TypeError(f"CascadeRoIHeads: targets[{i}]['labels'] must be int64, got {t['labels'].dtype}")


def cascade_roi_heads(
    num_stages: int,
    in_channels: int,
    featmap_names: list[str],
    num_classes: int,
    representation_size: int = 1024,
    roi_output_size: int = 7,
    **kwargs,
) -> CascadeRoIHeads:
    """Cascade heads with n ``TwoMLPHead`` + ``CascadeBoxPredictor`` stages and one RoIAlign.

    Args:
        num_stages: 2, 3 or 4; IoU thresholds default to 0.5/0.6[/0.7[/0.75]] and box-coder
            weights to (10,10,5,5), (20,20,10,10), (30,30,15,15), (40,40,20,20) per stage.
        in_channels: channels of every pooled feature map (the backbone's ``out_channels``).
        featmap_names: names of the feature maps to pool from, e.g. ["0", "1", "2", "3"].
        num_classes: number of classes including background.
        representation_size: width of the two FC layers of each stage's head.
        roi_output_size: RoIAlign output side; pooled features are [R, in_channels, s, s].
        **kwargs: passed to ``CascadeRoIHeads`` (e.g. ``stage_iou_thresholds``,
            ``batch_size_per_image``, ``score_thresh``); they override the defaults above.

    Returns:
        A ``CascadeRoIHeads`` to assign to ``FasterRCNN.roi_heads``.

    Raises:
        SpecError (a ValueError): ``num_stages`` is not 2, 3 or 4.
    """
    if num_stages not in STAGE_IOU_THRESHOLDS:
        valid = ", ".join(str(n) for n in STAGE_IOU_THRESHOLDS)
        raise SpecError(f"cascade_roi_heads: num_stages must be one of {valid}, got {num_stages!r}")
    kwargs.setdefault("stage_iou_thresholds", STAGE_IOU_THRESHOLDS[num_stages])
    kwargs.setdefault("stage_bbox_reg_weights", STAGE_BBOX_REG_WEIGHTS[:num_stages])
    pool = MultiScaleRoIAlign(featmap_names, output_size=roi_output_size, sampling_ratio=2)
    heads = [TwoMLPHead(in_channels * roi_output_size**2, representation_size) for _ in range(num_stages)]
    predictors = [CascadeBoxPredictor(representation_size, num_classes) for _ in range(num_stages)]
    return CascadeRoIHeads(pool, heads, predictors, **kwargs)
