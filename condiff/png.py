"""PNG files that carry their generation parameters (A1111 'parameters' text chunk)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


def format_parameters(prompt: str, negative_prompt: str, params: dict) -> str:
    """A1111 format: prompt, 'Negative prompt: ...', then 'Key: value, Key: value'."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in params.items()))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict:
    """Inverse of format_parameters: {'prompt', 'negative_prompt', and each 'Key': 'value'}."""
    lines = text.strip().split("\n")
    out = {"prompt": lines[0], "negative_prompt": ""}
    for line in lines[1:-1]:
        if line.startswith("Negative prompt: "):
            out["negative_prompt"] = line[len("Negative prompt: "):]
    for key, value in re.findall(r"\s*([\w ]+): ([^,]+)(?:,|$)", lines[-1]):
        out[key.strip()] = value.strip()
    return out


def save_png(pixels: np.ndarray, path: Path, parameters: str) -> None:
    """(H, W, 3) uint8 -> PNG with a tEXt 'parameters' chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, pnginfo=info)


def read_parameters(path: Path) -> dict:
    with Image.open(path) as img:
        return parse_parameters(img.info.get("parameters", ""))
