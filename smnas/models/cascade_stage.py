"""Per-stage pieces of the Cascade R-CNN box heads (Cai & Vasconcelos, CVPR 2018).

Used by :class:`smnas.models.cascade.CascadeRoIHeads`: the default IoU thresholds and box-coder
weights per stage, the class-agnostic box predictor of one stage, the record of what one stage
saw and predicted, the stage loss, and the gradient scaling of the pooled features
(detectron2's ``_ScaleGradient``).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BoxWeights = tuple[float, float, float, float]

STAGE_IOU_THRESHOLDS: dict[int, tuple[float, ...]] = {
    2: (0.5, 0.6),
    3: (0.5, 0.6, 0.7),
    4: (0.5, 0.6, 0.7, 0.75),
}
# Later stages see better-localised boxes, so their deltas are smaller: larger weights keep the
# regression targets at unit scale (Cascade R-CNN, section 4.2).
STAGE_BBOX_REG_WEIGHTS: tuple[BoxWeights, ...] = (
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
    (40.0, 40.0, 20.0, 20.0),
)


class ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class CascadeBoxPredictor(nn.Module):
    """Classification and class-agnostic box regression for one cascade stage.

    Args:
        in_channels: size of the box head's representation.
        num_classes: number of classes including background (index 0).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        # detectron2's init: near-zero deltas at the start, so early stages do not throw the
        # next stage's boxes around before the regressors have learnt anything.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            x: Tensor[R, in_channels] (or [R, in_channels, 1, 1]).

        Returns:
            class_logits Tensor[R, num_classes], box_deltas Tensor[R, 4] (dx, dy, dw, dh).
        """
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


@dataclass
class StageOutput:
    """What one stage saw and predicted; lists hold one entry per image."""

    proposals: list[Tensor]  # [R_i, 4] x1y1x2y2, the boxes this stage classified
    class_logits: Tensor  # [sum R_i, num_classes]
    box_deltas: Tensor  # [sum R_i, 4]
    labels: list[Tensor] | None = None  # training: [R_i] int64, 0 = background
    regression_targets: list[Tensor] | None = None  # training: [R_i, 4]


def cascade_stage_loss(
    class_logits: Tensor, box_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` for class-agnostic deltas.

    Args:
        class_logits: Tensor[R, num_classes].
        box_deltas: Tensor[R, 4].
        labels: per image Tensor[R_i] int64 (0 = background), sum R_i = R.
        regression_targets: per image Tensor[R_i, 4] encoded matched ground-truth boxes.

    Returns:
        (cross-entropy over all R, smooth-L1 (beta 1/9) over the positives summed / R).
    """
    labels_all = torch.cat(labels, dim=0)
    targets_all = torch.cat(regression_targets, dim=0)
    loss_classifier = F.cross_entropy(class_logits, labels_all)
    positive = torch.where(labels_all > 0)[0]
    loss_box = F.smooth_l1_loss(box_deltas[positive], targets_all[positive], beta=1 / 9, reduction="sum")
    return loss_classifier, loss_box / labels_all.numel()
