"""Relation probe: does a model use the relation word? The same objects and seeds under all four relations.

shapes-bench's position score mixes three skills: drawing both objects, putting them on the right axis
(left/right vs above/below) and in the right order. This probe separates them. Each object pair of the bench's
position suite is asked for under every relation with the same seeds, so a model that ignores the relation word
draws the same image four times: its `flip_change` (mean |pixel change| when only left<->right or above<->below
is flipped) is 0, its axis is right about half the time and, on the right axis, its order about half the time.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..world.bench import suite_prompts
from ..world.grammar import PromptSpec, Relation, parse_caption
from ..world.oracle import detect, find_pair, relation_holds
from ..world.render import along_across, to_uint8

OPPOSITE = {Relation.LEFT_OF: Relation.RIGHT_OF, Relation.RIGHT_OF: Relation.LEFT_OF,
            Relation.ABOVE: Relation.BELOW, Relation.BELOW: Relation.ABOVE}
OTHER_AXIS = {Relation.LEFT_OF: Relation.ABOVE, Relation.RIGHT_OF: Relation.BELOW,
              Relation.ABOVE: Relation.LEFT_OF, Relation.BELOW: Relation.RIGHT_OF}

Generate = Callable[[list[str], list[int]], torch.Tensor]  # captions, seeds -> (B, 3, H, W) in [-1, 1]


def probe_pairs(n_pairs: int) -> list[PromptSpec]:
    """The object pairs of the first n_pairs prompts of shapes-bench's position suite."""
    return [parse_caption(c) for c in suite_prompts("position", n_pairs)]


def probe_relations(generate: Generate, n_pairs: int = 8, n_seeds: int = 8, seed: int = 0) -> dict:
    """Generate every pair under all four relations with shared seeds; score axis, order and sensitivity."""
    relations = tuple(Relation)
    specs = probe_pairs(n_pairs)
    jobs = [(p, r, seed + s) for p in range(len(specs)) for r in relations for s in range(n_seeds)]
    captions = [dataclasses.replace(specs[p], relation=r).caption for p, r, _ in jobs]
    images = generate(captions, [s for _, _, s in jobs]).float().cpu()
    index = {job: i for i, job in enumerate(jobs)}
    per_rel = {r: {"n": 0, "both": 0, "axis": 0, "order": 0, "right": 0, "along": 0.0} for r in relations}
    flip, other = [], []
    for (p, r, s), img, px in zip(jobs, images, to_uint8(images).numpy()):
        flip.append((img - images[index[(p, OPPOSITE[r], s)]]).abs().mean().item() / 2)  # fraction of the range
        other.append((img - images[index[(p, OTHER_AXIS[r], s)]]).abs().mean().item() / 2)
        stats = per_rel[r]
        stats["n"] += 1
        pair = find_pair(specs[p], detect(px))
        if pair is None:
            continue
        a, b = pair
        along, across = along_across(r, b.cx - a.cx, b.cy - a.cy)
        stats["both"] += 1
        stats["along"] += along
        if abs(along) > abs(across):
            stats["axis"] += 1
            stats["order"] += along > 0
        stats["right"] += relation_holds(along, across)  # the oracle's rule

    def rate(num: float, den: float) -> float:
        return num / den if den else float("nan")

    tot = {k: sum(v[k] for v in per_rel.values()) for k in ("n", "both", "axis", "order", "right")}
    return {
        "images": len(jobs),
        "both_objects": rate(tot["both"], tot["n"]),
        "axis_right": rate(tot["axis"], tot["both"]),  # a relation-blind model: about 0.5
        "order_right_given_axis": rate(tot["order"], tot["axis"]),  # about 0.5 for a model blind to word order
        "relation_right_given_objects": rate(tot["right"], tot["both"]),  # the bench's diagnostic
        "flip_change": sum(flip) / len(flip),  # 0 when left<->right and above<->below change nothing
        "axis_change": sum(other) / len(other),
        "mean_along": {r.value: rate(v["along"], v["both"]) for r, v in per_rel.items()},
    }
