"""The cascade on base-model outputs: shapes-bench accuracy at 64 / 128 / 256 px (the oracle) and patch FD against
real renders of the same size, against bicubic upscaling of the same base images (paired: same prompts and seeds).

    python benchmarks/cascade.py --prompts-per-category 4 --n-per-prompt 2 --out docs/cascade/cascade.json

Rows (all from one set of base images, made once by the default layout64 model):
- base: the 64 px images themselves; bicubic: the same images enlarged by bicubic interpolation (the baseline);
- cascade: sr128 then sr256 at their saved settings (the time per image is reported per stage, next to the base's);
- noise-level sweep (--levels): stage one's aug_t at sampling, judged at 128 px;
- step sweep (--sr-step-sweep): stage one's steps at its default aug_t, judged at 128 px (the accuracy/time trade-off);
- ablation (--ablation A:B): two stage-one models trained for the same steps with and without augmentation, at 128 px.
Patch FD: Fréchet distance of all 8x8 pixel patches (eval.fd.patch_features) against world renders of the same
captions at the same size (fresh layouts, seed 1).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from condiff.eval.bench import MAIN, summarize
from condiff.eval.fd import fd, patch_features
from condiff.eval.grid import save_grid
from condiff.io import json_safe
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.catalogue import DEFAULT_MODEL
from condiff.pipelines.upsample import StageRun, UpsamplePipeline, cascade
from condiff.catalogue import UPSAMPLERS
from condiff.world.bench import SUITES, suite_prompts
from condiff.world.grammar import parse_caption
from condiff.world.oracle import judge
from condiff.world.render import layout, render, to_uint8


def reals(prompts: list[str], size: int, seed: int = 1) -> torch.Tensor:
    rng = random.Random(seed)
    return render([layout(parse_caption(p), rng) for p in prompts], size)


def score(images: torch.Tensor, prompts: list[str], suites: list[str], real: torch.Tensor | None) -> dict:
    records = [{"suite": s, "prompt": p, "correct": (v := judge(px, p)).correct, "reason": v.reason}
               for s, p, px in zip(suites, prompts, to_uint8(images).numpy())]
    table = summarize(records)
    row = {k: round(v["accuracy"], 4) for k, v in table.items()}
    if real is not None:
        row["patch_fd"] = round(fd(images.clamp(-1, 1), real, patch_features), 3)
    return row


def bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def timed(fn):
    t = time.time()
    out = fn()
    return out, time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--sr", default=f"{UPSAMPLERS[128]},{UPSAMPLERS[256]}", help="comma-separated upsampler folders")
    ap.add_argument("--prompts-per-category", type=int, default=4)
    ap.add_argument("--n-per-prompt", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50, help="base model steps")
    ap.add_argument("--levels", default="0,50,100,150,200", help="stage one's aug_t sweep at 128 px ('' to skip)")
    ap.add_argument("--sr-step-sweep", default="5,10,20", help="stage one's steps sweep at 128 px ('' to skip)")
    ap.add_argument("--ablation", help="WITH:WITHOUT stage-one folders trained for equal steps, compared at 128 px")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="docs/cascade/cascade.json")
    ap.add_argument("--grid", default="docs/cascade/grid.png")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    jobs = [(s, p) for s in SUITES for p in suite_prompts(s, args.prompts_per_category) for _ in range(args.n_per_prompt)]
    suites, prompts = [s for s, _ in jobs], [p for _, p in jobs]
    seeds = list(range(len(jobs)))
    base = Text2ImagePipeline.from_pretrained(args.model)
    stages = [UpsamplePipeline.from_pretrained(f) for f in args.sr.split(",")]
    low, t_base = timed(lambda: base.generate(prompts, seeds, base.defaults.replace(steps=args.steps), batch_size=16,
                                              progress=True, boxes=base.layouts(prompts, seeds) if hasattr(base, "layouts") else None))
    real = {s: reals(prompts, s) for s in (128, 256)}
    n = len(prompts)
    report = {"model": args.model, "sr": args.sr, "images": n, "base_steps": args.steps, "rows": {}}
    rows = report["rows"]
    rows["base 64"] = score(low, prompts, suites, None) | {"s_per_image": round(t_base / n, 2)}
    rows["bicubic 128"] = score(bicubic(low, 128), prompts, suites, real[128])
    rows["bicubic 256"] = score(bicubic(low, 256), prompts, suites, real[256])
    one, t1 = timed(lambda: cascade(low, prompts, seeds, stages[:1], batch_size=args.batch_size, progress=True))
    rows["cascade 128"] = score(one, prompts, suites, real[128]) | {"s_per_image": round(t1 / n, 2),
                                                                     "noise_level": stages[0].noise_level}
    print(rows, flush=True)
    if len(stages) > 1:
        two, t2 = timed(lambda: cascade(one, prompts, [s + 7919 for s in seeds], stages[1:], batch_size=args.batch_size,
                                        progress=True))  # stage 2's seeds as cascade() gives them in one call
        rows["cascade 256"] = score(two, prompts, suites, real[256]) | {
            "s_per_image": round(t2 / n, 2), "cascade_s_per_image": round((t_base + t1 + t2) / n, 2),
            "noise_level": stages[1].noise_level}
        picks = [suites.index(s) for s in MAIN]
        save_grid(torch.cat([bicubic(low[picks], 256), two[picks]]), [prompts[i] for i in picks] * 2,
                  Path(args.grid), columns=len(picks))
    print(rows, flush=True)
    for level in [int(v) for v in args.levels.split(",") if v]:
        out = cascade(low, prompts, seeds, stages[:1], [StageRun(noise_level=level)], batch_size=args.batch_size)
        rows[f"128, aug_t {level}"] = score(out, prompts, suites, real[128])
        print(level, rows[f"128, aug_t {level}"], flush=True)
    for steps in [int(v) for v in args.sr_step_sweep.split(",") if v]:
        out, t = timed(lambda: cascade(low, prompts, seeds, stages[:1], [StageRun(stages[0].defaults.replace(steps=steps))],
                                       batch_size=args.batch_size))
        rows[f"128, {steps} steps"] = score(out, prompts, suites, real[128]) | {"s_per_image": round(t / n, 2)}
        print(steps, rows[f"128, {steps} steps"], flush=True)
    if args.ablation:
        for name, folder in zip(("with augmentation", "without augmentation"), args.ablation.split(":")):
            st = UpsamplePipeline.from_pretrained(folder)
            for level in sorted({0, stages[0].noise_level}):
                out = cascade(low, prompts, seeds, [st], [StageRun(noise_level=level)], batch_size=args.batch_size)
                rows[f"ablation: {name}, aug_t {level}"] = score(out, prompts, suites, real[128])
                print(name, level, rows[f"ablation: {name}, aug_t {level}"], flush=True)
    cols = [*MAIN, "held_out", "overall"]
    print("| row | " + " | ".join(cols) + " | patch FD | s/image |\n|" + " --- |" * (len(cols) + 3))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r.get(c, float('nan')):.3f}" for c in cols) +
              f" | {r.get('patch_fd', '')} | {r.get('s_per_image', '')} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(json_safe(report), indent=1) + "\n")


if __name__ == "__main__":
    main()
