"""SP-NAS's search operators: serial swaps and expands, and the parallel-level sampler.

SP-NAS (Jiang et al., "SP-NAS: Serial-to-Parallel Backbone Search for Object Detection", CVPR
2020) searches in two phases. Usage::

    rng = random.Random(seed)
    child = serial_child(parse_encoding("bottleneck_64_111-2111-211111-211"), rng, spnas_bounds())
    inherit_weights(parent_model, build_backbone(str(child)), parent_enc, child)  # smnas.models.morph
    candidate = sample_parallel(best_serial, rng, max_gmacs=120.0, input_size=(1333, 800))

Serial phase: a child is made from a front member by 1..3 morphs, each a *swap* or an *expand*:

    shift_boundary   basicblock_64_11-21-21-12 -> basicblock_64_1-121-21-12  (a '-' moves <= 3 blocks)
    shift_doubling   basicblock_64_1-21-21-12  -> basicblock_64_1-12-21-12   (a '2' trades places with a '1' <= 3 away)
    expand_at        basicblock_64_1-21-21-12  -> basicblock_64_1-211-21-12  (a '1' after a block of a stage)

The published space has 5 to 7 stages counting the stem (4 to 6 after it), 8 to 60 blocks, and an
expand occasionally appends a new stage. Our detectors take exactly 4 stages after the stem (P1..P4,
strides 4..32, what the necks expect), i.e. SP-NAS's 5-stage networks: a 5th stage would be a
stride-64 level no neck here reads, and splitting a stage needs a boundary from elsewhere, which
is a boundary swap. So expands only insert blocks, never stages. An expand inserts its ``1`` after
an existing block of the stage, never in front of the stage's stride-2 first block, so the new
block is stride 1 with equal input and output channels and starts as the identity (network
morphism, :mod:`smnas.models.morph`). The authors' code (huawei-noah/vega, ``spnas_s.py``) inserts
two blocks per expand and moves boundaries only; here one expand is one block, and swaps move
doublings too.

Parallel phase: per stage a count of copies of that stage (:mod:`smnas.models.parallel`), drawn at
random under a MACs limit; the authors' description (vega ``docs/en/algorithms/sp_nas.md``): "The
probability of adding additional subnets is inversely proportional to the FLOPS of the subnets to
be added" (their released ``spnas_p.py`` instead draws 0..3 copies with fixed probabilities
0.4/0.3/0.2/0.1 whatever the cost). The rule here: with ``c_s`` the MACs of one copy of stage
``s`` (with its merge) and ``c_min`` the cheapest stage's, each further copy of stage ``s`` is
``rho_s = c_min / c_s`` times as likely as one fewer, independently per stage:
``P(k_s = k) = rho_s**k / sum(rho_s**i for i in 0..max_count)``. The cheapest stage's count is
uniform on 0..max_count; a stage 4x as heavy gets 0 copies with probability ~0.75. Draws with no
copy at all, or over the limit, are drawn again.
"""
from __future__ import annotations

import functools
import random
from dataclasses import replace

from smnas.errors import SpecError
from smnas.models.encoding import Encoding, EncodingBounds, check_encoding, in_bounds, parse_encoding

MAX_STEP = 3  # how far a swap moves a '-' or a '2' (the authors' code: len_step=3)


def spnas_bounds(base_channels: tuple[int, ...] = (64,)) -> EncodingBounds:
    """SP-NAS's published serial space on our 4 stages after the stem: 8 to 60 blocks in all.

    No limit per stage beyond what the total leaves (57), no limit on doublings: swaps and
    expands never change their number. ``base_channels``: the pretrained start's (ResNet: 64).
    """
    return EncodingBounds(base_channels, min_blocks=8, max_blocks=60, max_stage_blocks=57)


def _flat(enc: Encoding) -> tuple[str, list[int]]:
    return "".join(enc.stages), [len(s) for s in enc.stages]


def _split(blocks: str, lengths: list[int]) -> tuple[str, ...]:
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return tuple(blocks[a:a + n] for a, n in zip(starts, lengths))


def shift_boundary(enc: Encoding, boundary: int, step: int) -> Encoding:
    """Move the ``-`` between stages ``boundary`` and ``boundary + 1`` (1-based) by ``step`` blocks.

    Args:
        enc: the encoding; its blocks keep their order, only stage lengths change.
        boundary: 1 .. number of stages - 1.
        step: > 0 moves the first ``step`` blocks of stage ``boundary + 1`` into stage ``boundary``;
            < 0 moves the last ``-step`` blocks of stage ``boundary`` into the next.

    Returns:
        The morphed encoding (parallel counts kept).

    Raises:
        SpecError: no such boundary, ``step`` is 0, or the move would empty a stage (named).
    """
    blocks, lengths = _flat(enc)
    if not 1 <= boundary < len(lengths) or step == 0:
        raise SpecError(f"{enc}: cannot shift boundary {boundary} by {step}; boundaries are 1..{len(lengths) - 1}, "
                        "steps non-zero")
    lengths[boundary - 1] += step
    lengths[boundary] -= step
    for s in (boundary - 1, boundary):
        if lengths[s] < 1:
            raise SpecError(f"{enc}: shifting boundary {boundary} by {step:+d} would empty stage {s + 1} "
                            f"{enc.stages[s]!r}; a stage needs at least one block")
    return replace(enc, stages=_split(blocks, lengths))


def shift_doubling(enc: Encoding, index: int, step: int) -> Encoding:
    """Move the ``2`` at block ``index`` (0-based over all stages) ``step`` places, swapping it
    with the ``1`` there; stage lengths and the number of doublings are kept.

    Raises:
        SpecError: block ``index`` is not a ``2``, or block ``index + step`` is not a ``1``.
    """
    blocks, lengths = _flat(enc)
    to = index + step
    if not (0 <= index < len(blocks) and blocks[index] == "2"):
        raise SpecError(f"{enc}: block {index} is not a channel-doubling '2'")
    if step == 0 or not (0 <= to < len(blocks) and blocks[to] == "1"):
        raise SpecError(f"{enc}: cannot move the '2' at block {index} by {step}: block {to} is not a '1'")
    flat = list(blocks)
    flat[index], flat[to] = "1", "2"
    return replace(enc, stages=_split("".join(flat), lengths))


def expand_at(enc: Encoding, stage: int, position: int) -> Encoding:
    """Insert a ``1`` block into ``stage`` (1-based) at ``position`` (1 .. its length: after a block).

    Raises:
        SpecError: no such stage, or position 0 (in front of the stage's first block, the new block
            would take the stride and could not start as the identity) or past the end.
    """
    if not 1 <= stage <= len(enc.stages):
        raise SpecError(f"{enc}: no stage {stage}; stages are 1..{len(enc.stages)}")
    old = enc.stages[stage - 1]
    if not 1 <= position <= len(old):
        raise SpecError(f"{enc}: cannot insert a block into stage {stage} {old!r} at position {position}; "
                        f"expected 1..{len(old)} (after one of its blocks)")
    new = old[:position] + "1" + old[position:]
    return replace(enc, stages=enc.stages[:stage - 1] + (new,) + enc.stages[stage:])


def _swaps(enc: Encoding) -> dict[str, list[Encoding]]:
    blocks, lengths = _flat(enc)
    boundary = [shift_boundary(enc, b, d) for b in range(1, len(lengths)) for d in range(-MAX_STEP, MAX_STEP + 1)
                if d and lengths[b - 1] + d >= 1 and lengths[b] - d >= 1]
    doubling = [shift_doubling(enc, i, d) for i, c in enumerate(blocks) if c == "2"
                for d in range(-MAX_STEP, MAX_STEP + 1) if d and 0 <= i + d < len(blocks) and blocks[i + d] == "1"]
    return {"boundary": boundary, "doubling": doubling}


def _pick(enc: Encoding, options: list[Encoding], bounds: EncodingBounds | None) -> list[Encoding]:
    return sorted({o for o in options if o != enc and (bounds is None or in_bounds(o, bounds))}, key=str)


def swap(enc: Encoding, rng: random.Random, bounds: EncodingBounds | None = None) -> Encoding:
    """One swap: a boundary or a doubling moved by at most 3 blocks (kind drawn first, uniformly
    among kinds that have a valid move, then the move).

    Raises:
        SpecError: no swap gives another encoding (inside ``bounds``, if given).
    """
    kinds = {k: v for k, v in ((k, _pick(enc, o, bounds)) for k, o in _swaps(enc).items()) if v}
    if not kinds:
        raise SpecError(f"{enc}: no swap gives another encoding{'' if bounds is None else ' inside the bounds'}")
    return rng.choice(kinds[rng.choice(sorted(kinds))])


def expand(enc: Encoding, rng: random.Random, bounds: EncodingBounds | None = None) -> Encoding:
    """One expand: a ``1`` inserted after a block of some stage (see :func:`expand_at`).

    Raises:
        SpecError: no insertion stays inside ``bounds`` (too many blocks in all or in every stage).
    """
    options = _pick(enc, [expand_at(enc, s + 1, p) for s, st in enumerate(enc.stages)
                          for p in range(1, len(st) + 1)], bounds)
    if not options:
        raise SpecError(f"{enc}: no expand stays inside the bounds ({enc.num_blocks} blocks already)")
    return rng.choice(options)


def serial_child(enc: Encoding, rng: random.Random, bounds: EncodingBounds, max_ops: int = 3) -> Encoding:
    """A serial-phase child: 1..``max_ops`` morphs, each a swap or an expand (uniform among those
    that apply inside ``bounds``); drawn again while the morphs undo each other.

    Args:
        enc: the parent, inside ``bounds``.
        rng: the only source of randomness (same seed, same child).
        bounds: the space (:func:`spnas_bounds` for the published one).
        max_ops: most morphs per child (the authors': 3).

    Returns:
        An encoding inside ``bounds``, different from ``enc``, with as many doublings.

    Raises:
        SpecError: ``enc`` is outside ``bounds``, ``max_ops`` < 1, or no morph applies.
    """
    check_encoding(enc, bounds)
    if max_ops < 1:
        raise SpecError(f"serial_child: max_ops must be >= 1, got {max_ops}")
    ops = {"expand": expand, "swap": swap}
    for _ in range(100):
        child = enc
        for _ in range(rng.randint(1, max_ops)):
            names = sorted(ops)
            rng.shuffle(names)
            for name in names:
                try:
                    child = ops[name](child, rng, bounds)
                    break
                except SpecError:
                    continue
            else:
                raise SpecError(f"{enc}: neither a swap nor an expand applies to {child} inside the bounds")
        if child != enc:
            return child
    raise SpecError(f"{enc}: 100 draws of morphs all gave the parent back")


@functools.lru_cache(maxsize=1024)
def parallel_stage_gmacs(text: str, input_size: tuple[int, int]) -> tuple[float, tuple[float, ...]]:
    """MACs of a backbone's serial trunk and of one parallel copy (with its merge) per stage.

    Counted on the meta device like :mod:`smnas.engine.cost`; copies add linearly, so a candidate
    costs ``serial + sum(k_s * per_copy[s])``.

    Args:
        text: an encoding string (its parallel counts are ignored).
        input_size: (width, height) of the image the backbone sees.

    Returns:
        (serial GMACs, per-stage GMACs of one copy), at ``input_size``.
    """
    import torch  # here: torch takes seconds to import and the serial operators do not need it

    from smnas.engine.measure import count_macs
    from smnas.models.backbones import build_backbone

    serial = parse_encoding(text).serial
    w, h = input_size

    def macs(e: Encoding) -> int:  # integers, so a copy's cost is an exact difference
        with torch.device("meta"):
            return count_macs(build_backbone(str(e)), torch.empty(1, 3, h, w))

    base = macs(serial)
    one = [macs(replace(serial, parallel=tuple(int(i == s) for i in range(len(serial.stages))))) - base
           for s in range(len(serial.stages))]
    return base / 1e9, tuple(m / 1e9 for m in one)


def count_probabilities(costs: tuple[float, ...], max_count: int) -> list[list[float]]:
    """P(k_s = k) for k = 0..max_count per stage: ``rho_s**k`` normalised, ``rho_s = min(costs) / c_s``.

    Example: costs (1, 2), max_count 3 -> [[.25, .25, .25, .25], [8/15, 4/15, 2/15, 1/15]].
    """
    if not costs or min(costs) <= 0:
        raise SpecError(f"parallel sampler: stage costs must be positive, got {list(costs)}")
    out = []
    for c in costs:
        rho = min(costs) / c
        weights = [rho**k for k in range(max_count + 1)]
        out.append([x / sum(weights) for x in weights])
    return out


def sample_parallel(enc: Encoding, rng: random.Random, max_gmacs: float, input_size: tuple[int, int],
                    max_count: int = 3, attempts: int = 1000) -> Encoding:
    """A parallel-phase candidate: ``enc``'s serial network with drawn counts per stage.

    Args:
        enc: the serial network (a parallel field, if any, is replaced).
        rng: the only source of randomness (same seed, same candidate).
        max_gmacs: limit on the whole backbone's GMACs at ``input_size``.
        input_size: (width, height).
        max_count: most copies per stage (the authors' code: 3).
        attempts: draws before giving up.

    Returns:
        An encoding with at least one copy and ``serial + sum(k_s * c_s) <= max_gmacs``.

    Raises:
        SpecError: even the cheapest single copy exceeds the limit, or no draw fits in ``attempts``.
    """
    if max_count < 1:
        raise SpecError(f"parallel sampler: max_count must be >= 1, got {max_count}")
    base, costs = parallel_stage_gmacs(str(enc.serial), tuple(input_size))
    if base + min(costs) > max_gmacs:
        cheapest = costs.index(min(costs)) + 1
        raise SpecError(f"{enc.serial}: no parallel candidate fits {max_gmacs} GMACs: the serial network has "
                        f"{base:.4g} and the cheapest copy (stage {cheapest}) adds {min(costs):.4g}")
    probs = count_probabilities(costs, max_count)
    for _ in range(attempts):
        counts = tuple(rng.choices(range(max_count + 1), weights=p)[0] for p in probs)
        if any(counts) and base + sum(k * c for k, c in zip(counts, costs)) <= max_gmacs:
            return replace(enc.serial, parallel=counts)
    raise SpecError(f"{enc.serial}: no parallel candidate within {max_gmacs} GMACs in {attempts} draws")
