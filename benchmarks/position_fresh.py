"""Position on prompts the bench never used: per relation and per prompt, with the spread across prompts.

shapes-bench's position suite is one fixed list of prompts; a model tuned while watching it may do worse on others.
This draws `--prompts` position prompts from a seed stream of their own (`position-fresh/v1`, never used by the
bench or by training), ten per relation in turn, `--n` images each from seeds 1,000,000 on, and reports accuracy per
relation, the mean and standard deviation of the per-prompt accuracy, and the prompts drawn wrong most often. The
oracle's rule judges (B - A points mainly along the relation).

    python benchmarks/position_fresh.py condiff/weights/layout64 --prompts 40 --n 4 --out docs/relations/fresh.json
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import defaultdict
from pathlib import Path

from condiff.io import json_safe
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.grammar import Category, PromptSpec, Relation, sample_prompt
from condiff.world.oracle import judge
from condiff.world.render import to_uint8

FIRST_SEED = 1_000_000


def fresh_prompts(n: int) -> list[PromptSpec]:
    """n distinct position prompts, the four relations in turn, from their own stream."""
    rng, out = random.Random("position-fresh/v1"), []
    relations = list(Relation)
    while len(out) < n:
        spec = sample_prompt(rng, Category.POSITION)
        if spec.relation is relations[len(out) % 4] and spec not in out:
            out.append(spec)
    return out


def run(folder: str, specs: list[PromptSpec], n: int) -> dict:
    pipe = Text2ImagePipeline.from_pretrained(folder)
    jobs = [(s, FIRST_SEED + k) for i, s in enumerate(specs) for k in range(i * n, (i + 1) * n)]
    start = time.time()
    images = pipe.generate([s.caption for s, _ in jobs], [seed for _, seed in jobs], pipe.defaults, batch_size=64,
                           progress=True)
    seconds = time.time() - start
    per_prompt: dict = defaultdict(list)
    reasons: dict = defaultdict(int)
    for (spec, _), px in zip(jobs, to_uint8(images).numpy()):
        v = judge(px, spec)
        per_prompt[spec.caption].append(v.correct)
        if not v.correct:
            reasons[v.reason.split(":")[0].split(" (")[0]] += 1
    by_relation = {r.value: [] for r in Relation}
    for spec in specs:
        by_relation[spec.relation.value] += per_prompt[spec.caption]
    rates = [sum(v) / len(v) for v in per_prompt.values()]
    return {"model": folder, "steps": pipe.defaults.steps, "sampler": pipe.defaults.sampler.value,
            "guidance_scale": pipe.defaults.guidance_scale, "seconds": round(seconds, 1),
            "position": sum(sum(v) for v in per_prompt.values()) / len(jobs),
            "per_relation": {r: sum(v) / len(v) for r, v in by_relation.items()},
            "per_prompt_mean": statistics.mean(rates), "per_prompt_sd": statistics.pstdev(rates),
            "worst": sorted(((sum(v) / len(v), c) for c, v in per_prompt.items()))[:5],
            "failures": dict(reasons), "per_prompt": {c: v for c, v in per_prompt.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--n", type=int, default=4, help="images per prompt")
    parser.add_argument("--out", default="fresh.json")
    args = parser.parse_args()
    specs = fresh_prompts(args.prompts)
    reports = [run(m, specs, args.n) for m in args.models]
    names = [r.value for r in Relation]
    print("| model | position | " + " | ".join(names) + " | per prompt (mean ± sd) |")
    print("| --- " * (len(names) + 3) + "|")
    for r in reports:
        rel = " | ".join(f"{r['per_relation'][k]:.3f}" for k in names)
        print(f"| {Path(r['model']).name} | {r['position']:.3f} | {rel} | {r['per_prompt_mean']:.3f} ± "
              f"{r['per_prompt_sd']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(json_safe(reports), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
