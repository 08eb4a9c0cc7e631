"""Scene sampling and rendering for the built-in synthetic dataset (:mod:`smnas.data.synthetic`).

:func:`render` draws one image: 2..12 objects of :data:`CLASSES`, told apart by shape; each class
has its own colour and texture distribution, overlapping its neighbours', so colour alone does not
decide. Unlabelled distractors (elongated blobs, irregular shards, lines) and a noise-textured
background add clutter; objects are drawn back to front and cover each other. Sizes (as pixel
areas) are log-uniform plus a share of large ones, so that COCO's small (< 32² px), medium and
large (> 96² px) ranges are all present at 256x192 (about 50%, 40% and 10% of the labels).

Three visual domains, one per :data:`VARIANTS` entry, so that transfer means something:

- ``coco``: muted noise-texture backgrounds.
- ``voc``: warm wood-grain backgrounds with a warm colour cast.
- ``bdd``: sky over road with lane marks, weather and time of day.

How hard the scenes are (object sizes and count, how much colour tells the class, sensor
noise) is a :class:`SceneOptions`; its defaults are the above.

For each drawn item :func:`render` reports what stayed visible (:class:`Instance`): the tight box
around its visible pixels, its visible share, truncation and occlusion. Which of those get labels
is the writers' business. Every image is drawn from its own generator seeded by
``(seed, variant, split, index)``: the same arguments give the same pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
VARIANTS: tuple[str, ...] = ("coco", "voc", "bdd")
SPLITS: tuple[str, ...] = ("train", "val")
MAX_OBJECTS = 12

_TEXTURES = ("solid", "stripes", "checker", "dots", "gradient", "noise")  # class k prefers k
_NOISE = 22.0         # sensor noise: uniform over +-11 grey levels (sigma 6.4); a Gaussian costs 4x
_P_LARGE = 0.25       # share of objects drawn large; the rest are log-uniform in size
_LARGE = (0.27, 0.4)  # size range of the large share (fractions of the shorter side)
_OBJECT_SIZE = (0.025, 0.25)  # log-uniform size range of the rest
_MIN_SIZE_PX = 2.5    # no object smaller than this (equal-area radius in pixels)
_HUE_SPREAD = 0.09    # class hue centres are 1/6 apart: neighbours overlap
# Pixel area of each shape as a multiple of its circumradius squared (measured at r = 60).
_FILL = {"circle": 3.14, "square": 2.04, "triangle": 1.33, "star": 1.35, "ring": 2.22,
         "cross": 1.96}
_WEATHER = ("clear", "overcast", "partly cloudy", "rainy", "snowy", "foggy")
_SCENES = ("city street", "highway", "residential")
_TIMES = ("daytime", "daytime", "daytime", "night", "dawn/dusk")


@dataclass(frozen=True)
class SceneOptions:
    """How hard the scenes are; the defaults are the generator's own.

    Sizes are the radius of the disc of an object's pixel area, as fractions of the image's
    shorter side (at 160x120, size 0.25 is 30 px: the area of a 53x53 px square).

    Attributes:
        object_size: ``(lo, hi)``, ``0 < lo <= hi <= 0.5``: the log-uniform size range of the
            objects not drawn large (never below 2.5 px).
        large_share: share of objects drawn large instead, uniform in 0.27..0.4, in [0, 1].
        max_objects: objects per image are uniform in ``min(2, max_objects)..max_objects``, >= 1
            (fewer may be labelled: covered ones are not).
        hue_spread: sd of an object's hue about its class's centre (centres are 1/6 apart):
            0 lets colour alone decide the class, the default 0.09 does not.
        noise: sensor noise, uniform over +-noise/2 grey levels, >= 0.
        distractors: draw the unlabelled clutter (lines, blobs, shards) between the objects.
    """

    object_size: tuple[float, float] = _OBJECT_SIZE
    large_share: float = _P_LARGE
    max_objects: int = MAX_OBJECTS
    hue_spread: float = _HUE_SPREAD
    noise: float = _NOISE
    distractors: bool = True

    def __post_init__(self) -> None:
        size = self.object_size
        checks = (("object_size", len(size) == 2 and 0 < size[0] <= size[1] <= 0.5,
                   "(lo, hi) with 0 < lo <= hi <= 0.5"),
                  ("large_share", 0 <= self.large_share <= 1, "in [0, 1]"),
                  ("max_objects", isinstance(self.max_objects, int) and self.max_objects >= 1,
                   "an integer >= 1"),
                  ("hue_spread", self.hue_spread >= 0, ">= 0"),
                  ("noise", self.noise >= 0, ">= 0"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"SceneOptions: {name} must be {expected}, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> SceneOptions:
        """The options among ``values`` (the config's ``data.builtin``; other keys are not
        looked at); those absent take the defaults."""
        picked = {f.name: values[f.name] for f in fields(cls) if f.name in values}
        if "object_size" in picked:
            picked["object_size"] = tuple(float(v) for v in picked["object_size"])
        return cls(**picked)


@dataclass(frozen=True)
class Item:
    """One thing to draw: an object (``cls >= 0``) or a distractor (``cls == -1``)."""

    kind: str            # a CLASSES name, or "blob", "shard", "line"
    cls: int
    cx: float
    cy: float
    r: float             # circumradius in pixels
    angle: float         # radians
    colour: np.ndarray   # (3,) RGB in [0, 1]
    texture: str
    extra: tuple[float, ...] = ()  # kind-specific: blob aspect, shard radii, line width


@dataclass(frozen=True)
class Instance:
    """What ended up visible of an item after everything was drawn."""

    kind: str
    cls: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1: 0-based inclusive pixel indices
    pixels: int                     # visible pixel count
    visibility: float               # visible pixels / all pixels of the item's shape
    truncated: bool                 # part of the shape lies outside the image
    occluded: bool                  # part of the in-image shape is covered by later items


# ---------------------------------------------------------------- scene sampling

def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    h6 = (h % 1.0) * 6.0
    i, f = int(h6), h6 - int(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6],
                    dtype=np.float32)


def _sample_object(rng: np.random.Generator, cls: int, w: int, h: int,
                   opts: SceneOptions = SceneOptions()) -> Item:
    side = min(w, h)
    # Size is drawn as pixel area (radius of the disc of equal area), so that no class is
    # rarely large just because its shape fills less of its circle (a star: 43%).
    if rng.random() < opts.large_share:  # 52..77 px at 256x192: mostly COCO "large" (> 96^2 px)
        a = rng.uniform(*_LARGE) * side
    else:  # by default log-uniform 4.8..48 px: small and medium alike
        lo, hi = opts.object_size
        a = math.exp(rng.uniform(math.log(max(_MIN_SIZE_PX, lo * side)),
                                 math.log(max(_MIN_SIZE_PX, hi * side))))
    r = float(a * math.sqrt(math.pi / _FILL[CLASSES[cls]]))
    margin = min(0.75 * r, 0.45 * side)  # only a rim of the shape can leave the frame
    cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
    hue = cls / len(CLASSES) + rng.normal(0.0, opts.hue_spread)
    colour = _hsv_to_rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    texture = (_TEXTURES[cls] if rng.random() < 0.55 else _TEXTURES[rng.integers(len(_TEXTURES))])
    return Item(CLASSES[cls], cls, cx, cy, r, rng.uniform(0, 2 * math.pi), colour, texture)


def _sample_distractor(rng: np.random.Generator, kind: str, w: int, h: int) -> Item:
    side = min(w, h)
    colour = _hsv_to_rgb(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.0))
    texture = _TEXTURES[rng.integers(len(_TEXTURES))]
    if kind == "line":
        r, extra = rng.uniform(0.15, 0.6) * side, (float(rng.integers(1, 4)),)
        texture = "solid"
    elif kind == "blob":
        r, extra = rng.uniform(0.04, 0.3) * side, (rng.uniform(2.0, 4.0),)
    else:  # shard: an irregular polygon
        r = rng.uniform(0.04, 0.3) * side
        extra = tuple(rng.uniform(0.35, 1.0, size=int(rng.integers(5, 8))).tolist())
    return Item(kind, -1, rng.uniform(0, w), rng.uniform(0, h), float(r),
                 rng.uniform(0, 2 * math.pi), colour, texture, extra)


def _sample_scene(rng: np.random.Generator, w: int, h: int, empty: bool,
                  opts: SceneOptions) -> list[Item]:
    """Items back to front; the front item is always an object, so it is never covered."""
    n_obj = 0 if empty else int(rng.integers(min(2, opts.max_objects), opts.max_objects + 1))
    objects = [_sample_object(rng, int(rng.integers(len(CLASSES))), w, h, opts)
               for _ in range(n_obj)]
    # Larger ones mostly further back, with jitter so small objects also get covered.
    depth = [o.r * math.sqrt(_FILL[o.kind]) * rng.lognormal(0.0, 0.5) for o in objects]
    order = [objects[i] for i in np.argsort(depth, kind="stable")[::-1]]
    kinds = ["blob"] * int(rng.integers(0, 3)) + ["shard"] * int(rng.integers(0, 3))
    kinds += ["line"] * int(rng.integers(1, 5))
    for kind in kinds if opts.distractors else ():
        order.insert(int(rng.integers(0, max(len(order), 1))), _sample_distractor(rng, kind, w, h))
    return order


# ---------------------------------------------------------------- rendering

def _shape_mask(item: Item) -> tuple[Image.Image, int, int]:
    """Rasterise ``item`` on a local square canvas.

    Returns:
        (mask, x0, y0): an "L" image, 255 inside the shape and 0 outside, and the image
        coordinates of its top-left corner (may be negative: shapes can leave the frame).
    """
    ext = item.r + 3
    x0, y0 = int(math.floor(item.cx - ext)), int(math.floor(item.cy - ext))
    size = int(math.ceil(2 * ext)) + 1
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    ox, oy, r, a = item.cx - x0, item.cy - y0, item.r, item.angle

    def poly(radii: Sequence[float], angles: np.ndarray, fill: int = 255) -> None:
        draw.polygon([(ox + q * math.cos(t), oy + q * math.sin(t)) for q, t in zip(radii, angles)],
                     fill=fill)

    k = item.kind
    if k in ("circle", "ring"):
        draw.ellipse((ox - r, oy - r, ox + r, oy + r), fill=255)
        if k == "ring":
            q = 0.55 * r
            draw.ellipse((ox - q, oy - q, ox + q, oy + q), fill=0)
    elif k in ("square", "triangle"):
        n = 4 if k == "square" else 3
        poly([r] * n, a + 2 * math.pi * np.arange(n) / n)
    elif k == "star":
        poly([r, 0.45 * r] * 5, a + math.pi * np.arange(10) / 5)
    elif k == "cross":
        t, e = 0.3, 0.95  # arm half-width and reach, as fractions of r
        pts = [(-t, -e), (t, -e), (t, -t), (e, -t), (e, t), (t, t), (t, e), (-t, e), (-t, t),
               (-e, t), (-e, -t), (-t, -t)]
        poly([r * math.hypot(x, y) for x, y in pts],
             a + np.array([math.atan2(y, x) for x, y in pts]))
    elif k == "blob":
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        ex, ey = r * np.cos(t), r / item.extra[0] * np.sin(t)
        poly(np.hypot(ex, ey), a + np.arctan2(ey, ex))
    elif k == "shard":
        n = len(item.extra)
        poly([r * q for q in item.extra], a + 2 * math.pi * np.arange(n) / n)
    elif k == "line":
        dx, dy = r * math.cos(a), r * math.sin(a)
        draw.line((ox - dx, oy - dy, ox + dx, oy + dy), fill=255, width=int(item.extra[0]))
    else:
        raise ValueError(f"_shape_mask: unknown item kind {k!r}")
    return canvas, x0, y0


def _shade(rng: np.random.Generator, item: Item, shape: tuple[int, int]) -> np.ndarray | None:
    """How much the item's texture darkens each pixel of its canvas: (h, w) float32 in [0, 1),
    or None for a plain colour."""
    hh, ww = shape
    yy = np.arange(hh, dtype=np.float32)[:, None]  # (h, 1): broadcasting beats a full grid
    xx = np.arange(ww, dtype=np.float32)[None, :]  # (1, w)
    period = rng.uniform(3.0, 9.0)
    kind = item.texture
    if kind in ("stripes", "gradient"):
        along = xx * np.float32(math.cos(item.angle)) + yy * np.float32(math.sin(item.angle))
        if kind == "stripes":
            pattern = (np.sin(along * np.float32(2 * math.pi / period)) > 0).astype(np.float32)
        else:
            pattern = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif kind == "checker":
        pattern = ((xx // period + yy // period) % 2).astype(np.float32)
    elif kind == "dots":
        pattern = (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2
                   < (period / 3) ** 2).astype(np.float32)
    elif kind == "noise":
        pattern = rng.random(shape, dtype=np.float32)
    else:
        return None
    return np.broadcast_to(pattern * np.float32(rng.uniform(0.25, 0.6)), shape)


def _draw_items(rng: np.random.Generator, img: Image.Image, items: list[Item]) -> list[Instance]:
    """Paint ``items`` onto the RGB image ``img`` in order; return what is visible of each."""
    w, h = img.size
    label = Image.new("L", (w, h), 0)  # index + 1 of the item that owns each pixel, 0: none
    placed = {}  # index -> (crop in the image, pixels of the whole shape, pixels inside)
    for idx, item in enumerate(items, 1):
        canvas, x0, y0 = _shape_mask(item)
        mask = np.asarray(canvas)  # (size, size) uint8, 255 inside
        box = (x0, y0, x0 + canvas.width, y0 + canvas.height)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(box[2], w), min(box[3], h)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        # PIL pastes in C and clips to the image: colour through the shape mask, then the
        # texture as black blended in by alpha = mask * shade, i.e. colour * (1 - shade).
        img.paste(tuple(int(c * 255 + 0.5) for c in item.colour), box, canvas)
        shade = _shade(rng, item, mask.shape)
        if shade is not None:
            img.paste((0, 0, 0), box, Image.fromarray((mask * shade).astype(np.uint8)))
        label.paste(idx, box, canvas)
        inside = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        placed[idx] = ((cx0, cy0, cx1, cy1), int(np.count_nonzero(mask)),
                       int(np.count_nonzero(inside)))
    owner = np.asarray(label)
    counts = np.bincount(owner.ravel(), minlength=len(items) + 1)  # visible pixels per index
    instances = []
    for idx, ((cx0, cy0, cx1, cy1), full, inside) in placed.items():
        pixels = int(counts[idx])
        if pixels == 0:
            continue
        vis = owner[cy0:cy1, cx0:cx1] == idx  # an item's pixels never leave its own crop
        cols, rows = np.flatnonzero(vis.any(axis=0)), np.flatnonzero(vis.any(axis=1))
        box = (cx0 + int(cols[0]), cy0 + int(rows[0]), cx0 + int(cols[-1]), cy0 + int(rows[-1]))
        item = items[idx - 1]
        instances.append(Instance(item.kind, item.cls, box, pixels, pixels / full,
                                   inside < full, pixels < inside))
    return instances


def _grid_image(grid: np.ndarray, w: int, h: int) -> Image.Image:
    """Bicubic upsampling of a coarse (gh, gw, 1 or 3) array in [0, 1] to an L/RGB image (w, h)."""
    u8 = (np.clip(grid, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(u8[..., 0] if grid.shape[2] == 1 else u8).resize((w, h), Image.BICUBIC)


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bicubically; (h, w) float32 in [0, 1]."""
    grid = rng.random((max(2, cells * h // w), cells, 1), dtype=np.float32)
    return np.asarray(_grid_image(grid, w, h)).astype(np.float32) / np.float32(255.0)


def _background(rng: np.random.Generator, variant: str, w: int, h: int,
                attrs: dict[str, str]) -> Image.Image:
    """The domain's background, an RGB image of size (w, h)."""
    if variant == "coco":  # muted colours mixed by noise at two scales, upsampled once
        c1, c2 = (0.5 + 0.6 * (_hsv_to_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))
                               - 0.5) for _ in range(2))
        gw, gh = 24, max(2, 24 * h // w)
        mix = _smooth_noise(rng, gw, gh, 4)[..., None]  # (gh, gw, 1)
        grid = c1 + (c2 - c1) * mix + 0.3 * (rng.random((gh, gw, 3), dtype=np.float32) - 0.5)
        return _grid_image(grid, w, h)
    if variant == "voc":  # warm wood grain: stripes bent by smooth noise
        base = _hsv_to_rgb(rng.uniform(0.03, 0.12), rng.uniform(0.3, 0.65), rng.uniform(0.45, 0.85))
        rows = np.arange(h, dtype=np.float32)[:, None] / rng.uniform(4.0, 10.0)
        grain = np.sin(2 * math.pi * (rows + 3.0 * _smooth_noise(rng, w, h, 3)))  # (h, w)
        return Image.fromarray((base * 255 * (0.85 + 0.15 * grain[..., None])).astype(np.uint8))
    return _road_background(rng, w, h, attrs)


def _road_background(rng: np.random.Generator, w: int, h: int,
                     attrs: dict[str, str]) -> Image.Image:
    """BDD domain: sky gradient above a horizon, grey road with lane marks and buildings."""
    horizon = int(h * rng.uniform(0.35, 0.55))
    clear = attrs["weather"] in ("clear", "partly cloudy")
    top = np.array([0.35, 0.55, 0.9] if clear else [0.6, 0.62, 0.66], np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    sky = np.broadcast_to(top * (1 - t) + np.float32(0.85) * t, (horizon, w, 3))
    road = rng.uniform(0.28, 0.5) + 0.12 * (_smooth_noise(rng, w, h - horizon, 16) - 0.5)
    road = np.repeat(road[..., None], 3, axis=2)
    img = Image.fromarray((np.concatenate([sky, road]) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if attrs["scene"] != "highway":  # building blocks on the horizon
        for _ in range(int(rng.integers(2, 7))):
            bx, bw = rng.uniform(0, w), rng.uniform(0.05, 0.2) * w
            bh = rng.uniform(0.1, 0.8) * horizon
            grey = int(rng.integers(60, 180))
            draw.rectangle((bx, horizon - bh, bx + bw, horizon), fill=(grey, grey, grey + 10))
    vx = w * rng.uniform(0.35, 0.65)  # vanishing point of the lane marks
    for foot in (-0.3, 0.5, 1.3):
        colour = (230, 200, 40) if foot == 0.5 else (235, 235, 235)
        draw.line((vx, horizon, foot * w, h), fill=colour, width=max(1, w // 128))
    return img


def _finish(rng: np.random.Generator, img: Image.Image, variant: str,
            attrs: dict[str, str], noise: float = _NOISE) -> np.ndarray:
    """Domain lighting (a per-channel gain and bias) and sensor noise; returns (h, w, 3) uint8."""
    gain, bias = np.ones(3, np.float32), np.zeros(3, np.float32)  # on 0..255 values
    if variant == "voc":
        gain[:] = (1.08, 1.0, 0.86)  # warm indoor light
    elif variant == "bdd":
        if attrs["timeofday"] == "night":
            gain, bias = gain * 0.35, bias + (0.0, 0.0, 10.0)
        elif attrs["timeofday"] == "dawn/dusk":
            gain = gain * np.array([1.0, 0.82, 0.65], np.float32)
        if attrs["weather"] == "foggy":
            gain, bias = gain * 0.55, bias * 0.55 + 0.45 * 200.0
    out = np.asarray(img).astype(np.float32)
    out *= gain
    out += bias + np.float32(0.5 - noise / 2)  # +0.5: round, not truncate, below
    out += rng.random(out.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(out, 0.0, 255.0, out=out).astype(np.uint8)


def render(seed: int, variant: str, split: str, index: int, size: tuple[int, int],
           empty: bool = False, scene: SceneOptions = SceneOptions(),
           ) -> tuple[np.ndarray, list[Instance], dict[str, str]]:
    """Draw one image of a variant's domain.

    Args:
        seed: non-negative integer; with ``variant``, ``split`` and ``index`` it seeds the image's
            own generator.
        variant: one of :data:`VARIANTS`, the visual domain.
        split: one of :data:`SPLITS`.
        index: 0-based image index within the split.
        size: ``(width, height)`` in pixels.
        empty: draw distractors only, no objects.
        scene: how hard the scene is (object sizes and count, colour, noise).

    Returns:
        (pixels, instances, attrs): pixels a (height, width, 3) uint8 array; what is visible of
        each drawn item (objects and distractors), back to front; the BDD frame attributes
        ``weather``, ``scene`` and ``timeofday`` (drawn for every variant).
    """
    rng = np.random.default_rng([seed, VARIANTS.index(variant), SPLITS.index(split), index])
    w, h = size
    attrs = {"weather": _WEATHER[rng.integers(len(_WEATHER))],
             "scene": _SCENES[rng.integers(len(_SCENES))],
             "timeofday": _TIMES[rng.integers(len(_TIMES))]}
    img = _background(rng, variant, w, h, attrs)
    instances = _draw_items(rng, img, _sample_scene(rng, w, h, empty, scene))
    return _finish(rng, img, variant, attrs, scene.noise), instances, attrs

