"""Input images and masks for editing, from a file (the CLI) or bytes (the API): read, checked, sized, as tensors.

Every problem is a ValueError (FileNotFoundError for a missing file) of one line that names the input.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 4096 * 4096  # a larger input is refused before it is decoded (a decompression bomb otherwise)


def open_image(source: str | Path | bytes, what: str = "IN") -> Image.Image:
    """An RGB image from a path or from encoded bytes."""
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise FileNotFoundError(f"{what}: no such file '{source}'")
    name = f"'{source}'" if isinstance(source, (str, Path)) else "the data"
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"{what}: {img.width}x{img.height} is larger than {MAX_PIXELS} pixels")
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ValueError(f"{what}: {name} is not a readable image ({e.__class__.__name__})") from None


def to_model_size(img: Image.Image, resolution: int, resample=Image.BICUBIC) -> Image.Image:
    """Centre-crop to a square and resize to the model's resolution (as the image-folder loader does)."""
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    return img if img.size == (resolution, resolution) else img.resize((resolution, resolution), resample)


def image_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def _pixel(v) -> int:
    """One pixel coordinate: an integer, or a whole float (a JSON 8.0); NaN, infinities, fractions and bools refused."""
    if isinstance(v, bool):
        raise TypeError(v)
    if isinstance(v, float) and not v.is_integer():
        raise ValueError(v)
    return int(v)


def box_mask(box, width: int, height: int, what: str = "--box") -> Image.Image:
    """A box X0,Y0,X1,Y1 in pixels (X1, Y1 exclusive; a string '0,0,8,8' or four numbers) as an 'L' mask."""
    try:
        values = box.split(",") if isinstance(box, str) else list(box)
        x0, y0, x1, y1 = (_pixel(v) for v in values)
    except (ValueError, TypeError, OverflowError):
        shown = repr(box) if len(repr(box)) <= 60 else repr(box)[:57] + "..."
        raise ValueError(f"{what}: expected four integers X0,Y0,X1,Y1 in pixels, got {shown}") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"{what}: {x0},{y0},{x1},{y1} is not a non-empty box inside the {width}x{height} image "
                         f"(0 <= X0 < X1 <= {width}, 0 <= Y0 < Y1 <= {height})")
    m = np.zeros((height, width), dtype=np.uint8)
    m[y0:y1, x0:x1] = 255
    return Image.fromarray(m)


def mask_image(source: str | Path | bytes, size: tuple[int, int], what: str = "--mask") -> Image.Image:
    """A mask image (white = repaint) of exactly `size`, not empty, as an 'L' mask of 0 and 255."""
    img = open_image(source, what)
    if img.size != size:
        raise ValueError(f"{what}: the mask is {img.size[0]}x{img.size[1]}, the image {size[0]}x{size[1]}; they must match")
    m = (np.asarray(img.convert("L")) >= 128).astype(np.uint8) * 255
    if not m.any():
        raise ValueError(f"{what}: the mask is empty (white = repaint; no pixel is white)")
    return Image.fromarray(m)


def mask_tensor(mask: Image.Image, resolution: int) -> torch.Tensor:
    """(1, 1, H, W) bool at the model's resolution (nearest); refused if nothing is left to repaint."""
    m = torch.from_numpy(np.asarray(to_model_size(mask.convert("L"), resolution, Image.NEAREST)) >= 128)[None, None]
    if not m.any():
        raise ValueError("mask: nothing is left to repaint at the model's resolution; make the mask larger")
    return m


BOX_COLOURS = [(255, 255, 255), (255, 220, 0), (0, 230, 230), (255, 120, 255)]


def draw_boxes(pixels: np.ndarray, layout: list[dict], label_phrases: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 with the layout's boxes ([x0, y0, x1, y1] in [0, 1]) outlined and numbered on it."""
    from PIL import ImageDraw

    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for i, b in enumerate(layout):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        x0, y0, x1, y1 = (c * (img.width - 1) for c in b["box"])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        draw.text((x0 + 3, y0 + 2), f"{i + 1} {b['phrase']}" if label_phrases else str(i + 1), fill=colour)
    return np.asarray(img)
