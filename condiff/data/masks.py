"""Random training masks for an inpainting model (GLIDE's fine-tune; LaMa-style free-form strokes): 1 = repaint.

Drawn from a torch.Generator, so a run that resumes draws the same masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch


@dataclass
class InpaintConfig:
    """Mask kinds and their shares: a box, free-form strokes, or the whole image (which trains plain text-to-image,
    as Stable Diffusion's inpainting model does with 25 %); box sides are fractions of the image side."""

    p_box: float = 0.5
    p_freeform: float = 0.25
    p_full: float = 0.25
    p_object: float = 0.0  # one object's box of the scene (data with boxes), grown by up to object_margin of the side
    object_margin: float = 0.06
    box_min: float = 0.15
    box_max: float = 0.6
    strokes_max: int = 4
    stroke_width: tuple[float, float] = (0.08, 0.25)

    def validate(self) -> None:
        shares = (self.p_box, self.p_freeform, self.p_full, self.p_object)
        if min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"inpaint: p_box, p_freeform, p_full and p_object must be shares summing to 1, got {shares}")
        if not 0 < self.box_min <= self.box_max <= 1:
            raise ValueError(f"inpaint: need 0 < box_min <= box_max <= 1, got {self.box_min}, {self.box_max}")
        lo, hi = self.stroke_width
        if not 0 < lo <= hi <= 1 or self.strokes_max < 1:
            raise ValueError(f"inpaint: bad strokes (strokes_max {self.strokes_max}, stroke_width {self.stroke_width})")


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def box_mask(g: torch.Generator, size: int, lo: float, hi: float) -> torch.Tensor:
    """One axis-aligned rectangle with sides in [lo, hi] of the image side, placed uniformly."""
    h, w = (max(1, round(_uniform(g, lo, hi) * size)) for _ in range(2))
    y, x = (int(torch.randint(0, size - s + 1, (), generator=g)) for s in (h, w))
    m = torch.zeros(size, size)
    m[y:y + h, x:x + w] = 1
    return m


def stroke_mask(g: torch.Generator, size: int, strokes_max: int, width: tuple[float, float]) -> torch.Tensor:
    """1..strokes_max brush strokes, each a random walk of 2..5 segments of one random width (pixels within half a
    width of the polyline)."""
    starts, ends, radii = [], [], []
    for _ in range(int(torch.randint(1, strokes_max + 1, (), generator=g))):
        r = _uniform(g, *width) * size / 2
        a = (torch.rand(2, generator=g) * size).tolist()
        for _ in range(int(torch.randint(2, 6, (), generator=g))):
            angle, length = _uniform(g, 0, 2 * math.pi), _uniform(g, 0.1, 0.4) * size
            b = [min(max(a[0] + length * math.cos(angle), 0), size), min(max(a[1] + length * math.sin(angle), 0), size)]
            starts.append(a), ends.append(b), radii.append(r)
            a = b
    a, b, r = torch.tensor(starts), torch.tensor(ends), torch.tensor(radii)  # (S, 2), (S, 2), (S,)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    p = torch.stack([xx, yy], -1).view(1, -1, 2)  # pixel centres (1, HW, 2)
    ab = (b - a)[:, None]  # (S, 1, 2)
    u = (((p - a[:, None]) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-6)).clamp(0, 1)  # nearest point, (S, HW)
    d = (p - (a[:, None] + u[..., None] * ab)).norm(dim=-1)
    return (d <= r[:, None]).any(0).view(size, size).float()


def object_mask(g: torch.Generator, size: int, boxes: list[dict], margin: float) -> torch.Tensor:
    """One of the scene's boxes ([x0, y0, x1, y1] in [0, 1]), grown by a random margin: where an object is re-drawn."""
    x0, y0, x1, y1 = boxes[int(torch.randint(len(boxes), (), generator=g))]["box"]
    grow = _uniform(g, 0, margin)
    m = torch.zeros(size, size)
    m[max(0, math.floor((y0 - grow) * size)):math.ceil((y1 + grow) * size),
      max(0, math.floor((x0 - grow) * size)):math.ceil((x1 + grow) * size)] = 1
    return m


def training_masks(g: torch.Generator, n: int, size: int, cfg: InpaintConfig,
                   box_lists: list[list[dict]] | None = None) -> torch.Tensor:
    """(n, 1, size, size) masks, 1 = repaint: each a box, strokes, the whole image or (given the scenes' boxes) one
    object's box, with the config's shares; a scene without boxes gets a random box instead of an object's."""
    out = []
    for k, u in enumerate(torch.rand(n, generator=g).tolist()):
        if u >= cfg.p_box + cfg.p_freeform + cfg.p_full:
            boxes = box_lists[k] if box_lists is not None else []
            out.append(object_mask(g, size, boxes, cfg.object_margin) if boxes else box_mask(g, size, cfg.box_min, cfg.box_max))
        elif u < cfg.p_box:
            out.append(box_mask(g, size, cfg.box_min, cfg.box_max))
        elif u < cfg.p_box + cfg.p_freeform:
            out.append(stroke_mask(g, size, cfg.strokes_max, cfg.stroke_width))
        else:
            out.append(torch.ones(size, size))
    return torch.stack(out)[:, None]


def latent_mask(mask: torch.Tensor, shape: tuple[int, ...], nearest: bool = False) -> torch.Tensor:
    """A pixel mask at the sampler's size: a cell is repainted if any of its pixels is (max-pooling), so that the
    known latent cells are those whose pixels are all kept; nearest: if its nearest pixel is (diffusers' F.interpolate,
    the top-left pixel of each cell)."""
    h, w = shape[-2:]
    m = mask.float()
    if m.shape[-2:] != (h, w):
        pool = torch.nn.functional.interpolate if nearest else torch.nn.functional.adaptive_max_pool2d
        m = pool(m, (h, w))
    return m


def inpaint_inputs(images: torch.Tensor, masks: torch.Tensor, encode=None,
                   nearest: bool = False) -> dict[str, torch.Tensor]:
    """An inpainting UNet's keywords: masked_image= the image with its masked pixels set to 0 (grey), in the sampling
    space (encode: an autoencoder's, for a latent model), and mask= at that space's size (Stable Diffusion's and
    GLIDE's inpainting inputs; nearest: as `latent_mask`). images (B, 3, H, W) in [-1, 1]; masks (B, 1, H, W),
    1 = repaint."""
    masks = masks.to(images.device, images.dtype)
    masked = images * (1 - masks)
    if encode is not None:
        masked = encode(masked)
    return {"mask": latent_mask(masks, masked.shape, nearest), "masked_image": masked}
