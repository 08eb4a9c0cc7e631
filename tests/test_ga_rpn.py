"""Behaviour of the guided-anchoring RPN, alone and inside a tiny torchvision FasterRCNN (CPU)."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign

from smnas.models.ga_rpn import GuidedAnchorRPN
from smnas.models.ga_targets import (
    assign_levels,
    bounded_iou_shape_loss,
    location_targets,
)

torch.set_num_threads(1)

GA_LOSSES = ("loss_anchor_loc", "loss_anchor_shape", "loss_objectness", "loss_rpn_box_reg")


class OneLevel(nn.Module):
    """Stride-8 backbone with one feature map."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.out_channels = channels
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TwoLevels(nn.Module):
    """Backbone returning an ordered dict of stride-4 and stride-8 maps."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.out_channels = channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1)
        )
        self.down = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        p2 = F.relu(self.stem(x))
        return OrderedDict([("p2", p2), ("p3", F.relu(self.down(p2)))])


def tiny_detector(backbone: nn.Module, strides: tuple[int, ...]) -> FasterRCNN:
    names = ["p2", "p3"] if isinstance(backbone, TwoLevels) else ["0"]
    model = FasterRCNN(
        backbone, num_classes=2, min_size=64, max_size=64, image_mean=[0.5] * 3, image_std=[0.25] * 3,
        box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
    )
    model.rpn = GuidedAnchorRPN(
        in_channels=backbone.out_channels, strides=strides, octave_base_scale=4.0,
        pre_nms_top_n=dict(training=200, testing=100), post_nms_top_n=dict(training=100, testing=50),
    )
    return model


def sample() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[12.0, 16.0, 44.0, 40.0]]), "labels": torch.tensor([1])}]
    return images, targets


@pytest.mark.parametrize("backbone,strides", [(OneLevel, (8,)), (TwoLevels, (4, 8))])
def test_inside_faster_rcnn_trains_and_predicts(backbone, strides) -> None:
    torch.manual_seed(0)
    model = tiny_detector(backbone(), strides)
    images, targets = sample()
    model.train()
    losses = model(images, targets)
    assert set(GA_LOSSES) | {"loss_classifier", "loss_box_reg"} == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    rpn = model.rpn
    for layer in (rpn.conv_shape, rpn.conv_adaption, rpn.conv_offset, rpn.conv_loc, rpn.conv_cls):
        param = layer.weight
        assert param.grad is not None and param.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        proposals, _ = model.rpn(*rpn_inputs(model, images))
        detections = model(images)
    assert proposals[0].shape[1] == 4 and proposals[0].shape[0] > 0
    assert set(detections[0]) == {"boxes", "labels", "scores"}


def rpn_inputs(model: FasterRCNN, images: list[torch.Tensor]) -> tuple[ImageList, dict[str, torch.Tensor]]:
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    return image_list, features


def test_level_assignment_rounds_in_log_scale() -> None:
    # base 32: sizes 32 -> 0, 45 (< 32 * sqrt 2) -> 0, 46 -> 1, 64 -> 1, 1000 -> clamped 2, 4 -> 0
    boxes = torch.tensor([[0, 0, 32, 32], [0, 0, 45, 45], [0, 0, 46, 46], [0, 0, 32, 128], [0, 0, 1e3, 1e3],
                          [0, 0, 4, 4]], dtype=torch.float32)
    assert assign_levels(boxes, 32.0, 3).tolist() == [0, 0, 1, 1, 2, 0]


def test_location_targets_by_hand() -> None:
    # strides (4, 8), base 8: anchor scales 32, 64. gt 80 x 60 -> sqrt = 69.3 -> level 1.
    gt = torch.tensor([[22.0, 30.0, 102.0, 90.0]])  # centre (62, 60)
    level0, level1 = location_targets(gt, [(32, 32), (16, 16)], (4, 8), 8.0, 0.2, 0.5)
    # level 1: centre region x in [54, 70], y in [54, 66]; centres (k + 0.5) * 8 inside: x 60, 68; y 60.
    expected1 = torch.zeros(16, 16)
    # ignore region x in [42, 82] -> j 5..9; y in [45, 75] -> i 6..8
    expected1[6:9, 5:10] = -1
    expected1[7, 7:9] = 1
    assert torch.equal(level1, expected1)
    # level 0 (adjacent): no positives, ignore region (k + 0.5) * 4 in x [42, 82] -> j 10..20,
    # y [45, 75] -> i 11..18
    expected0 = torch.zeros(32, 32)
    expected0[11:19, 10:21] = -1
    assert torch.equal(level0, expected0)


def test_small_gt_keeps_its_centre_cell_positive() -> None:
    gt = torch.tensor([[10.0, 10.0, 14.0, 14.0]])  # centre region [11.6, 12.4] holds no position centre
    (labels,) = location_targets(gt, [(8, 8)], (4,), 8.0, 0.2, 0.5)
    assert (labels == 1).nonzero().tolist() == [[3, 3]]  # the cell [12, 16) holds the gt centre 12
    assert (labels == -1).sum() == 0  # ignore region [11, 13] holds no position centre either


def test_shape_branch_gives_exact_anchor_sizes() -> None:
    rpn = GuidedAnchorRPN(in_channels=4, strides=(8, 16), octave_base_scale=8.0)
    with torch.no_grad():
        rpn.conv_shape.weight.zero_()
        rpn.conv_shape.bias.copy_(torch.tensor([math.log(2.0), math.log(0.5)]))
    for stride, size in ((8, 6), (16, 3)):
        shape = rpn.predict_level(torch.randn(2, 4, size, size)).shape_pred
        wh = rpn.anchor_wh(shape, stride)
        assert torch.equal(wh[:, 0], torch.full((2, size, size), 8.0 * stride * 2.0))
        assert torch.equal(wh[:, 1], torch.full((2, size, size), 8.0 * stride * 0.5))
        anchors = rpn.guided_anchors(shape, stride)  # (N, HW, 4)
        half_w, half_h = 8.0 * stride, 2.0 * stride  # (8 * stride * 2) / 2, (8 * stride / 2) / 2
        centre = stride / 2
        expected = torch.tensor([centre - half_w, centre - half_h, centre + half_w, centre + half_h])
        assert torch.equal(anchors[0, 0], expected)


def test_bounded_iou_shape_loss_values() -> None:
    pred = torch.tensor([[10.0, 20.0], [10.0, 20.0]])
    gt = torch.tensor([[10.0, 20.0], [20.0, 10.0]])
    # second: 1 - min ratio = 0.5 for w and h; smooth L1 (beta 0.2): 0.5 - 0.1 = 0.4 each
    assert torch.allclose(bounded_iou_shape_loss(pred, gt), torch.tensor([0.0, 0.8]), atol=1e-5)


def hook_loc(rpn: GuidedAnchorRPN, logits: torch.Tensor) -> None:
    """Replace the location branch output by fixed logits (N, 1, H, W)."""
    rpn.conv_loc.register_forward_hook(lambda module, args, out: logits.expand_as(out))


def single_level_rpn(min_kept: int) -> tuple[GuidedAnchorRPN, ImageList, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    rpn = GuidedAnchorRPN(in_channels=4, strides=(8,), octave_base_scale=2.0, min_kept_per_level=min_kept)
    with torch.no_grad():  # zero deltas: each proposal is exactly the (clipped) guided anchor
        rpn.conv_reg.weight.zero_()
        rpn.conv_reg.bias.zero_()
    rpn.eval()
    images = ImageList(torch.zeros(1, 3, 48, 48), [(48, 48)])
    return rpn, images, {"0": torch.randn(1, 4, 6, 6)}


def test_positions_below_loc_threshold_give_no_proposals() -> None:
    rpn, images, features = single_level_rpn(min_kept=0)
    logits = torch.full((1, 1, 6, 6), -20.0)
    logits[0, 0, 2, 3] = 0.0  # prob 0.5 at the position centred on (28, 20)
    hook_loc(rpn, logits)
    with torch.no_grad():
        proposals, losses = rpn(images, features)
    assert losses == {}
    # the guided anchor at (28, 20) is 16 x 16 times exp(shape), the shape is the net's own
    wh = rpn.anchor_wh(rpn.predict_level(features["0"]).shape_pred, 8)[0, :, 2, 3]
    expected = torch.cat([torch.tensor([28.0, 20.0]) - wh / 2, torch.tensor([28.0, 20.0]) + wh / 2])
    assert proposals[0].shape == (1, 4)
    assert torch.allclose(proposals[0][0], expected.clamp(0, 48), atol=1e-4)


def test_min_kept_per_level_keeps_the_most_likely_positions() -> None:
    rpn, images, features = single_level_rpn(min_kept=3)
    logits = torch.full((1, 1, 6, 6), -20.0)
    logits[0, 0, 1, 1], logits[0, 0, 4, 4], logits[0, 0, 1, 3] = -10.0, -11.0, -12.0  # all < thr
    hook_loc(rpn, logits)
    rpn.nms_thresh = 1.0  # keep overlapping anchors apart
    with torch.no_grad():
        (proposals,), _ = rpn(images, features)
    centres = sorted(((p[:2] + p[2:]) / 2).round().tolist() for p in proposals)
    # anchors are about 16 x 16 (2 * 8 * exp(~0)), unclipped, so centres are the positions' centres
    assert centres == [[12.0, 12.0], [28.0, 12.0], [36.0, 36.0]]


def test_offsets_come_from_the_shape_prediction() -> None:
    torch.manual_seed(0)
    rpn = GuidedAnchorRPN(in_channels=3, strides=(8,))
    feature = torch.randn(1, 3, 5, 5)
    shape_a, shape_b = torch.zeros(1, 2, 5, 5), torch.full((1, 2, 5, 5), 0.7)
    with torch.no_grad():
        assert not torch.allclose(rpn.adapt_feature(feature, shape_a), rpn.adapt_feature(feature, shape_b))
        rpn.conv_offset.weight.zero_()
        plain = F.relu(F.conv2d(feature, rpn.conv_adaption.weight, rpn.conv_adaption.bias, padding=1))
        assert torch.allclose(rpn.adapt_feature(feature, shape_b), plain, atol=1e-6)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="double"):
        GuidedAnchorRPN(in_channels=4, strides=(4, 16))
    with pytest.raises(ValueError, match="center_ratio"):
        GuidedAnchorRPN(in_channels=4, strides=(4,), center_ratio=0.6, ignore_ratio=0.5)
    rpn = GuidedAnchorRPN(in_channels=4, strides=(8,))
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    with pytest.raises(ValueError, match="2 feature maps"):
        rpn(images, {"a": torch.zeros(1, 4, 8, 8), "b": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(ValueError, match="'a' has 5 channels"):
        rpn(images, {"a": torch.zeros(1, 5, 8, 8)})
    with pytest.raises(ValueError, match="stride 8"):
        rpn(images, {"a": torch.zeros(1, 4, 16, 16)})


def test_overfits_one_image() -> None:
    torch.manual_seed(0)
    model = tiny_detector(TwoLevels(), (4, 8))
    images, targets = sample()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    history = []
    for _ in range(40):
        losses = model(images, targets)
        history.append(sum(losses[k].item() for k in GA_LOSSES))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert sum(history[-5:]) / 5 < 0.6 * sum(history[:5]) / 5, history


def test_image_without_boxes_gives_finite_losses() -> None:
    torch.manual_seed(0)
    rpn = GuidedAnchorRPN(in_channels=4, strides=(4, 8), octave_base_scale=2.0)
    images = ImageList(torch.zeros(2, 3, 32, 32), [(32, 32), (32, 32)])
    features = {"a": torch.randn(2, 4, 8, 8), "b": torch.randn(2, 4, 4, 4)}
    targets = [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.tensor([[4.0, 4.0, 20.0, 24.0]])}]
    _, losses = rpn(images, features, targets)
    assert set(losses) == set(GA_LOSSES)
    assert all(torch.isfinite(v) for v in losses.values())
    _, losses = rpn(images, features, targets[:1] * 2)  # no box anywhere: nothing positive
    assert losses["loss_anchor_shape"] == 0 and losses["loss_rpn_box_reg"] == 0
