"""Few-step generation: the consistency-distilled default (lcm64, configs/lcm64.json) against the default's own
samplers at the same number of steps, with DDPM 250 as the reference, in one command.

    OMP_NUM_THREADS=1 python benchmarks/distillation.py --out docs/fast/distillation.json

Rows: lcm64 with the lcm sampler (guidance folded in: one network call a step) at 1, 2, 4, 8 steps; the default
with DPM++ 2M (karras) and DDIM (its leading spacing) at the same steps under its CFG 3 (two calls a step, batched);
the default with the lcm sampler at 4 steps (the undistilled teacher read as a consistency model: what the
distillation adds); DDPM 250 (the reference); with --progressive, each progressively distilled student (configs/
pd64_*.json) at its own steps, DDIM on the progressive grid, no CFG (--only-progressive: those and the reference
alone, on the same prompts and seeds as a full run). Each row: shapes-bench accuracy per category and overall (the same
prompts and seeds in every row; overall's gap to the reference with the paired standard error), FD to renders of
the same prompts in clip32 features, and seconds per image at batch 1 (the mean of --latency-images, threads as
the process has them).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from condiff.catalogue import DEFAULT_JUDGES, DEFAULT_MODEL, model_folder
from condiff.eval.bench import MAIN, bench_samples, summarize
from condiff.eval.fd import fd
from condiff.eval.metrics import clip_metric_features
from condiff.nets.clip import load_clip
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.bench import suite_prompts
from steps import ground_truth

SUITE_NAMES = ("single", "counting", "two_objects", "position", "held_out")


def rows_to_run(steps: list[int], reference: str, also: list[str], progressive: dict,
                only_progressive: bool = False) -> list[tuple[str, str, int]]:
    """(model, sampler, steps): the reference first, then each sampler over the step counts, then `also`, then each
    progressively distilled student at its own steps (DDIM on the progressive grid)."""
    pairs = [(s, int(n)) for s, n in (a.split(":") for a in [reference, *also])]
    runs = [("default", *pairs[0])]
    if not only_progressive:
        runs += [("distilled", "lcm", n) for n in steps]
        runs += [("default", s, n) for s in ("dpmpp_2m", "ddim") for n in steps]
        runs += [("default", "lcm", 4)] + [("default", s, n) for s, n in pairs[1:]]
    return runs + [(name, "ddim", pipe.defaults.steps) for name, pipe in progressive.items()]


def run_name(folder: str) -> str:
    """A model folder's name, or its run's for a run's model/ folder (runs/pd64_2/model -> pd64_2)."""
    p = Path(folder).resolve()
    return p.parent.name if p.name == "model" else p.name


def latency(pipe, opts, n: int) -> float:
    """Seconds per image drawn one at a time (layout stage, sampling and decoding)."""
    prompts = [p for p in suite_prompts("two_objects", n)][:n]
    start = time.perf_counter()
    pipe.generate(prompts, list(range(n)), opts, batch_size=1)
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distilled", default=str(model_folder("lcm64")), help="the consistency-distilled default")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--reference", default="ddpm:250", help="SAMPLER:STEPS of the default, the paired baseline")
    ap.add_argument("--also", nargs="*", default=["ddim:50", "dpmpp_2m:20"], metavar="SAMPLER:STEPS",
                    help="more rows of the default (its saved sampler, and the candidate to replace it)")
    ap.add_argument("--prompts-per-category", type=int, default=10)
    ap.add_argument("--n-per-prompt", type=int, default=2)
    ap.add_argument("--latency-images", type=int, default=4)
    ap.add_argument("--progressive", nargs="*", default=[], metavar="MODEL",
                    help="progressively distilled students (condiff train progressive_distillation), each a row")
    ap.add_argument("--only-progressive", action="store_true", help="only the reference and the --progressive rows")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    progressive = {f"progressive:{run_name(m)}": Text2ImagePipeline.from_pretrained(m) for m in args.progressive}
    pipes = {"default": Text2ImagePipeline.from_pretrained(DEFAULT_MODEL),
             "distilled": Text2ImagePipeline.from_pretrained(args.distilled)} | progressive
    clip = load_clip(DEFAULT_JUDGES["clip"])
    features = lambda x: clip_metric_features(clip, x)  # noqa: E731
    rows, reference = [], None
    print("| model | sampler | steps | UNet calls | single | counting | two objects | position | held-out | overall | "
          "gap to reference | FD | s / image |")
    print("| --- " * 13 + "|")
    for model, sampler, steps in rows_to_run(args.steps, args.reference, args.also, progressive, args.only_progressive):
        pipe = pipes[model]
        # DPM++ 2M on Karras sigmas; the others keep the model's spacing (leading where it saved a sigma placement)
        opts = pipe.defaults.replace(sampler=sampler, steps=steps, **({"schedule": "karras"} if sampler == "dpmpp_2m" else {}))
        records = bench_samples(pipe, opts, args.prompts_per_category, args.n_per_prompt, progress=False)
        table = summarize(records)
        images = torch.stack([r["image"] for r in records])
        correct = torch.tensor([float(r["correct"]) for r in records if r["suite"] in MAIN])
        row = {"model": model, "sampler": sampler, "steps": steps, "guidance_scale": opts.guidance_scale,
               "unet_calls": steps * (1 if opts.guidance_scale == 1 else 2),
               **{k: table[k]["accuracy"] for k in (*SUITE_NAMES, "overall")},
               "fd": fd(images, ground_truth([r["prompt"] for r in records], pipe.resolution), features),
               "seconds_per_image": round(latency(pipe, opts, args.latency_images), 3)}
        if reference is None:
            reference, row["reference"] = correct, True
        else:
            diff = correct - reference
            row["gap"], row["gap_se"] = diff.mean().item(), (diff.std() / len(diff) ** 0.5).item()
        rows.append(row)
        gap = f"{row['gap']:+.3f} ± {row['gap_se']:.3f}" if "gap" in row else "reference"
        print(f"| {model} | {sampler} | {steps} | {row['unet_calls']} | "
              + " | ".join(f"{row[k]:.3f}" for k in (*SUITE_NAMES, "overall"))
              + f" | {gap} | {row['fd']:.2f} | {row['seconds_per_image']} |", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows},
                                             indent=1) + "\n")


if __name__ == "__main__":
    main()
