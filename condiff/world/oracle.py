"""The exact oracle: image -> objects (shape, colour, bounding box) -> verdict against a caption, with a reason."""
from __future__ import annotations

from collections import Counter
import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .grammar import BACKGROUND, COLOURS, Category, PromptSpec, parse_caption
from .render import along_across

_NAMES = tuple(COLOURS)
_BG = np.array(BACKGROUND, dtype=np.float64)
_DIRS = np.array([COLOURS[c] for c in _NAMES], dtype=np.float64) - _BG  # (C, 3)
MAX_RESIDUAL = 70.0  # a pixel farther than this from every colour line is of no world colour
SMALL_LARGE_SPLIT = 0.31  # bounding-box side (fraction of canvas) between small (0.22) and large (0.40)
RELATION_THRESHOLD = 0.15
MIN_AREA = 0.25 * 0.5 * 0.2 ** 2  # a quarter of the smallest triangle's area (fraction of canvas area)
MIN_SIDE = 0.1  # half the smallest object's side: thinner components (lines, specks) are noise, not objects


@dataclass(frozen=True)
class DetectedObject:
    shape: str  # circle | square | triangle | unknown
    colour: str  # a world colour, or "unknown"
    cx: float  # bounding-box centre, fraction of the canvas side
    cy: float
    w: float  # bounding-box width and height, fractions of the canvas side
    h: float
    fill: float  # area / bounding-box area (square 1, circle pi/4, triangle 1/2)
    asym: float  # (mass-centroid row - box-centre row) / height; 1/6 for an upright triangle

    @property
    def side(self) -> float:
        return max(self.w, self.h)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str
    objects: tuple[DetectedObject, ...]


def _coverage(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: colour label (-1 background, C unknown) and alpha (H, W, C) of  pixel = BG + alpha (C - BG)."""
    d = img.astype(np.float64) - _BG  # (H, W, 3)
    alpha = np.clip(d @ _DIRS.T / (_DIRS ** 2).sum(1), 0.0, 1.0)  # (H, W, C)
    residual = np.linalg.norm(d[..., None, :] - alpha[..., None] * _DIRS, axis=-1)  # (H, W, C)
    residual = np.where(alpha >= 0.5, residual, np.inf)
    label = residual.argmin(-1)
    best = np.take_along_axis(residual, label[..., None], -1)[..., 0]
    label = np.where(np.isfinite(best), np.where(best <= MAX_RESIDUAL, label, len(_NAMES)), -1)
    return label, alpha


def _classify(fill: float, asym: float) -> str:
    if asym > 0.08:
        return "triangle"
    if fill > 0.89:
        return "square"
    return "circle" if fill > 0.6 else "unknown"


def _measure(comp: np.ndarray, soft: np.ndarray, colour: str, size: int) -> DetectedObject | None:
    """Soft-mask measurements of one component: extents from the max-coverage profiles."""
    area = soft.sum()
    if area < MIN_AREA * size * size:
        return None
    cols, rows = soft.max(0), soft.max(1)
    w, h = cols.sum(), rows.sum()
    if min(w, h) < MIN_SIDE * size:
        return None
    ys, xs = np.nonzero(comp)
    x0, y0 = xs.min(), ys.min()
    # extents: first covered column + partial coverage of the edge column
    left = x0 + 1 - cols[x0]
    top = y0 + 1 - rows[y0]
    cx, cy = (left + w / 2) / size, (top + h / 2) / size
    yy = np.arange(soft.shape[0])[:, None] + 0.5
    mid = top + h / 2
    asym = ((soft * yy).sum() / area - mid) / h  # centroid below the box centre: 1/6 for a triangle
    fill = area / (w * h)
    return DetectedObject(_classify(fill, asym) if colour != "unknown" else "unknown", colour,
                          float(cx), float(cy), float(w / size), float(h / size), float(fill), float(asym))


def detect_regions(image: np.ndarray) -> list[tuple[DetectedObject, np.ndarray]]:
    """Each object of an image (H, W, 3) uint8 with its pixels (a bool mask, its anti-aliased fringe included),
    sorted left to right."""
    size = image.shape[0]
    label, alpha = _coverage(image)
    objects = []
    for c in range(len(_NAMES) + 1):
        comps, n = ndimage.label(label == c)
        for i, (ys, xs) in enumerate(ndimage.find_objects(comps), start=1):
            if min(ys.stop - ys.start, xs.stop - xs.start) + 2 < MIN_SIDE * size:
                continue  # its fringe adds at most a pixel each side: too thin to measure as an object (a speck)
            ys, xs = slice(max(ys.start - 1, 0), ys.stop + 1), slice(max(xs.start - 1, 0), xs.stop + 1)
            local = comps[ys, xs] == i
            region = np.zeros(label.shape, dtype=bool)  # the component with its anti-aliased fringe
            region[ys, xs] = local | (ndimage.binary_dilation(local) & (label[ys, xs] == -1))
            soft = np.where(region, alpha[..., c] if c < len(_NAMES) else alpha.max(-1), 0.0)
            name = _NAMES[c] if c < len(_NAMES) else "unknown"
            obj = _measure(region, soft, name, size)
            if obj is not None:
                objects.append((obj, region))
    return sorted(objects, key=lambda o: (o[0].cx, o[0].cy))


def detect(image: np.ndarray) -> list[DetectedObject]:
    """Read the objects of an image (H, W, 3) uint8, sorted left to right."""
    return [o for o, _ in detect_regions(image)]


def detect_silhouettes(mask: np.ndarray) -> list[DetectedObject]:
    """Read the objects of a silhouette mask (H, W) bool, each connected component one object, by the same measures
    as detect (its form from fill and asymmetry); colour "unknown". Sorted left to right."""
    size = mask.shape[0]
    comps, n = ndimage.label(mask)
    found = []
    for i in range(1, n + 1):
        region = comps == i
        obj = _measure(region, region.astype(np.float64), "unknown", size)
        if obj is not None:  # _measure leaves an object of unknown colour unclassified
            found.append(dataclasses.replace(obj, shape=_classify(obj.fill, obj.asym)))
    return sorted(found, key=lambda o: (o.cx, o.cy))


def _describe(o: DetectedObject) -> str:
    return f"{o.colour} {o.shape}"


def _match_objects(spec: PromptSpec, found: list[DetectedObject]) -> str | None:
    want = Counter((o.colour, o.shape) for o in spec.objects)
    got = Counter((o.colour, o.shape) for o in found)
    missing, extra = want - got, got - want
    if not missing and not extra:
        return None
    parts = []
    for (colour, shape), n in missing.items():
        near = [f"{c} {s}" for (c, s) in extra if s == shape or c == colour]
        hint = f" (found {', '.join(near)}: wrong colour or shape)" if near else ""
        parts.append(f"missing {n} {colour} {shape}{hint}")
    for (colour, shape), n in extra.items():
        parts.append(f"extra {n} {colour} {shape}")
    return "; ".join(parts)


def _check_sizes(spec: PromptSpec, found: list[DetectedObject]) -> str | None:
    for want in spec.objects:
        if want.size is None:
            continue
        for o in found:
            if (o.colour, o.shape) == (want.colour, want.shape):
                is_large = o.side >= SMALL_LARGE_SPLIT
                if is_large != (want.size == "large"):
                    return f"wrong size: {_describe(o)} has side {o.side:.2f} of the canvas, not {want.size}"
    return None


def find_pair(spec: PromptSpec, found: list[DetectedObject]) -> tuple[DetectedObject, DetectedObject] | None:
    """The detected objects A and B of a two-object prompt (the first of each kind), or None unless both are there."""
    a_spec, b_spec = spec.objects
    a = next((o for o in found if (o.colour, o.shape) == (a_spec.colour, a_spec.shape)), None)
    b = next((o for o in found if (o.colour, o.shape) == (b_spec.colour, b_spec.shape) and o is not a), None)
    return None if a is None or b is None else (a, b)


def relation_holds(along: float, across: float) -> bool:
    """WORLD.md: B - A points mainly along the relation's direction, by at least 15% of the canvas side."""
    return along >= RELATION_THRESHOLD and abs(along) > abs(across)


def _check_relation(spec: PromptSpec, found: list[DetectedObject]) -> str | None:
    a, b = find_pair(spec, found)  # _match_objects has passed: both are there
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if relation_holds(*along_across(spec.relation, dx, dy)):
        return None
    return (f"wrong relation: {_describe(a)} is not {spec.relation.value} {_describe(b)} "
            f"(dx={dx:+.2f}, dy={dy:+.2f})")


def judge_objects(spec: PromptSpec, found: list[DetectedObject]) -> Verdict:
    """Judge detected objects against a prompt spec (WORLD.md 'Judging an image')."""
    reason = _match_objects(spec, found) or _check_sizes(spec, found)
    if reason is None and spec.category is Category.POSITION:
        reason = _check_relation(spec, found)
    return Verdict(reason is None, reason or "ok", tuple(found))


def judge(image: np.ndarray, caption: str | PromptSpec) -> Verdict:
    """Judge an image (H, W, 3) uint8 against a caption."""
    spec = parse_caption(caption) if isinstance(caption, str) else caption
    return judge_objects(spec, detect(image))
