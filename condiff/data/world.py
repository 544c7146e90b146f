"""The shapes world as an endless, seeded training stream (held-out combinations excluded)."""
from __future__ import annotations

import random

import torch

from ..world.grammar import VOCABULARY, Category, sample_prompt
from ..world.render import layout, render


class WorldStream:
    """batch(seed, step, size) renders fresh captioned scenes; the same (seed, step) gives the same batch."""

    def __init__(self, resolution: int = 32, exclude_held_out: bool = True):
        self.resolution, self.exclude_held_out = resolution, exclude_held_out
        self.vocab = list(VOCABULARY)

    def batch(self, seed: int, step: int, size: int, device="cpu") -> tuple[torch.Tensor, list[str]]:
        rng = random.Random(f"world/{seed}/{step}")
        specs = [sample_prompt(rng, rng.choice(tuple(Category)), self.exclude_held_out) for _ in range(size)]
        images = render([layout(s, rng) for s in specs], self.resolution, device=device)
        return images, [s.caption for s in specs]
