"""Weight inheritance from a parent backbone to a morphed child (SP-NAS's network morphism).

SP-NAS (Jiang et al., "SP-NAS: Serial-to-Parallel Backbone Search for Object Detection", CVPR
2020) grows its serial backbone by swaps and expands and judges each child after a short
fine-tune, because the child inherits every weight whose layer survives the morph; ImageNet
pretraining is not repeated per candidate. :func:`inherit_weights` does this for our backbones
(:class:`~smnas.models.trunks.ResNetBackbone` and its parallel form), exactly as follows.

1. Stem (``conv1``, ``bn1``): copied when its shapes match (same base channels).
2. Blocks: parent and child blocks are listed in network order (stage by stage, ``layer{s}.{j}``)
   and aligned monotonically, maximising the number of tensors (parameters and buffers) whose
   relative name and shape agree; a block pair only counts if at least one tensor agrees. Within
   an aligned pair, each tensor with the same name and shape is copied; the rest stay as built.
   Ties put unaligned child blocks as late as possible, so a run of equal blocks keeps its first
   blocks in place and the inserted one comes last. Strides are not in the shapes: a block that a
   boundary swap moves to the front of the next stage keeps its convs and gets a fresh downsample.
3. New blocks: a child block aligned with no parent block that is stride 1 with equal input and
   output channels (no downsample, what :func:`smnas.search.spnas.expand` inserts) starts as the
   identity: its last norm's weight and bias are zeroed (``bn2`` of a BasicBlock, ``bn3`` of a
   Bottleneck), so it outputs ``relu(0 + x) = x`` for the non-negative ``x`` that the previous
   block's ReLU hands it (in eval mode for BN; always for GN+WS). Other new blocks (a stage's
   first block, which downsamples) stay as built: no morph makes them an identity.
4. Parallel copies (``parallel{s}.{m}``, ``merge{s}.{m}``): taken from the parent's copy ``m`` of
   stage ``s`` when that stage's blocks are unchanged and the parent has that copy; otherwise the
   copy starts as the child's (inherited) main stage ``s``, like the authors' code loading copies
   from the stage's weights, and its merge norm's weight and bias start at zero, so adding a copy
   leaves the output unchanged until training moves it.

So a child made only by expands, or only by adding parallel copies, computes exactly what its
parent computes (in eval mode); swaps change channels or strides and only keep what still fits.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from smnas.errors import SpecError
from smnas.models.backbones import build_backbone
from smnas.models.encoding import Encoding
from smnas.models.norm import norm_kind_of

_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class InheritReport:
    """What :func:`inherit_weights` did, key by key.

    Attributes:
        copied: (child key, parent key) of every tensor copied from the parent.
        identity_blocks: new blocks started as the identity, e.g. ``("layer2.2",)``.
        from_trunk: parallel copies started as the child's own main stage, e.g. ``("parallel2.0",)``.
        zero_merges: merges started at zero (those of ``from_trunk``), e.g. ``("merge2.0",)``.
        fresh: child keys left as built, outside the identity blocks, copies and merges above.
    """

    copied: tuple[tuple[str, str], ...]
    identity_blocks: tuple[str, ...]
    from_trunk: tuple[str, ...]
    zero_merges: tuple[str, ...]
    fresh: tuple[str, ...]

    def __str__(self) -> str:
        return (f"{len(self.copied)} tensors inherited, {len(self.fresh)} fresh; identity blocks "
                f"{list(self.identity_blocks)}; copies from the trunk {list(self.from_trunk)}")


def inherit_weights(parent: nn.Module | Mapping[str, Tensor], child: nn.Module,
                    parent_enc: Encoding, child_enc: Encoding) -> InheritReport:
    """Copy into ``child`` every tensor of ``parent`` whose layer survives the morph (in place).

    Args:
        parent: the parent backbone, or its state dict (a checkpoint of ``parent_enc``).
        child: the child backbone built from ``child_enc`` (same block type and normalisation).
        parent_enc: the parent's encoding.
        child_enc: the child's encoding.

    Returns:
        An :class:`InheritReport`; the rules are in the module docstring.

    Raises:
        SpecError: the block types or normalisations differ, or a state dict lacks keys of its
            encoding, holds keys it does not have, or has a tensor of another shape (a checkpoint
            of another network).
    """
    if parent_enc.block != child_enc.block:
        raise SpecError(f"cannot inherit {parent_enc} -> {child_enc}: block type {parent_enc.block} "
                        f"vs {child_enc.block}; a morph keeps the block type")
    kind = norm_kind_of(child)
    if isinstance(parent, nn.Module) and norm_kind_of(parent) != kind:
        raise SpecError(f"cannot inherit {parent_enc} -> {child_enc}: the parent uses {norm_kind_of(parent)}, "
                        f"the child {kind}; convert one first (smnas.models.norm.to_gnws / to_bn)")
    src = parent.state_dict() if isinstance(parent, nn.Module) else dict(parent)
    dst = child.state_dict()  # shares storage with the child's parameters and buffers
    _check_fits(src, parent_enc, kind, "parent")
    _check_fits(dst, child_enc, kind, "child")
    pairs = [(k, k) for k in dst if k.startswith(("conv1.", "bn1.")) and _same(src, k, dst, k)]
    parent_blocks, child_blocks = _blocks(src, parent_enc), _blocks(dst, child_enc)
    aligned = _align(parent_blocks, child_blocks, src, dst)
    for i, j in aligned:
        (_, p_keys), (_, c_keys) = parent_blocks[i], child_blocks[j]
        pairs += [(c_keys[r], p_keys[r]) for r in c_keys if r in p_keys and _same(src, p_keys[r], dst, c_keys[r])]
    with torch.no_grad():
        for ck, pk in pairs:
            dst[ck].copy_(src[pk])
        matched = {j for _, j in aligned}
        identity = [name for j, (name, _) in enumerate(child_blocks)
                    if j not in matched and _zero_last_norm(child, name)]
        parallel_pairs, from_trunk = _inherit_parallel(src, dst, parent_enc, child_enc)
        pairs += parallel_pairs
        for name in from_trunk:
            merge = child.get_submodule(name.replace("parallel", "merge"))
            _zero_norm(merge[1])
    merges = [n.replace("parallel", "merge") for n in from_trunk]
    by_rule = tuple(f"{name}." for name in (*identity, *from_trunk, *merges))
    copied = {ck for ck, _ in pairs}
    return InheritReport(
        copied=tuple(pairs), identity_blocks=tuple(identity), from_trunk=tuple(from_trunk),
        zero_merges=tuple(merges), fresh=tuple(k for k in dst if k not in copied and not k.startswith(by_rule)),
    )


def _same(src: Mapping[str, Tensor], pk: str, dst: Mapping[str, Tensor], ck: str) -> bool:
    return pk in src and ck in dst and src[pk].shape == dst[ck].shape


@functools.lru_cache(maxsize=256)
def _expected_shapes(text: str, kind: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Keys and shapes of the backbone ``text`` with norm ``kind``, built on the meta device."""
    with torch.device("meta"):
        model = build_backbone(text, norm=kind)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _check_fits(state: Mapping[str, Tensor], enc: Encoding, kind: str, who: str) -> None:
    expected = dict(_expected_shapes(str(enc), kind))
    missing = [k for k in expected if k not in state]
    if missing:
        raise SpecError(f"{who} weights do not fit {enc} ({kind}): {len(missing)} keys missing, e.g. {missing[:3]}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise SpecError(f"{who} weights do not fit {enc} ({kind}): {len(extra)} keys it lacks, e.g. {extra[:3]} "
                        "(a checkpoint of another architecture or block type?)")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise SpecError(f"{who} weights do not fit {enc} ({kind}): {k} has shape "
                            f"{tuple(state[k].shape)}, expected {shape}")


def _blocks(state: Mapping[str, Tensor], enc: Encoding) -> list[tuple[str, dict[str, str]]]:
    """The main-path blocks in network order: (``layer{s}.{j}``, {relative key: full key})."""
    out: dict[tuple[int, int], tuple[str, dict[str, str]]] = {
        (s + 1, j): (f"layer{s + 1}.{j}", {}) for s, stage in enumerate(enc.stages) for j in range(len(stage))}
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m:
            out[int(m[1]), int(m[2])][1][m[3]] = key
    return [out[k] for k in sorted(out)]


def _align(parent: list, child: list, src: Mapping[str, Tensor], dst: Mapping[str, Tensor]) -> list[tuple[int, int]]:
    """Monotone alignment of parent to child blocks maximising the tensors that fit (DP)."""
    n, m = len(parent), len(child)
    score = [[sum(1 for r, ck in child[j][1].items() if r in parent[i][1] and _same(src, parent[i][1][r], dst, ck))
              for j in range(m)] for i in range(n)]
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = best[i - 1][j - 1] + score[i - 1][j - 1] if score[i - 1][j - 1] else -1
            best[i][j] = max(best[i - 1][j], best[i][j - 1], diag)
    pairs, i, j = [], n, m
    while i and j:
        if best[i][j] == best[i][j - 1]:  # ties: the child block is the new one, as late as possible
            j -= 1
        elif score[i - 1][j - 1] and best[i][j] == best[i - 1][j - 1] + score[i - 1][j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        else:
            i -= 1
    return pairs[::-1]


def _zero_norm(norm: nn.Module) -> None:
    norm.weight.zero_()
    norm.bias.zero_()


def _zero_last_norm(model: nn.Module, name: str) -> bool:
    """Make new block ``name`` the identity if it can be one (stride 1, no downsample)."""
    block = model.get_submodule(name)
    if block.downsample is not None or block.stride != 1:
        return False
    _zero_norm(block.bn3 if isinstance(block, Bottleneck) else block.bn2)
    return True


def _inherit_parallel(src: Mapping[str, Tensor], dst: Mapping[str, Tensor], parent_enc: Encoding,
                      child_enc: Encoding) -> tuple[list[tuple[str, str]], list[str]]:
    """Copy parallel copies and merges from the parent where their stage is unchanged, else start
    them as the child's main stage. Returns the copied (child, parent) keys and the copies started
    from the trunk (whose merges the caller zeroes)."""
    pairs, from_trunk = [], []
    for s, count in enumerate(child_enc.parallel):
        parent_count = parent_enc.parallel[s] if parent_enc.parallel and s < len(parent_enc.stages) else 0
        same_stage = s < len(parent_enc.stages) and parent_enc.stages[s] == child_enc.stages[s]
        for m in range(count):
            names = (f"parallel{s + 1}.{m}.", f"merge{s + 1}.{m}.")
            keys = [k for k in dst if k.startswith(names)]
            if same_stage and m < parent_count and all(_same(src, k, dst, k) for k in keys):
                pairs += [(k, k) for k in keys]
                for k in keys:
                    dst[k].copy_(src[k])
                continue
            trunk = f"layer{s + 1}."
            for k in keys:
                if k.startswith(names[0]):
                    dst[k].copy_(dst[trunk + k[len(names[0]):]])
            from_trunk.append(names[0][:-1])
    return pairs, from_trunk


_BODY = "backbone.body."


@dataclass(frozen=True)
class DetectorInheritReport:
    """What :func:`inherit_detector` did: the backbone's report, and the other detector tensors.

    Attributes:
        backbone: the morph of the backbone (keys relative to ``backbone.body``).
        copied_rest: neck, RPN and head tensors copied (same name and shape in the parent).
        fresh_rest: neck, RPN and head tensors left as built (none in a backbone-only parent).
    """

    backbone: InheritReport
    copied_rest: tuple[str, ...]
    fresh_rest: tuple[str, ...]

    def __str__(self) -> str:
        return f"backbone: {self.backbone}; neck and heads: {len(self.copied_rest)} inherited, {len(self.fresh_rest)} fresh"


def inherit_detector(parent: Mapping[str, Tensor], parent_enc: Encoding, child: nn.Module,
                     child_enc: Encoding) -> DetectorInheritReport:
    """Start detector ``child`` from a parent's weights across a backbone morph (in place).

    Args:
        parent: a parent detector's state dict (keys ``backbone.body.*``, ``backbone.neck.*``,
            ``rpn.*``, ``roi_heads.*``: a trained candidate's ``model.pt``), or a backbone's alone
            (a pretraining's ``weights.pt``, keys as ``conv1.weight``).
        parent_enc: the parent's backbone encoding.
        child: the child detector (:func:`smnas.models.build.build_detector`), whose backbone
            body is built from ``child_enc``.
        child_enc: the child's backbone encoding (same block type and normalisation).

    Returns:
        A :class:`DetectorInheritReport`. The backbone follows :func:`inherit_weights`; every
        other tensor is copied when the parent has one of that name and shape (the neck, RPN and
        head of one structure keep their shapes unless a level's channels changed).

    Raises:
        SpecError: the parent's backbone weights do not fit ``parent_enc`` (named), or the child
            has no ``backbone.body``.
    """
    if not hasattr(child, "backbone") or not hasattr(child.backbone, "body"):
        raise SpecError(f"inherit_detector: the child ({type(child).__name__}) has no backbone.body")
    if any(k.startswith(_BODY) for k in parent):
        body = {k[len(_BODY):]: v for k, v in parent.items() if k.startswith(_BODY)}
        rest = {k: v for k, v in parent.items() if not k.startswith(_BODY)}
    else:
        body, rest = dict(parent), {}
    report = inherit_weights(body, child.backbone.body, parent_enc, child_enc)
    own = {k: v for k, v in child.state_dict().items() if not k.startswith(_BODY)}
    copied = [k for k, v in own.items() if k in rest and rest[k].shape == v.shape]
    with torch.no_grad():
        for k in copied:
            own[k].copy_(rest[k])
    return DetectorInheritReport(report, tuple(copied), tuple(k for k in own if k not in set(copied)))
