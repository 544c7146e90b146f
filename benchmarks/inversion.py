"""Exact inversion: how closely `edit invert` gives back its input, per inversion method, on the default model.

    python benchmarks/inversion.py --n 8 --steps 50 --out docs/editing/inversion.json

Scenes: n two-object and position scenes drawn by the model itself (its own images, seeds 0..n-1), and n drawn by
the world's renderer (images the model never made). Each is inverted with its caption at 'leading' DDIM steps and
regenerated from the inverted x_T; the figure is the PSNR of the regeneration to the input (uint8 pixels).

Methods (pipelines/editing.Inversion), the first being the baseline run in the same command:
- plain: DDIM inversion as Song et al. run it (eps read at the step's start, one step late; the latent is E(x));
- fixed-point k: each step solved for the x_t whose DDIM step lands on x_{t'} by k iterations (Pan et al. 2023);
- fixed-point k + decoder m: also the latent fitted to the image through the decoder by m Adam steps (Hong et al.
  2024), so that a latent model's round trip is no longer capped by its autoencoder's D(E(x));
- EDICT (Wallace et al. 2023): two coupled chains whose inversion is exact by construction, alone and after the
  decoder fit (the default of `edit invert`).
--methods picks some (by the start of their names); --merge adds the rows to an existing --out file.
Each at CFG 1 (the `edit invert` default) and, on the model's own scenes, CFG 3 (the model's sampling default).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from condiff.catalogue import DEFAULT_MODEL
from condiff.diffusion.sampling import SamplingOptions
from condiff.pipelines.editing import EDICT_DECODER_STEPS, Inversion, invert, invert_coupled, regenerate, regenerate_coupled
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.bench import suite_prompts
from condiff.world.grammar import parse_caption
from condiff.world.render import layout, render, to_uint8

BAR_DB = 35.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of one image pair in [-1, 1], compared as uint8: 10 log10(255^2 / MSE)."""
    mse = (to_uint8(a[None]).double() - to_uint8(b[None]).double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def scenes(pipe: Text2ImagePipeline, n: int) -> dict[str, tuple[list[str], torch.Tensor]]:
    captions = (suite_prompts("two_objects", n) + suite_prompts("position", n))[::2][:n]
    drawn = pipe(captions, list(range(n)), SamplingOptions(steps=50, sampler="ddim")).cpu()
    rng = random.Random(0)
    rendered = render([layout(parse_caption(c), rng) for c in captions], pipe.resolution)
    return {"drawn by the model": (captions, drawn), "drawn by the renderer": (captions, rendered)}


def round_trip(pipe, captions, images, steps: int, scale: float, how: Inversion | int) -> tuple[list[float], float]:
    """how: a DDIM inversion, or EDICT's given as its number of decoder steps."""
    opts = SamplingOptions(steps=steps, sampler="ddim", schedule="leading", guidance_scale=scale, threshold="none")
    start = time.perf_counter()
    if isinstance(how, Inversion):
        rec = regenerate(pipe, captions, invert(pipe, captions, images, opts, how), opts)
    else:
        rec = regenerate_coupled(pipe, captions, invert_coupled(pipe, captions, images, opts, decoder_steps=how), opts)
    seconds = (time.perf_counter() - start) / len(captions)
    return [round(psnr(r, x), 2) for r, x in zip(rec, images)], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--methods", nargs="*", help="only the methods whose names start with these")
    ap.add_argument("--merge", action="store_true", help="add the rows to those already in --out")
    a = ap.parse_args()
    pipe = Text2ImagePipeline.from_pretrained(a.model)
    k = Inversion().fixed_point_iters
    methods = {"plain (baseline)": Inversion(0, 0), f"fixed-point {k} (--method ddim)": Inversion(k, 0),
               f"fixed-point {k} + decoder 50": Inversion(k, 50), "EDICT": 0,
               f"EDICT + decoder {EDICT_DECODER_STEPS} (default)": EDICT_DECODER_STEPS}
    if a.methods:
        methods = {m: how for m, how in methods.items() if any(m.startswith(p) for p in a.methods)}
    rows = json.loads(a.out.read_text())["rows"] if a.merge and a.out and a.out.exists() else []
    print(f"| scenes | CFG | method | PSNR min / mean (dB) | >= {BAR_DB:g} dB | s per image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (captions, images) in scenes(pipe, a.n).items():
        for scale in (1.0, 3.0) if name == "drawn by the model" else (1.0,):
            for method, how in methods.items():
                values, seconds = round_trip(pipe, captions, images, a.steps, scale, how)
                row = {"scenes": name, "cfg": scale, "method": method, "psnr": values, "s_per_image": round(seconds, 1),
                       "at_least_bar": sum(v >= BAR_DB for v in values)}
                rows.append(row)
                print(f"| {name} | {scale:g} | {method} | {min(values):.1f} / {sum(values) / len(values):.1f} | "
                      f"{row['at_least_bar']} of {len(values)} | {seconds:.1f} |", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"model": a.model, "steps": a.steps, "threads": torch.get_num_threads(),
                                     "bar_db": BAR_DB, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
