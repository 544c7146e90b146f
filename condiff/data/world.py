"""The shapes world as an endless, seeded training stream (held-out combinations excluded)."""
from __future__ import annotations

import random

import torch

from ..world.grammar import VOCABULARY, Category, parse_caption, sample_prompt
from ..world.render import layout, render, scene_boxes, to_uint8


class WorldStream:
    """batch(seed, step, size) renders fresh captioned scenes; the same (seed, step) gives the same batch."""

    def __init__(self, resolution: int = 32, exclude_held_out: bool = True):
        self.resolution, self.exclude_held_out = resolution, exclude_held_out
        self.vocab = list(VOCABULARY)

    def raw(self, seed: int, step: int, size: int) -> tuple[list, list[str]]:
        """The cheap, CPU-side part of a batch (layouts, captions); data-loader workers make these."""
        rng = random.Random(f"world/{seed}/{step}")
        specs = [sample_prompt(rng, rng.choice(tuple(Category)), self.exclude_held_out) for _ in range(size)]
        return [layout(s, rng) for s in specs], [s.caption for s in specs]

    @staticmethod
    def shard(raw, sl: slice):
        """Part of a raw batch (a data loader may hand the pair back as a list)."""
        layouts, captions = raw
        return layouts[sl], captions[sl]

    def materialize(self, raw, device="cpu") -> tuple[torch.Tensor, list[str]]:
        """Render on the training device: images (B, 3, H, W) in [-1, 1] and captions."""
        layouts, captions = raw
        return render(layouts, self.resolution, device=device), captions

    def boxes(self, raw) -> list[list[dict]]:
        """Each scene's objects as {"phrase", "box": [x0, y0, x1, y1]} (WORLD.md v2), exact from the layout."""
        layouts, captions = raw
        return [scene_boxes(parse_caption(c), placed) for placed, c in zip(layouts, captions)]

    def batch(self, seed: int, step: int, size: int, device="cpu") -> tuple[torch.Tensor, list[str]]:
        return self.materialize(self.raw(seed, step, size), device)


SHAPES_LICENSE = """# Shapes-world scenes

Drawn by condiff's renderer (condiff/world, docs/WORLD.md) from their captions: no third-party content. The boxes in
metadata.jsonl are exact (the renderer's own), WORLD.md v2's record.
"""


def scene_samples(count: int, resolution: int, seed: int = 0, caption: str | None = None):
    """(file name, RGB PIL image, caption, boxes) of world scenes: `count` layouts of one caption, or random captions
    of every category (held-out combinations excluded), both from random.Random(seed)."""
    from PIL import Image

    rng = random.Random(seed)
    spec = parse_caption(caption) if caption is not None else None
    for k in range(count):
        s = spec if spec is not None else sample_prompt(rng, list(Category)[k % len(Category)])
        placed = layout(s, rng)
        pixels = to_uint8(render([placed], resolution))[0].numpy()
        yield f"{k:05d}.png", Image.fromarray(pixels), s.caption, scene_boxes(s, placed)
