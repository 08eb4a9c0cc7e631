"""Mutations of backbone encodings (stage two) and of module choices (stage one).

Each encoding operator lists every encoding one edit away that is inside the bounds and differs
from its input, then draws one with a seeded ``random.Random``; it returns ``None`` when there is
none (a caller then tries another operator):

    insert_block     basicblock_64_1-21-21-12 -> basicblock_64_11-21-21-12
    remove_block     basicblock_64_11-21-21-12 -> basicblock_64_1-21-21-12
    move_doubling    basicblock_64_1-21-21-12 -> basicblock_64_1-12-21-12   (swap a 2 with a 1)
    move_boundary    basicblock_64_1-21-21-12 -> basicblock_64_12-1-21-12   (stage lengths change)
    change_base      basicblock_64_1-21-21-12 -> basicblock_56_1-21-21-12

``mutate_encoding`` picks one applicable operator at random; ``mutate_stage1`` changes one module
of a stage-one structure to another choice of its space; ``mutate_stage2`` makes 1..max_ops edits
of a stage-two spec (encoding operators and the FPN's channels).
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable

from smnas.errors import SpecError
from smnas.models.encoding import Encoding, EncodingBounds, in_bounds, parse_encoding
from smnas.models.spec import BackboneSpec, DetectorSpec, RPNSpec
from smnas.search.space import StageOneSpace, StageTwoSpace

EncodingOp = Callable[[Encoding, EncodingBounds, random.Random], "Encoding | None"]


def _pick(enc: Encoding, options: list[Encoding], bounds: EncodingBounds, rng: random.Random) -> Encoding | None:
    """One of the distinct valid ``options`` other than ``enc``, drawn by ``rng`` (None if none)."""
    valid = sorted({o for o in options if o != enc and in_bounds(o, bounds)}, key=str)
    return rng.choice(valid) if valid else None


def _flat(enc: Encoding) -> tuple[str, list[int]]:
    """The blocks as one string and the stage lengths."""
    return "".join(enc.stages), [len(s) for s in enc.stages]


def _split(blocks: str, lengths: list[int]) -> tuple[str, ...]:
    out, i = [], 0
    for n in lengths:
        out.append(blocks[i:i + n])
        i += n
    return tuple(out)


def insert_block(enc: Encoding, bounds: EncodingBounds, rng: random.Random) -> Encoding | None:
    """Insert a ``1`` (or a ``2``, if the doubling bounds allow) anywhere in any stage."""
    options = []
    for s, stage in enumerate(enc.stages):
        for pos in range(len(stage) + 1):
            for ch in "12":
                new = stage[:pos] + ch + stage[pos:]
                options.append(replace(enc, stages=enc.stages[:s] + (new,) + enc.stages[s + 1:]))
    return _pick(enc, options, bounds, rng)


def remove_block(enc: Encoding, bounds: EncodingBounds, rng: random.Random) -> Encoding | None:
    """Remove one block from a stage that keeps at least its minimum length."""
    options = []
    for s, stage in enumerate(enc.stages):
        for pos in range(len(stage)):
            new = stage[:pos] + stage[pos + 1:]
            if new:  # an empty stage is not an encoding at all
                options.append(replace(enc, stages=enc.stages[:s] + (new,) + enc.stages[s + 1:]))
    return _pick(enc, options, bounds, rng)


def move_doubling(enc: Encoding, bounds: EncodingBounds, rng: random.Random) -> Encoding | None:
    """Move a channel-doubling ``2`` to a position that held a ``1`` (stage lengths kept)."""
    blocks, lengths = _flat(enc)
    options = []
    for i, ci in enumerate(blocks):
        for j, cj in enumerate(blocks):
            if ci == "2" and cj == "1":
                new = list(blocks)
                new[i], new[j] = "1", "2"
                options.append(replace(enc, stages=_split("".join(new), lengths)))
    return _pick(enc, options, bounds, rng)


def move_boundary(enc: Encoding, bounds: EncodingBounds, rng: random.Random) -> Encoding | None:
    """Move one ``-`` between two stages, so blocks change resolution (SP-NAS's Swap)."""
    blocks, lengths = _flat(enc)
    options = []
    for s in range(len(lengths) - 1):
        pair = lengths[s] + lengths[s + 1]
        for left in range(1, pair):
            new = lengths[:s] + [left, pair - left] + lengths[s + 2:]
            options.append(replace(enc, stages=_split(blocks, new)))
    return _pick(enc, options, bounds, rng)


def change_base(enc: Encoding, bounds: EncodingBounds, rng: random.Random) -> Encoding | None:
    """Another allowed base channel count."""
    return _pick(enc, [replace(enc, base_channels=c) for c in bounds.base_channels], bounds, rng)


ENCODING_OPS: dict[str, EncodingOp] = {
    "insert_block": insert_block,
    "remove_block": remove_block,
    "move_doubling": move_doubling,
    "move_boundary": move_boundary,
    "change_base": change_base,
}


def mutate_encoding(enc: Encoding, bounds: EncodingBounds, rng: random.Random) -> Encoding:
    """Apply one operator, drawn uniformly among those that can apply to ``enc``.

    Returns:
        An encoding inside ``bounds``, different from ``enc``.

    Raises:
        SpecError: no operator yields a valid different encoding (the bounds admit only ``enc``).
    """
    names = sorted(ENCODING_OPS)
    rng.shuffle(names)
    for name in names:
        out = ENCODING_OPS[name](enc, bounds, rng)
        if out is not None:
            return out
    raise SpecError(f"{enc}: no mutation yields another encoding inside the bounds {bounds}")


def change_fpn_channels(spec: DetectorSpec, allowed: tuple[int, ...], rng: random.Random) -> DetectorSpec | None:
    """The same spec with another allowed FPN channel count (None without an FPN or alternatives)."""
    if spec.neck.kind != "fpn":
        return None
    options = sorted(c for c in set(allowed) if c != spec.neck.channels)
    return replace(spec, neck=replace(spec.neck, channels=rng.choice(options))) if options else None


def _stage1_alternatives(spec: DetectorSpec, space: StageOneSpace) -> dict[str, list[DetectorSpec]]:
    """For each module, the specs that differ from ``spec`` in that module only (unvalidated)."""
    n = spec.neck
    necks = list(space._necks())  # the space's own neck and head choices, as specs
    heads = space._heads()
    return {
        "backbone": [replace(spec, backbone=BackboneSpec(b, space.width)) for b in space.backbones],
        # kind or range; an FPN keeps its channel count when it stays an FPN
        "neck": [replace(spec, neck=m) for m in necks
                 if (m.kind, m.first, m.last) != (n.kind, n.first, n.last)
                 and (n.kind != "fpn" or m.kind != "fpn" or m.channels == n.channels)],
        "fpn_channels": [replace(spec, neck=m) for m in necks
                         if m.kind == "fpn" and (m.first, m.last) == (n.first, n.last) and n.kind == "fpn"],
        "rpn_head": [replace(spec, rpn=RPNSpec(r), head=h) for r in space.rpns for h in heads],
        "input_size": [replace(spec, input_size=tuple(s)) for s in space.input_sizes],
    }


def mutate_stage1(spec: DetectorSpec, space: StageOneSpace, rng: random.Random) -> DetectorSpec:
    """Change one module of ``spec`` (backbone, neck kind/range, FPN channels, RPN+head pair or
    input size) to another choice of ``space``; the module is drawn among those that can change.

    Returns:
        A valid spec (:meth:`DetectorSpec.validate`) different from ``spec``.

    Raises:
        SpecError: ``space`` offers no valid alternative for any module of ``spec``.
    """
    alternatives = _stage1_alternatives(spec, space)
    names = sorted(alternatives)
    rng.shuffle(names)
    for name in names:
        valid = sorted({s for s in alternatives[name] if s != spec and _valid(s)}, key=str)
        if valid:
            return rng.choice(valid)
    raise SpecError(f"{spec}: the stage-one space offers no valid alternative for any module")


def _valid(spec: DetectorSpec) -> bool:
    try:
        spec.validate()
    except SpecError:
        return False
    return True


def mutate_stage2(spec: DetectorSpec, space2: StageTwoSpace, rng: random.Random, max_ops: int = 1) -> DetectorSpec:
    """1..``max_ops`` edits of a stage-two spec, each an encoding operator or another FPN channel count.

    Each edit's operator is drawn uniformly among those that apply (FPN channels only with an
    FPN). With ``max_ops`` > 1 the number of edits is drawn uniformly first, as SP-NAS makes a
    child by up to three morphs (Jiang et al., CVPR 2020), so a child can land farther from its
    parent than one edit reaches; with 1, ``rng`` is drawn exactly as before the option existed.

    Raises:
        SpecError: ``spec``'s backbone is not an encoding, ``max_ops`` < 1, or no operator applies.
    """
    if max_ops < 1:
        raise SpecError(f"mutate_stage2: max_ops must be >= 1 (edits per child), got {max_ops}")
    edits = rng.randint(1, max_ops) if max_ops > 1 else 1
    child = spec
    for _ in range(edits):
        child = _edit_stage2(child, space2, rng)
    while child == spec:  # edits that undo each other: one more
        child = _edit_stage2(child, space2, rng)
    return child


def _edit_stage2(spec: DetectorSpec, space2: StageTwoSpace, rng: random.Random) -> DetectorSpec:
    """One edit of a stage-two spec (see :func:`mutate_stage2`)."""
    if not spec.backbone.is_encoding:
        raise SpecError(f"{spec}: a stage-two spec needs an encoding as backbone (see seed_spec)")
    enc = parse_encoding(spec.backbone.name)
    names = sorted([*ENCODING_OPS, "fpn_channels"])
    rng.shuffle(names)
    for name in names:
        if name == "fpn_channels":
            out = change_fpn_channels(spec, space2.fpn_channels, rng)
            if out is not None:
                return out
            continue
        new = ENCODING_OPS[name](enc, space2.bounds, rng)
        if new is not None:
            return replace(spec, backbone=BackboneSpec(str(new)))
    raise SpecError(f"{spec}: no stage-two mutation applies inside the bounds")
