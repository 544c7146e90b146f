"""Relation probe: does a model use the relation word? The same objects and seeds under all four relations.

shapes-bench's position score mixes three skills: drawing both objects, putting them on the right axis
(left/right vs above/below) and in the right order. This probe separates them. Each object pair of the bench's
position suite is asked for under every relation with the same seeds, so a model that ignores the relation word
draws the same image four times: its `flip_change` (mean |pixel change| when only left<->right or above<->below
is flipped) is 0, its axis is right about half the time and, on the right axis, its order about half the time.

`relation_loss_gaps` asks the same question without sampling: how much the denoising loss of rendered position
scenes rises under a wrong caption (objects swapped, relation flipped, other axis).
"""
from __future__ import annotations

import dataclasses
import math
import random
from typing import Callable

import torch

from ..world.bench import suite_prompts
from ..world.grammar import Category, PromptSpec, Relation, parse_caption, sample_prompt
from ..world.oracle import detect, find_pair, relation_holds
from ..world.render import along_across, layout, render, to_uint8

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


EpsModel = Callable[[torch.Tensor, torch.Tensor, list[str]], torch.Tensor]  # x_t, t, captions -> eps_hat


def position_scenes(n: int, resolution: int = 32, seed: int = 0) -> tuple[list[PromptSpec], torch.Tensor]:
    """n seeded random position prompts (held-out pairs excluded) and their rendered scenes (n, 3, H, W)."""
    rng = random.Random(f"relation-loss/{seed}")
    specs = [sample_prompt(rng, Category.POSITION) for _ in range(n)]
    return specs, render([layout(s, rng) for s in specs], resolution)


@torch.no_grad()
def relation_loss_gaps(eps_model: EpsModel, schedule, n_scenes: int = 128, timesteps=(300, 500, 700, 900),
                       resolution: int = 32, seed: int = 0) -> dict:
    """Relative increase of the denoising loss ||eps_hat - eps||^2 when the caption of a rendered position scene
    is altered: objects swapped ("a blue square left of a red circle" for a red circle left of a blue square),
    relation flipped (left <-> right) or moved to the other axis (left -> above). No sampling, no oracle.

    A model blind to word order sees the same words after a swap, so its swap gap is 0; a model that uses the
    order pays for the wrong caption. Per t: gap = mean(L_alt - L_true) / mean(L_true), with its paired s.e.
    """
    specs, x0 = position_scenes(n_scenes, resolution, seed)
    captions = {"true": [s.caption for s in specs],
                "swap": [dataclasses.replace(s, objects=s.objects[::-1]).caption for s in specs],
                "flip": [dataclasses.replace(s, relation=OPPOSITE[s.relation]).caption for s in specs],
                "axis": [dataclasses.replace(s, relation=OTHER_AXIS[s.relation]).caption for s in specs]}
    noise = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        eps = torch.randn(x0.shape, generator=noise)
        tt = torch.full((n_scenes,), t, dtype=torch.long)
        x_t = schedule.q_sample(x0, tt, eps)
        loss = {k: ((eps_model(x_t, tt, caps).float().cpu() - eps) ** 2).flatten(1).mean(1) for k, caps in captions.items()}
        row = {"t": t, "loss": loss["true"].mean().item()}
        for k in ("swap", "flip", "axis"):
            d = loss[k] - loss["true"]
            row[k] = d.mean().item() / row["loss"]
            row[k + "_se"] = d.std().item() / math.sqrt(n_scenes) / row["loss"]
        rows.append(row)
    return {"scenes": n_scenes, "rows": rows}
