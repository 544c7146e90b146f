"""Zero-shot retrieval with condiff CLIP on world scenes: does the image pick its own caption?

Two tests per category: among the distinct captions of the category's test scenes (top-1), and against the
caption's hard distractors (swapped binding, flipped relation, other count) alone. Noise-aware towers are also
judged on x_t at several t; a clean tower can be judged on x_t or on a diffusion model's x0_hat (the blur caveat).
"""
from __future__ import annotations

import random

import torch

from ..world.distractors import distractor_captions
from ..world.grammar import Category, sample_prompt
from ..world.render import layout, render


def scenes(category: Category, n: int, resolution: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    rng = random.Random(f"retrieval/{category.value}/{seed}")
    specs = [sample_prompt(rng, category, exclude_held_out=False) for _ in range(n)]
    return render([layout(s, rng) for s in specs], resolution), [s.caption for s in specs]


@torch.no_grad()
def retrieval_accuracy(clip, images: torch.Tensor, captions: list[str], t: torch.Tensor | None = None) -> dict:
    """top-1 among the distinct captions, and accuracy against each caption's distractors only."""
    device = clip.device
    img = clip.encode_image(images.to(device), None if t is None else t.to(device))
    pool = list(dict.fromkeys(captions))
    text = clip.encode_text(pool)
    top1 = (img @ text.T).argmax(1).cpu()
    correct = sum(pool[j] == c for j, c in zip(top1.tolist(), captions))
    hard = 0
    for i, c in enumerate(captions):
        cands = [c] + distractor_captions(c)
        hard += int((img[i] @ clip.encode_text(cands).T).argmax().item() == 0)
    return {"top1": correct / len(captions), "vs_distractors": hard / len(captions), "pool": len(pool)}


def retrieval_table(clip, n: int = 200, resolution: int = 32, timesteps=(0,), schedule=None, denoise=None) -> dict:
    """{category: {t: retrieval_accuracy}}; x_t = q_sample(x_0, t) when t > 0. denoise(x_t, t, captions) -> x0_hat,
    if given, is applied before the tower sees the image."""
    out = {}
    for cat in Category:
        images, captions = scenes(cat, n, resolution)
        out[cat.value] = {}
        for t_int in timesteps:
            t = torch.full((n,), t_int, dtype=torch.long)
            x = images
            if t_int > 0:
                eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(t_int))
                x = schedule.q_sample(images, t, eps)
                if denoise is not None:
                    x = denoise(x, t, captions)
            out[cat.value][t_int] = retrieval_accuracy(clip, x, captions, t if clip.noise_aware else None)
    return out
