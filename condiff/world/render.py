"""Scene layout (prompt spec -> placed objects) and an anti-aliased, batched renderer at any resolution."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .grammar import BACKGROUND, COLOURS, SHAPES, SIZES, Category, PromptSpec, Relation

MARGIN = 0.03  # free border inside the canvas (fraction of the side)
GAP = 0.07  # minimum gap between two bounding boxes
RELATION_MIN = 0.20  # rendered relations exceed WORLD.md's 15% threshold by a margin
RELATION_DXDY = 0.75  # and keep |dy| <= 0.75 |dx|
UNSIZED = (SIZES["small"], SIZES["large"])


@dataclass(frozen=True)
class PlacedObject:
    """One object on the canvas; centre (cx, cy) and bounding-box side s are fractions of the canvas side."""

    shape: str
    colour: str
    cx: float
    cy: float
    s: float

    @property
    def box(self) -> list[float]:
        """[x0, y0, x1, y1] in [0, 1] of the canvas, rows growing downwards: every shape fills its s x s box."""
        h = self.s / 2
        return [self.cx - h, self.cy - h, self.cx + h, self.cy + h]


def scene_boxes(spec: PromptSpec, placed: list[PlacedObject]) -> list[dict]:
    """WORLD.md v2's record of a scene: each object's phrase ("a small red circle") and box, in the caption's order."""
    return [{"phrase": o.phrase(), "box": p.box} for o, p in zip(spec.objects, placed)]


class LayoutError(RuntimeError):
    pass


def _size(rng: random.Random, size: str | None, n_objects: int) -> float:
    if size is not None:
        return SIZES[size] * rng.uniform(0.97, 1.03)
    hi = UNSIZED[1] if n_objects <= 2 else 0.30  # four large objects do not fit with gaps
    return rng.uniform(UNSIZED[0], hi)


def _apart(a: PlacedObject, b: PlacedObject) -> bool:
    reach = (a.s + b.s) / 2 + GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def along_across(relation: Relation, dx: float, dy: float) -> tuple[float, float]:
    """B's centre minus A's, split along the direction 'A RELATION B' asks for and across it (rows grow down)."""
    ux, uy = {Relation.LEFT_OF: (1, 0), Relation.RIGHT_OF: (-1, 0), Relation.ABOVE: (0, 1), Relation.BELOW: (0, -1)}[relation]
    return dx * ux + dy * uy, dx * uy + dy * ux


def _relation_ok(a: PlacedObject, b: PlacedObject, relation: Relation) -> bool:
    along, across = along_across(relation, b.cx - a.cx, b.cy - a.cy)
    return along >= RELATION_MIN and abs(across) <= RELATION_DXDY * along


def layout(spec: PromptSpec, rng: random.Random, max_tries: int = 2000) -> list[PlacedObject]:
    """Place the objects of a prompt: inside the canvas, non-overlapping, relation satisfied."""
    n = len(spec.objects)
    for _ in range(max_tries):
        placed: list[PlacedObject] = []
        for obj in spec.objects:
            s = _size(rng, obj.size, n)
            lo, hi = s / 2 + MARGIN, 1 - s / 2 - MARGIN
            cand = PlacedObject(obj.shape, obj.colour, rng.uniform(lo, hi), rng.uniform(lo, hi), s)
            if not all(_apart(cand, p) for p in placed):
                break
            placed.append(cand)
        else:
            if spec.category is not Category.POSITION or _relation_ok(*placed, spec.relation):
                return placed
    raise LayoutError(f"could not lay out '{spec.caption}'")


def _inside(shape_id: torch.Tensor, u: torch.Tensor, v: torch.Tensor, cx, cy, s) -> torch.Tensor:
    """Indicator of the filled shape at sub-pixel points; all tensors broadcast to (B, K, H, W)."""
    dx, dy, half = u - cx, v - cy, s / 2
    circle = dx * dx + dy * dy <= half * half
    square = (dx.abs() <= half) & (dy.abs() <= half)
    top = cy - half
    triangle = (dy.abs() <= half) & (dx.abs() <= (v - top) / 2)
    return torch.where(shape_id == 0, circle, torch.where(shape_id == 1, square, triangle))


def render(layouts: list[list[PlacedObject]], resolution: int, supersample: int = 4,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """Render layouts to images in [-1, 1], shape (B, 3, H, W); edges anti-aliased by supersampling."""
    B, K = len(layouts), max(1, max(len(l) for l in layouts))
    params = torch.zeros(B, K, 4, dtype=torch.float32)  # shape id, cx, cy, s
    rgb = torch.zeros(B, K, 3, dtype=torch.float32)
    valid = torch.zeros(B, K, dtype=torch.bool)
    for i, objs in enumerate(layouts):
        for k, o in enumerate(objs):
            params[i, k] = torch.tensor([SHAPES.index(o.shape), o.cx, o.cy, o.s])
            rgb[i, k] = torch.tensor(COLOURS[o.colour])
            valid[i, k] = True
    params, rgb, valid = params.to(device), rgb.to(device), valid.to(device)
    n = resolution * supersample
    grid = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
    u, v = grid.view(1, 1, 1, n), grid.view(1, 1, n, 1)
    p = params[..., None, None]  # (B, K, 4, 1, 1)
    inside = _inside(p[:, :, 0], u, v, p[:, :, 1], p[:, :, 2], p[:, :, 3]) & valid[..., None, None]
    coverage = torch.nn.functional.avg_pool2d(inside.float(), supersample)  # (B, K, H, W)
    bg = torch.tensor(BACKGROUND, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    img = bg + torch.einsum("bkhw,bkc->bchw", coverage, rgb - bg.view(1, 1, 3))
    return img / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
