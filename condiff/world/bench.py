"""Fixed, seeded prompt suites of shapes-bench: one per category, plus held-out combinations."""
from __future__ import annotations

import random

from .grammar import Category, sample_prompt

HELD_OUT_SUITE = "held_out"
SUITES = tuple(c.value for c in Category) + (HELD_OUT_SUITE,)


def suite_prompts(suite: str, n: int) -> list[str]:
    """n distinct captions of a suite; the same n always gives the same list (prefixes are stable)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite '{suite}' (known: {', '.join(SUITES)})")
    rng = random.Random(f"shapes-bench/v1/{suite}")
    out: list[str] = []
    categories = list(Category)
    misses = 0
    while len(out) < n:
        if misses > 20_000:  # the suite (or, for held-out, one of its categories) has no caption left to draw
            raise ValueError(f"suite '{suite}' has only {len(out)} distinct captions in this order; ask for at most "
                             f"{len(out)} prompts per category")
        if suite == HELD_OUT_SUITE:
            spec = sample_prompt(rng, categories[len(out) % len(categories)], exclude_held_out=False)
            if not spec.uses_held_out():
                misses += 1
                continue
        else:
            spec = sample_prompt(rng, Category(suite), exclude_held_out=True)
        if spec.caption not in out:
            out.append(spec.caption)
            misses = 0
        else:
            misses += 1
    return out
