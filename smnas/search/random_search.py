"""Random search over the same spaces, the baseline the evolution must beat.

Each generation draws ``n`` architectures uniformly from the stage's space, never one evaluated
before, with the same budget and training as the evolution (the comparison NAS papers ask for:
Li & Talwalkar, "Random Search and Reproducibility for NAS", UAI 2019).

- Stage one: uniform over the valid structures (:meth:`StageOneSpace.sample`).
- Stage two (one group): the group's structure kept, its backbone a uniform draw of the encodings
  of its block family inside the bounds (:func:`sample_encoding`), FPN channels uniform.

    rows = random_generation("stage2", 1, 8, seed=0, space2=space2, structure=spec, evaluated=seen)
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from smnas.errors import SmnasError
from smnas.models.encoding import Encoding, EncodingBounds, in_bounds
from smnas.models.spec import BackboneSpec, DetectorSpec
from smnas.search.seeding import family_encoding
from smnas.search.space import StageOneSpace, StageTwoSpace


def sample_encoding(block: str, bounds: EncodingBounds, rng: random.Random, max_tries: int = 10_000) -> Encoding:
    """An encoding of ``block`` drawn from ``bounds``: the total block count uniform in its range,
    stage lengths uniform among the splits that fit, doubling positions uniform, base uniform.

    Raises:
        SmnasError: no encoding inside the bounds was drawn in ``max_tries`` tries.
    """
    lo_d = bounds.min_doublings
    for _ in range(max_tries):
        total = rng.randint(bounds.min_blocks, bounds.max_blocks)
        cuts = sorted(rng.sample(range(1, total), bounds.num_stages - 1)) if total >= bounds.num_stages else None
        if cuts is None:
            continue
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
        if not all(bounds.stage_ok(n) for n in lengths):
            continue
        hi_d = total if bounds.max_doublings is None else min(total, bounds.max_doublings)
        if lo_d > hi_d:
            continue
        doubled = set(rng.sample(range(total), rng.randint(lo_d, hi_d)))
        flat = "".join("2" if i in doubled else "1" for i in range(total))
        stages, i = [], 0
        for n in lengths:
            stages.append(flat[i:i + n])
            i += n
        enc = Encoding(block, rng.choice(bounds.base_channels), tuple(stages))
        if in_bounds(enc, bounds):
            return enc
    raise SmnasError(f"no {block} encoding drawn inside the bounds in {max_tries} tries: are they satisfiable?")


def random_stage2(structure: DetectorSpec, space2: StageTwoSpace, rng: random.Random) -> DetectorSpec:
    """``structure`` with a random backbone encoding of its family and random FPN channels."""
    enc = sample_encoding(family_encoding(structure.backbone).block, space2.bounds, rng)
    neck = structure.neck
    if neck.kind == "fpn":
        neck = replace(neck, channels=rng.choice(space2.fpn_channels))
    return replace(structure, backbone=BackboneSpec(str(enc)), neck=neck, norm=space2.norm).validate()


def random_generation(stage: str, generation: int, n: int, seed: int, *, space1: StageOneSpace | None = None,
                      space2: StageTwoSpace | None = None, structure: DetectorSpec | None = None,
                      evaluated: set[str] | frozenset[str] = frozenset(), max_tries: int | None = None) -> list[dict[str, Any]]:
    """``n`` new uniform samples for generation ``generation`` (rows as the evolution's, parent "").

    The draw depends on (seed, stage, generation) only; architectures in ``evaluated`` are skipped.
    """
    from smnas.search.evolution import _row, generation_rng

    rng = generation_rng(seed, f"random:{stage}", generation)
    taken, rows = set(evaluated), []
    if space1 is not None:
        for spec in space1.sample(min(space1.size(), n + len(taken)), seed=rng.randrange(2**31)):
            if str(spec) not in taken and len(rows) < n:
                taken.add(str(spec))
                rows.append(_row(spec, "", stage, generation))
        return rows
    if space2 is None or structure is None:
        raise SmnasError("random_generation needs space1 (stage one) or space2 and a structure (stage two)")
    for _ in range(max_tries if max_tries is not None else 50 * max(n, 1)):
        spec = random_stage2(structure, space2, rng)
        if str(spec) not in taken:
            taken.add(str(spec))
            rows.append(_row(spec, "", stage, generation))
            if len(rows) == n:
                break
    return rows
