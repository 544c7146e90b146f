"""Language beyond the grammar: does a model draw a paraphrase as the grammar caption it means?

The language suites (condiff/world/language.py): paraphrases with the training list's forms, phrasings and synonyms
(`train`: what `data.paraphrase` may show a model) and with the held-out list's (`held_out`: never in training).
Each paraphrase is drawn, and so is its grammar caption with the same seed (the twin), and the oracle judges both
against the same spec. The gap between the two columns is the cost of the words alone. Per split and category:

    python benchmarks/language.py condiff/weights/layout64 --prompts 32 --out docs/language/language.json

Each model samples at its own saved settings (`--steps` overrides the step count). Seconds are wall time here.
`--read` draws each prompt as `condiff generate` does, with unknown colour words read as the nearest colour the model
knows (pipelines/lexicon.py); without it the prompts are drawn as written (`generate --literal`).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from condiff.eval.bench import language_jobs
from condiff.eval.grid import save_grid
from condiff.io import json_safe
from condiff.pipelines.requests import said
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.language import SPLITS
from condiff.world.oracle import judge
from condiff.world.render import to_uint8


def run(folder: str, prompts: int, n_per_prompt: int, steps: int | None, grid: Path | None, read: bool = False) -> dict:
    pipe = Text2ImagePipeline.from_pretrained(folder)
    opts = pipe.defaults if steps is None else pipe.defaults.replace(steps=steps)
    jobs = language_jobs(prompts, n_per_prompt, 0)
    drawn = said(pipe, [j[1] for j in jobs], literal=not read)
    start = time.time()
    images = pipe.generate(drawn, [j[3] for j in jobs], opts, batch_size=64, progress=True)
    seconds = time.time() - start
    cells: dict = defaultdict(lambda: [0, 0])
    samples = []
    for (suite, prompt, spec, seed), as_read, px in zip(jobs, drawn, to_uint8(images).numpy()):
        v = judge(px, spec)
        for key in ((suite, spec.category.value), (suite, "all")):
            cells[key][0] += v.correct
            cells[key][1] += 1
        samples.append({"suite": suite, "prompt": prompt, "read": as_read, "meaning": spec.caption, "seed": seed,
                        "correct": v.correct, "reason": v.reason})
    table = {f"{s}|{c}": {"accuracy": k / n, "n": n} for (s, c), (k, n) in sorted(cells.items())}
    if grid is not None:  # the first 8 paraphrases of each split above their grammar twins
        rows = [i for split in SPLITS for i in [j for j, job in enumerate(jobs) if job[0] == f"language_{split}"][:8]]
        order = rows + [i + 1 for i in rows]  # each paraphrase's twin is the next job
        save_grid(images[order], [jobs[i][1] for i in order], grid, columns=8)
    return {"model": folder, "sampler": opts.sampler.value, "steps": opts.steps, "guidance_scale": opts.guidance_scale,
            "prompts": prompts, "n_per_prompt": n_per_prompt, "read": read, "seconds": round(seconds, 1), "table": table,
            "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", help="saved pipeline folders")
    parser.add_argument("--prompts", type=int, default=32, help="paraphrases per split (the categories in turn)")
    parser.add_argument("--n-per-prompt", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--read", action="store_true", help="read unknown colour words as generate does")
    parser.add_argument("--out", default="language.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reports = [run(m, args.prompts, args.n_per_prompt, args.steps, out.with_name(f"{out.stem}_{Path(m).name}.png"),
                   args.read) for m in args.models]
    print("| model | split | category | paraphrase | grammar twin | images |")
    print("| --- " * 6 + "|")
    for r in reports:
        t = r["table"]
        for split in SPLITS:
            for cat in ("single", "counting", "two_objects", "position", "all"):
                p, g = t.get(f"language_{split}|{cat}"), t.get(f"language_{split}/grammar|{cat}")
                if p:
                    print(f"| {Path(r['model']).name} | {split} | {cat} | {p['accuracy']:.3f} | {g['accuracy']:.3f} | "
                          f"{p['n']} |")
    out.write_text(json.dumps(json_safe(reports), indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
