"""condiff eval layouts: how often a layout prior's sampled boxes fit their caption, judged on the boxes alone.

Per shapes-bench suite: the share of layouts with the caption's number of objects, with each phrase naming one of
the caption's objects, with no two boxes overlapping and all inside the canvas, and (position) whose first and
second phrase's boxes satisfy the oracle's relation rule; plus the spread of box centres over seeds (variety).
The grammar is used here, to judge; the prior never sees it.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from .. import components
from ..nets.layout_prior import sample_layouts
from ..nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder
from ..world.bench import SUITES, suite_prompts
from ..world.grammar import Category, parse_caption
from ..world.oracle import relation_holds
from ..world.render import along_across


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def judge_layout(caption: str, layout: list[dict]) -> dict:
    """Per-layout verdicts: count, phrases, geometry, and the relation for position captions (None otherwise)."""
    spec = parse_caption(caption)
    names = [f"{o.colour} {o.shape}" for o in spec.objects]
    said = [" ".join(b["phrase"].lower().split()[-2:]).removesuffix("s") for b in layout]
    count = len(layout) == len(spec.objects)
    phrases = count and sorted(said) == sorted(names)
    boxes = [b["box"] for b in layout]
    geometry = all(0 <= v <= 1 for b in boxes for v in b) and not any(
        _overlap(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))
    relation = None
    if spec.category is Category.POSITION:
        relation = False
        if phrases and said[0] != said[1]:
            a, b = (boxes[said.index(n)] for n in names)
            (ax, ay), (bx, by) = _centre(a), _centre(b)
            relation = relation_holds(*along_across(spec.relation, bx - ax, by - ay))
    return {"count": count, "phrases": phrases, "geometry": geometry, "relation": relation}


def layout_report(prior, text_encoder, prompts_per_suite: int, seeds_per_prompt: int, temperature: float = 1.0) -> dict:
    report = {}
    for suite in SUITES:
        prompts = suite_prompts(suite, prompts_per_suite)
        captions = [p for p in prompts for _ in range(seeds_per_prompt)]
        seeds = [s for _ in prompts for s in range(seeds_per_prompt)]
        layouts = sample_layouts(prior, text_encoder, captions, seeds, temperature)
        verdicts = [judge_layout(c, l) for c, l in zip(captions, layouts)]
        row = {k: sum(bool(v[k]) for v in verdicts) / len(verdicts) for k in ("count", "phrases", "geometry")}
        rel = [v["relation"] for v in verdicts if v["relation"] is not None]
        if rel:
            row["relation"] = sum(rel) / len(rel)
        spreads = []
        for i in range(len(prompts)):
            xs = [_centre(b["box"])[0] for l in layouts[i * seeds_per_prompt:(i + 1) * seeds_per_prompt] for b in l[:1]]
            if len(xs) > 1:
                spreads.append(statistics.pstdev(xs))
        row["centre_spread"] = statistics.mean(spreads) if spreads else 0.0
        row["n"] = len(verdicts)
        report[suite] = row
    return report


def run_eval_layouts(args) -> dict:
    prior = components.load("layout_prior", args.model)
    encoder = PretrainedTextEncoder(PretrainedTextConfig(source=args.text_source, max_length=prior.cfg.max_text,
                                                         width=prior.cfg.context_dim))
    report = layout_report(prior, encoder, args.prompts_per_category, args.n_per_prompt, args.temperature)
    print("| suite | objects counted | phrases | geometry | relation (position) | centre spread | layouts |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for suite, r in report.items():
        rel = f"{r['relation']:.3f}" if "relation" in r else "-"
        print(f"| {suite} | {r['count']:.3f} | {r['phrases']:.3f} | {r['geometry']:.3f} | {rel} | {r['centre_spread']:.3f} | {r['n']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report
