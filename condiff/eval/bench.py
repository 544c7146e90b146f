"""shapes-bench: generate N images per fixed prompt, judge each with the oracle, report per category."""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import torch

from ..diffusion.sampling import SamplingOptions
from ..io import json_safe
from ..pipelines.text2image import Text2ImagePipeline
from ..catalogue import DEFAULT_MODEL
from ..world.bench import SUITES, suite_prompts
from ..world.language import SPLITS, language_suite
from ..world.oracle import judge
from ..world.render import to_uint8
from .grid import save_grid

MAIN = ("single", "counting", "two_objects", "position")
LANGUAGE = tuple(f"language_{split}{twin}" for split in SPLITS for twin in ("", "/grammar"))


def language_jobs(prompts_per_suite: int, n_per_prompt: int, first_seed: int) -> list[tuple[str, str, object, int]]:
    """(suite, prompt, spec, seed) of the language suites (world/language.py): each paraphrase, and its grammar
    caption drawn with the same seed (the '/grammar' twin), so the gap between the two is the language's alone."""
    jobs, seed = [], first_seed
    for split in SPLITS:
        for p in language_suite(split, prompts_per_suite):
            for _ in range(n_per_prompt):
                jobs += [(f"language_{split}", p.caption, p.spec, seed), (f"language_{split}/grammar", p.spec.caption,
                                                                           p.spec, seed)]
                seed += 1
    return jobs


def bench_samples(pipe: Text2ImagePipeline, opts: SamplingOptions, prompts_per_category: int, n_per_prompt: int,
                  seed: int = 0, batch_size: int = 128, progress: bool = True, language: bool = False) -> list[dict]:
    """One record per image: suite, prompt, seed, verdict; images kept on the records as uint8. language: the
    language suites too, prompts_per_category paraphrases each (after the grammar suites' seeds)."""
    grammar = [(suite, p) for suite in SUITES for p in suite_prompts(suite, prompts_per_category)
               for _ in range(n_per_prompt)]
    jobs = [(suite, p, p, seed + i) for i, (suite, p) in enumerate(grammar)]  # a caption is its own spec
    if language:
        jobs += language_jobs(prompts_per_category, n_per_prompt, seed + len(jobs))
    images = pipe.generate([j[1] for j in jobs], [j[3] for j in jobs], opts, batch_size=batch_size, progress=progress)
    records = []
    for (suite, prompt, spec, s), img, px in zip(jobs, images, to_uint8(images).numpy()):
        v = judge(px, spec)
        records.append({"suite": suite, "prompt": prompt, "seed": s, "correct": v.correct, "reason": v.reason,
                        "image": img, "verdict": v})
    return records


def summarize(records: list[dict]) -> dict:
    """Accuracy with its standard error per suite; 'overall' is the mean of the four main categories."""
    table = {}
    for suite in SUITES + LANGUAGE:
        rows = [r for r in records if r["suite"] == suite]
        if not rows:
            continue
        acc = sum(r["correct"] for r in rows) / len(rows)
        reasons = Counter(r["reason"].split(":")[0].split(" (")[0] for r in rows if not r["correct"])
        table[suite] = {"accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / len(rows)), "n": len(rows),
                        "top_failures": dict(reasons.most_common(3))}
        if suite == "position":  # the oracle checks the objects first: a wrong relation means both objects were right
            right = sum(r["correct"] for r in rows)
            drawn = right + sum(r["reason"].startswith("wrong relation") for r in rows)
            table[suite]["relation_given_objects"] = right / drawn if drawn else float("nan")
            table[suite]["objects_right"] = drawn
    main = [table[s]["accuracy"] for s in MAIN if s in table]
    table["overall"] = {"accuracy": sum(main) / len(main), "n": sum(table[s]["n"] for s in MAIN if s in table)}
    return table


def format_table(table: dict) -> str:
    lines = ["| category | accuracy | ± s.e. | images |", "| --- | --- | --- | --- |"]
    for suite, row in table.items():
        se = f"{row['stderr']:.3f}" if "stderr" in row else ""
        lines.append(f"| {suite} | {row['accuracy']:.3f} | {se} | {row['n']} |")
    return "\n".join(lines)


def run_bench(args) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = Path(args.model) if args.model else DEFAULT_MODEL
    pipe = Text2ImagePipeline.from_pretrained(model).to(device)
    opts = SamplingOptions.from_args(args, base=pipe.defaults)
    if getattr(args, "language", False):  # before any drawing: a learned encoder knows its training words alone
        try:
            pipe.check([j[1] for j in language_jobs(args.prompts_per_category, 1, 0)], opts)
        except ValueError as e:
            raise ValueError(f"--language: {e} (the language suites need a model that reads any English: a frozen "
                             "pretrained text encoder)") from None
    start = time.time()
    records = bench_samples(pipe, opts, args.prompts_per_category, args.n_per_prompt, args.seed, args.batch_size,
                            language=getattr(args, "language", False))
    table = summarize(records)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": str(model), "sampler": opts.sampler.value, "schedule": opts.schedule.value, "steps": opts.steps, "guidance_scale": opts.guidance_scale,
              "prompts_per_category": args.prompts_per_category, "n_per_prompt": args.n_per_prompt,
              "seconds": round(time.time() - start, 1), "device": device, "table": table,
              "samples": [{k: r[k] for k in ("suite", "prompt", "seed", "correct", "reason")} for r in records]}
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n")  # NaN -> null
    # records run suite by suite, prompt by prompt: show the first image of the first 8 prompts of each suite
    shown = [r for suite in SUITES + LANGUAGE[::2] for r in [x for x in records if x["suite"] == suite][::args.n_per_prompt][:8]]
    save_grid(torch.stack([r["image"] for r in shown]), [r["prompt"] for r in shown], out / "grid.png",
              [r["verdict"] for r in shown])
    print(format_table(table))
    pos = table.get("position")
    if pos and pos["objects_right"]:
        print(f"position: both objects right in {pos['objects_right']} of {pos['n']} images; relation right in "
              f"{pos['relation_given_objects']:.3f} of those (a model blind to word order: about 0.5 for left/right "
              f"and above/below, less if it also confuses the axis)")
    print(f"report: {out / 'report.json'}  grid: {out / 'grid.png'}  ({report['seconds']} s on {device})")
    return report
