"""PNG files that carry their generation parameters (A1111 'parameters' text chunk)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .fs import atomic_write_bytes


def format_parameters(prompt: str, negative_prompt: str, params: dict) -> str:
    """A1111 format: prompt, 'Negative prompt: ...', then 'Key: value, Key: value'."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in params.items()))
    return "\n".join(lines)


def _quote(value) -> str:
    """A value with a comma, colon or quote is written as a JSON string, as A1111 does (a layout's JSON, say)."""
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"') else text


def parse_parameters(text: str) -> dict:
    """Inverse of format_parameters: {'prompt', 'negative_prompt', and each 'Key': 'value'}."""
    lines = text.strip().split("\n")
    out = {"prompt": lines[0], "negative_prompt": ""}
    for line in lines[1:-1]:
        if line.startswith("Negative prompt: "):
            out["negative_prompt"] = line[len("Negative prompt: "):]
    for key, value in re.findall(r'\s*(\w[\w \-/]*): ("(?:\\.|[^\\"])*"|[^,]+)(?:,|$)', lines[-1]):
        value = value.strip()
        out[key.strip()] = json.loads(value) if value.startswith('"') else value
    return out


def check_writable(paths: list[Path]) -> None:
    """ValueError, before any work, for an output path that cannot be written (a file where a folder must be, ...)."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"--out: '{path}' is a folder; give a file name such as '{path / 'out.png'}'")
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"--out: cannot write '{path}': '{parent}' is a file, not a folder")
        if not os.access(parent, os.W_OK):
            raise ValueError(f"--out: cannot write '{path}': no permission to write in '{parent}'")
        try:  # the folders are made now, before any work, so that a path that cannot be made fails first
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out: cannot make the folder '{path.parent}' ({e.strerror})") from None


def image_grid(pixels: np.ndarray, columns: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows H, columns W, 3) image, row-major, black where the last row is short."""
    n, h, w, c = pixels.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=pixels.dtype)
    for i, px in enumerate(pixels):
        grid[(i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = px
    return grid


def save_png(pixels: np.ndarray, path: Path, parameters: str) -> None:
    """(H, W, 3) uint8 -> PNG with a tEXt 'parameters' chunk, written atomically."""
    import io

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(Path(path), buf.getvalue())  # Ctrl-C mid-write leaves no half-written PNG


def read_parameters(path: Path) -> dict:
    with Image.open(path) as img:
        return parse_parameters(img.info.get("parameters", ""))
