"""A style LoRA on the default model, judged by the oracle: does it change what it should and keep the rest?

    OMP_NUM_THREADS=1 python benchmarks/lora_style.py --work ~/condiff-runs/lora_mono --out docs/lora/lora_style.json \
        --grid docs/lora/lora_style.png

The style is "monochrome": 2,000 world scenes whose objects are all drawn white, under their ordinary captions
("a red circle to the left of a blue square"). `condiff train --config configs/lora_mono.json` trains a rank-8 LoRA
on the attention of the shipped default (layout64), which stays frozen. Then, for n shapes-bench captions (a quarter from each of its
single, counting, two_objects and position suites; seed i for caption i) at LoRA weights 0, 0.5 and 1, the oracle reads every image:
- white share: the share of detected objects that are white (what the style should change; the captions name
  white for about 1 object in 8);
- content: the caption judged with every colour word made white (shape, count, size and relation: what should stay);
- caption: the caption as written (falls as the style takes hold);
and weight 0 is checked to draw exactly the base model's pixels (the same seed without the LoRA).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from condiff.catalogue import model_folder
from condiff.data import real
from condiff.diffusion.sampling import SamplingOptions
from condiff.formats import lora
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.bench import suite_prompts
from condiff.world.grammar import COLOURS, Category, sample_prompt
from condiff.world.oracle import detect, judge
from condiff.world.render import layout, render, scene_boxes, to_uint8

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "lora_mono.json"
WEIGHTS = (0.0, 0.5, 1.0)


def mono_samples(count: int, seed: int = 7):
    """World scenes with every object white, captioned as usual (the style data)."""
    from PIL import Image

    rng, cats = random.Random(seed), list(Category)
    for k in range(count):
        spec = sample_prompt(rng, cats[k % len(cats)])
        placed = layout(spec, rng)
        white = [type(o)(o.shape, "white", o.cx, o.cy, o.s) for o in placed]
        yield f"{k:05d}.png", Image.fromarray(to_uint8(render([white], 64))[0].numpy()), spec.caption, scene_boxes(spec, placed)


def whitened(caption: str) -> str:
    words = caption.split()
    return " ".join("white" if w in COLOURS else w for w in words)


def measure(pipe, prompts: list[str], weight: float, opts: SamplingOptions) -> tuple[dict, np.ndarray]:
    lora.lora.set_weight(pipe.unet, "model", weight)
    images = [to_uint8(pipe([p], [i], opts))[0].numpy() for i, p in enumerate(prompts)]
    found = [detect(im) for im in images]
    objects = [o for f in found for o in f]
    rec = {"weight": weight, "white_share": sum(o.colour == "white" for o in objects) / max(1, len(objects)),
           "content": float(np.mean([judge(im, whitened(p)).correct for im, p in zip(images, prompts)])),
           "caption": float(np.mean([judge(im, p).correct for im, p in zip(images, prompts)]))}
    return rec, np.stack(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="folder for the style data and the LoRA run")
    ap.add_argument("--n", type=int, default=48, help="shapes-bench captions judged at each weight")
    ap.add_argument("--steps", type=int, default=25, help="sampling steps")
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", help="PNG: 8 captions (rows) at each weight (columns)")
    args = ap.parse_args()
    work = Path(args.work).expanduser()
    data, run = work / "mono", work / "run"
    if not data.exists():
        real.write(mono_samples(2000), data, "Shapes-world scenes drawn by condiff's renderer (no licence needed).\n", False)
    t = time.time()
    argv = [sys.executable, "-m", "condiff.cli", "train", "--config", str(CONFIG), "--data", str(data), "--out", str(run),
            "--workers", "0"] + (["--resume"] if (run / "config.json").exists() else [])  # a finished run returns at once
    subprocess.run(argv, check=True, env=os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    train_s = time.time() - t
    suites = ("single", "counting", "two_objects", "position")
    prompts = [p for s in suites for p in suite_prompts(s, args.n // len(suites))]
    base = Text2ImagePipeline.from_pretrained(model_folder(None))
    pipe = Text2ImagePipeline.from_pretrained(model_folder(None))
    lora.apply(pipe.parts, [lora.LoRASpec(str(run / "model"))])
    opts = dataclasses.replace(base.defaults, steps=args.steps)
    base_images = np.stack([to_uint8(base([p], [i], opts))[0].numpy() for i, p in enumerate(prompts[:8])])
    records, grids = [], []
    for w in WEIGHTS:
        rec, images = measure(pipe, prompts, w, opts)
        if w == 0:
            rec["equals_base_model"] = bool(np.array_equal(images[:8], base_images))
        records.append(rec)
        grids.append(images[:8])
        print(json.dumps(rec), flush=True)
    result = {"config": str(CONFIG.name), "n": args.n, "sampling_steps": args.steps,
              "train_wall_s": round(train_s, 1), "records": records}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.grid:
        from PIL import Image
        rows = [np.concatenate([g[r] for g in grids], 1) for r in range(8)]
        Image.fromarray(np.concatenate(rows, 0)).resize((64 * 3 * 2, 64 * 8 * 2), Image.NEAREST).save(args.grid)


if __name__ == "__main__":
    main()
