"""The shapes world as an endless, seeded training stream (held-out combinations excluded)."""
from __future__ import annotations

import random

import torch

from ..world.grammar import VOCABULARY, Category, parse_caption, sample_prompt
from ..world.language import paraphrase, training_words
from ..world.render import layout, render, scene_boxes, to_uint8


class WorldStream:
    """batch(seed, step, size) renders fresh captioned scenes; the same (seed, step) gives the same batch."""

    def __init__(self, resolution: int = 32, exclude_held_out: bool = True, paraphrase: float = 0.0,
                 paraphrase_list: int = 1):
        self.resolution, self.exclude_held_out, self.paraphrase = resolution, exclude_held_out, paraphrase
        self.paraphrase_list = paraphrase_list
        self.vocab = sorted(set(VOCABULARY) | (set(training_words(paraphrase_list)) if paraphrase else set()))

    def raw(self, seed: int, step: int, size: int) -> tuple[list, ...]:
        """The cheap, CPU-side part of a batch (layouts, captions; with paraphrases, each one's object phrases or
        None for a grammar caption); data-loader workers make these. The scenes do not depend on `paraphrase`."""
        rng = random.Random(f"world/{seed}/{step}")
        specs = [sample_prompt(rng, rng.choice(tuple(Category)), self.exclude_held_out) for _ in range(size)]
        layouts = [layout(s, rng) for s in specs]
        if not self.paraphrase:
            return layouts, [s.caption for s in specs]
        said_rng = random.Random(f"world/{seed}/{step}/paraphrase")
        said = [paraphrase(s, said_rng, version=self.paraphrase_list) if said_rng.random() < self.paraphrase else None
                for s in specs]
        return (layouts, [p.caption if p else s.caption for p, s in zip(said, specs)],
                [p.phrases if p else None for p in said])

    @staticmethod
    def shard(raw, sl: slice):
        """Part of a raw batch (a data loader may hand the tuple back as a list)."""
        return tuple(part[sl] for part in raw)

    def materialize(self, raw, device="cpu") -> tuple[torch.Tensor, list[str]]:
        """Render on the training device: images (B, 3, H, W) in [-1, 1] and captions."""
        layouts, captions = raw[:2]
        return render(layouts, self.resolution, device=device), captions

    def boxes(self, raw) -> list[list[dict]]:
        """Each scene's objects as {"phrase", "box": [x0, y0, x1, y1]} (WORLD.md v2), exact from the layout; a
        paraphrase's phrases are its own words ("a crimson disc")."""
        layouts, captions = raw[:2]
        phrases = raw[2] if len(raw) > 2 else [None] * len(captions)
        return [scene_boxes(parse_caption(c), placed) if said is None else
                [{"phrase": ph, "box": p.box} for ph, p in zip(said, placed)]
                for placed, c, said in zip(layouts, captions, phrases)]

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
