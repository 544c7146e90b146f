"""Text -> boxes -> image against text -> image, on shapes-bench prompts, judged by the oracle.

    python benchmarks/grounding.py --model RUN/model --layout-prior condiff/weights/layout_prior \\
        --prompts-per-category 10 --n-per-prompt 4 --out docs/grounding/latent64_grounded.json

Rows, all with the same grounded model, prompts and seeds:
- no boxes (the baseline in the same command: the model as a plain text-to-image model, null grounding tokens);
- layout prior boxes (temperature 0.4), the unconditional branch of CFG without them (GLIGEN's default);
- layout prior boxes in both branches (a separate grounding scale is then 0: CFG only scales the text);
- the scene's true boxes (the world's own layout of the caption): what a perfect layout prior would give.
And the Layout issue's "given boxes obeyed": two-object prompts with two random non-overlapping boxes (side 0.25-0.4);
an image passes when both objects are read (the oracle's detection) with their centres inside their own boxes.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

from condiff import components
from condiff.diffusion.sampling import Sampler, SigmaSchedule
from condiff.eval.bench import MAIN, summarize
from condiff.io import json_safe
from condiff.nets.layout_prior import sample_layouts
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.bench import SUITES, suite_prompts
from condiff.world.grammar import parse_caption
from condiff.world.oracle import detect, find_pair, judge
from condiff.world.render import layout, scene_boxes, to_uint8


def true_boxes(prompts: list[str], seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for p in prompts:
        spec = parse_caption(p)
        out.append(scene_boxes(spec, layout(spec, rng)))
    return out


def random_boxes(prompts: list[str], seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for p in prompts:
        a, b = parse_caption(p).objects
        while True:
            boxes = []
            for _ in range(2):
                s = rng.uniform(0.25, 0.4)
                x, y = rng.uniform(0.02, 0.98 - s), rng.uniform(0.02, 0.98 - s)
                boxes.append([x, y, x + s, y + s])
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
            if ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0:
                break
        out.append([{"phrase": a.phrase(), "box": boxes[0]}, {"phrase": b.phrase(), "box": boxes[1]}])
    return out


def inside(box, o) -> bool:
    return box[0] <= o.cx <= box[2] and box[1] <= o.cy <= box[3]


def obeyed(pipe, opts, n: int, batch: int, seed: int = 0) -> dict:
    prompts = (suite_prompts("two_objects", n) * 4)[:4 * n]
    boxes = random_boxes(prompts, seed)
    t = time.time()
    images = pipe.generate(prompts, list(range(len(prompts))), opts, batch_size=batch, progress=True, boxes=boxes)
    both = objects = 0
    for p, bx, px in zip(prompts, boxes, to_uint8(images).numpy()):
        pair = find_pair(parse_caption(p), detect(px))
        objects += pair is not None
        both += pair is not None and inside(bx[0]["box"], pair[0]) and inside(bx[1]["box"], pair[1])
    return {"both_inside": both / len(prompts), "objects_read": objects / len(prompts), "n": len(prompts),
            "seconds": round(time.time() - t, 1)}


def run(pipe, opts, prompts, suites, seeds, batch, **kw) -> dict:
    t = time.time()
    images = pipe.generate(prompts, seeds, opts, batch_size=batch, progress=True, **kw)
    records = [{"suite": s, "prompt": p, "correct": (v := judge(px, p)).correct, "reason": v.reason}
               for s, p, px in zip(suites, prompts, to_uint8(images).numpy())]
    table = summarize(records)
    table["seconds"] = round(time.time() - t, 1)
    table["correct"] = [r["correct"] for r in records]  # per image, in job order: for gaps paired with another run
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a grounded text2image model folder")
    ap.add_argument("--layout-prior", default="condiff/weights/layout_prior")
    ap.add_argument("--temperature", type=float, default=0.4)
    ap.add_argument("--prompts-per-category", type=int, default=10)
    ap.add_argument("--n-per-prompt", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--sampler", help="default: the model's own")
    ap.add_argument("--schedule", help="step schedule (default: the model's own)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rows", default="none,prior,prior_uncond,true", help="comma-separated subset of the rows")
    ap.add_argument("--obeyed", type=int, default=10, help="two-object prompts (x4 seeds) with random boxes; 0: skip")
    ap.add_argument("--out")
    args = ap.parse_args()
    pipe = Text2ImagePipeline.from_pretrained(args.model)
    prior = components.load("layout_prior", args.layout_prior)
    opts = replace(pipe.defaults, steps=args.steps, guidance_scale=args.guidance_scale)
    if args.sampler:
        opts = replace(opts, sampler=Sampler(args.sampler))
    if args.schedule:
        opts = replace(opts, schedule=SigmaSchedule(args.schedule))
    jobs = [(s, p) for s in SUITES for p in suite_prompts(s, args.prompts_per_category) for _ in range(args.n_per_prompt)]
    suites, prompts = [s for s, _ in jobs], [p for _, p in jobs]
    seeds = list(range(len(jobs)))
    layouts = sample_layouts(prior, pipe.text_encoder, prompts, seeds, args.temperature)
    rows = {"none": {"boxes": [[] for _ in prompts]},  # empty lists: null grounding tokens, even in a layout2image
            "prior": {"boxes": layouts},                  # pipeline, whose own layout stage fills boxes=None "prior_uncond": {"boxes": layouts, "boxes_in_uncond": True},
            "true": {"boxes": true_boxes(prompts, 0)}}
    report = {"model": args.model, "layout_prior": args.layout_prior, "temperature": args.temperature,
              "steps": args.steps, "guidance_scale": args.guidance_scale, "sampler": opts.sampler.value,
              "schedule": opts.schedule.value, "images": len(jobs), "rows": {}}
    for name in args.rows.split(","):
        report["rows"][name] = run(pipe, opts, prompts, suites, seeds, args.batch_size, **rows[name])
        print(name, {k: round(v["accuracy"], 3) for k, v in report["rows"][name].items() if isinstance(v, dict)},
              flush=True)
    if args.obeyed:
        report["given_boxes_obeyed"] = obeyed(pipe, opts, args.obeyed, args.batch_size)
        print("given boxes obeyed:", report["given_boxes_obeyed"], flush=True)
    cols = [*MAIN, "held_out", "overall"]
    print("| boxes | " + " | ".join(cols) + " | seconds |\n|" + " --- |" * (len(cols) + 2))
    for name, t in report["rows"].items():
        print(f"| {name} | " + " | ".join(f"{t[c]['accuracy']:.3f}" for c in cols) + f" | {t['seconds']} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(json_safe(report), indent=1) + "\n")


if __name__ == "__main__":
    main()
