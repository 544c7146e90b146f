"""Image grids with captions and oracle verdicts, saved as PNG."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ..world.grammar import PromptError
from ..world.render import to_uint8

CELL = 128  # each image is upscaled (nearest) to this side


def save_grid(images: torch.Tensor, labels: list[str], path: Path, verdicts: list | None = None,
              columns: int = 8) -> Path:
    """Grid of (B, 3, H, W) images in [-1, 1], each with its caption; a green/red frame for a verdict (an oracle Verdict or a bool; None: no frame)."""
    font = ImageFont.load_default()
    pixels = to_uint8(images).numpy()
    rows = (len(pixels) + columns - 1) // columns
    text_h = 44
    sheet = Image.new("RGB", (columns * (CELL + 8), rows * (CELL + 8 + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, px in enumerate(pixels):
        x, y = (i % columns) * (CELL + 8), (i // columns) * (CELL + 8 + text_h)
        if verdicts is not None and verdicts[i] is not None:
            colour = (30, 160, 60) if getattr(verdicts[i], "correct", verdicts[i]) else (210, 40, 40)
            draw.rectangle([x, y, x + CELL + 7, y + CELL + 7], fill=colour)
        sheet.paste(Image.fromarray(px).resize((CELL, CELL), Image.NEAREST), (x + 4, y + 4))
        lines = textwrap.wrap(labels[i], 22)
        if verdicts is not None and getattr(verdicts[i], "correct", True) is False:
            lines += textwrap.wrap(verdicts[i].reason, 22)
        draw.multiline_text((x + 2, y + CELL + 8), "\n".join(lines[:4]), fill=(0, 0, 0), font=font, spacing=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def save_judged_grid(images: torch.Tensor, captions: list[str], path: Path) -> Path:
    """save_grid framed by the oracle's verdicts when the captions are world captions (unframed otherwise)."""
    from ..world.oracle import judge

    try:
        verdicts = [judge(px, c) for px, c in zip(to_uint8(images).numpy(), captions)]
    except PromptError:
        verdicts = None
    return save_grid(images, captions, path, verdicts)
