"""Turn a DetectorSpec into a torchvision-convention detector by passing parts in.

    model = build_detector(parse_spec("resnet18@0.25+fpn:P1-P4:c64+rpn+2fc:256+320x240+gnws"),
                           DetectorOptions(num_classes=6))
    losses = model(images, targets)        # train mode: dict of losses
    detections = model(images)             # eval mode: list of {"boxes", "labels", "scores"}

Two-stage detectors are ``GeneralizedRCNN(backbone, rpn, roi_heads, transform)``; one-stage ones
are torchvision's ``RetinaNet``. Labels are 1..K with 0 the background, torchvision's convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from smnas.models.backbones import build_backbone
from smnas.models.trunks import Level
from smnas.models.cascade import cascade_roi_heads
from smnas.models.ga_rpn import GuidedAnchorRPN
from smnas.models.necks import BackboneWithNeck, FPNNeck, LastLevel
from smnas.models.norm import freeze_bn_statistics, group_norm, norm_layer
from smnas.models.spec import DetectorSpec, HeadSpec

IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as torchvision's detectors use
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetectorOptions:
    """Run-level settings that are not part of an architecture's identity."""

    num_classes: int  # object classes K, without background
    anchor_scale: float = 8.0  # anchor side = anchor_scale * stride (mmdet/torchvision: 8)
    rpn_pre_nms_top_n: int = 2000  # per level, training; testing uses half
    rpn_post_nms_top_n: int = 1000  # training; testing uses half (the RoI head's workload)
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    detections_per_img: int = 100
    backbone_weights: str | Path | None = None  # a local ImageNet checkpoint, never downloaded
    # A BN backbone that starts from backbone_weights keeps their BN statistics while the detector
    # trains (mmdetection's norm_eval, as the SM-NAS authors; torchvision freezes them too)
    freeze_bn_stats: bool = True


def build_features(spec: DetectorSpec, weights: str | Path | None = None) -> BackboneWithNeck:
    """Backbone plus neck; ``levels`` and ``out_channels`` size the heads."""
    body = build_backbone(spec.backbone.name, spec.backbone.width, spec.norm, weights)
    if spec.neck.kind == "fpn":
        neck: nn.Module = FPNNeck(body.levels, spec.neck.first, spec.neck.last, spec.neck.channels, spec.norm)
    else:
        neck = LastLevel(body.levels)
    return BackboneWithNeck(body, neck)


def anchor_sizes(levels: list[Level], scale: float, per_octave: int = 1) -> tuple[tuple[float, ...], ...]:
    """Anchor sides per level: ``scale * stride * 2**(i / per_octave)``.

    A single level (no FPN) gets five octaves ``2**-3 .. 2**1`` instead, as torchvision's
    single-map Faster R-CNN (32..512 at stride 32), so small objects still have anchors.
    """
    if len(levels) == 1:
        base = scale * levels[0].stride
        return (tuple(base * 2.0 ** (o + i / per_octave) for o in range(-3, 2) for i in range(per_octave)),)
    return tuple(tuple(scale * lvl.stride * 2.0 ** (i / per_octave) for i in range(per_octave)) for lvl in levels)


def _anchor_generator(levels: list[Level], scale: float, per_octave: int = 1) -> AnchorGenerator:
    sizes = anchor_sizes(levels, scale, per_octave)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def build_rpn(kind: str, levels: list[Level], channels: int, opts: DetectorOptions) -> nn.Module:
    """A torchvision RPN or our guided-anchoring RPN over ``levels``."""
    pre = {"training": opts.rpn_pre_nms_top_n, "testing": opts.rpn_pre_nms_top_n // 2}
    post = {"training": opts.rpn_post_nms_top_n, "testing": opts.rpn_post_nms_top_n // 2}
    if kind == "garpn":
        return GuidedAnchorRPN(
            in_channels=channels, strides=[lvl.stride for lvl in levels], octave_base_scale=opts.anchor_scale,
            batch_size_per_image=opts.rpn_batch_size_per_image, pre_nms_top_n=pre, post_nms_top_n=post,
        )
    anchors = _anchor_generator(levels, opts.anchor_scale)
    head = RPNHead(channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchors, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
        batch_size_per_image=opts.rpn_batch_size_per_image, positive_fraction=0.5,
        pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=0.7,
    )


def build_roi_heads(head: HeadSpec, levels: list[Level], channels: int, opts: DetectorOptions) -> nn.Module:
    """2FC R-CNN head (torchvision RoIHeads) or our Cascade R-CNN heads."""
    names = [lvl.name for lvl in levels]
    num_classes = opts.num_classes + 1  # with background
    if head.kind == "cascade":
        return cascade_roi_heads(
            head.stages, channels, names, num_classes, representation_size=head.fc,
            batch_size_per_image=opts.box_batch_size_per_image, detections_per_img=opts.detections_per_img,
        )
    pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
    return RoIHeads(
        pool, TwoMLPHead(channels * 7 * 7, head.fc), FastRCNNPredictor(head.fc, num_classes),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=opts.box_batch_size_per_image,
        positive_fraction=0.25, bbox_reg_weights=None, score_thresh=0.05, nms_thresh=0.5,
        detections_per_img=opts.detections_per_img,
    )


def build_detector(spec: DetectorSpec, opts: DetectorOptions) -> nn.Module:
    """Build the detector ``spec`` describes for ``opts.num_classes`` classes.

    Args:
        spec: a valid DetectorSpec (checked here; SpecError names the offending part).
        opts: class count, anchors, proposal counts, optional local backbone weights (a BN
            backbone built from them keeps their BN statistics, ``opts.freeze_bn_stats``).

    Returns:
        An ``nn.Module``; ``model(images: list[FloatTensor[3, H, W]], targets)`` returns losses in
        train mode, ``model(images)`` returns ``[{"boxes": FloatTensor[N, 4] x1y1x2y2,
        "labels": Int64Tensor[N], "scores": FloatTensor[N]}]`` in eval mode. Images are resized
        to fit ``spec.input_size`` keeping their aspect ratio.
    """
    spec.validate()
    features = build_features(spec, opts.backbone_weights)
    if opts.backbone_weights is not None and opts.freeze_bn_stats and spec.norm == "bn":
        freeze_bn_statistics(features.body)
    width, height = spec.input_size
    min_size, max_size = min(width, height), max(width, height)
    if spec.head.kind == "retina":
        anchors = _anchor_generator(features.levels, opts.anchor_scale / 2, per_octave=3)
        head = RetinaNetHead(
            features.out_channels, anchors.num_anchors_per_location()[0], opts.num_classes + 1,
            # GroupNorm in the head under BN too, as torchvision's RetinaNet v2: without a norm the
            # focal-loss head of a short BN schedule scores nothing above 0.05 (mAP 0.000)
            norm_layer=norm_layer("gnws") if spec.norm == "gnws" else group_norm,
        )
        return RetinaNet(
            features, opts.num_classes + 1, min_size=min_size, max_size=max_size,
            image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), anchor_generator=anchors, head=head,
            detections_per_img=opts.detections_per_img,
        )
    rpn = build_rpn(spec.rpn.kind, features.levels, features.out_channels, opts)
    roi_heads = build_roi_heads(spec.head, features.levels, features.out_channels, opts)
    transform = GeneralizedRCNNTransform(min_size, max_size, list(IMAGE_MEAN), list(IMAGE_STD))
    return GeneralizedRCNN(features, rpn, roi_heads, transform)
