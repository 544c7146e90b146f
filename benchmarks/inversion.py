"""DDIM inversion round trip on rendered world images: invert x_0 -> x_T with the caption, regenerate, report PSNR.

    python benchmarks/inversion.py --steps 50 250 --images 8

With the cosine schedule alpha_bar(999) = 2.4e-9: a schedule that ends at t = 999 ('uniform') makes the last inversion
step ill-conditioned (regeneration divides by sqrt(alpha_bar)); 'leading' spacing ends at t = 1000 - 1000/steps.
"""
from __future__ import annotations

import argparse
import math
import random

import torch

from condiff.diffusion.guidance import Conditioned
from condiff.diffusion.samplers import ddim_invert, sample_ddim
from condiff.diffusion.schedule import Spacing
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.catalogue import DEFAULT_MODEL
from condiff.world.bench import SUITES, suite_prompts
from condiff.world.grammar import parse_caption
from condiff.world.render import layout, render, to_uint8


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of uint8 images: 10 log10(255^2 / MSE)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


@torch.no_grad()
def round_trip(pipe: Text2ImagePipeline, captions: list[str], steps: int, spacing: Spacing, seed: int = 0) -> float:
    rng = random.Random(seed)
    x0 = render([layout(parse_caption(c), rng) for c in captions], pipe.resolution).to(pipe.device)
    model = Conditioned(pipe.denoiser, pipe.encode(captions))
    ts = pipe.schedule.timesteps(steps, spacing)
    x_T = ddim_invert(model, x0, pipe.schedule, ts)
    rec = sample_ddim(model, x_T, pipe.schedule, ts, x0_fn=None)
    return psnr(to_uint8(rec), to_uint8(x0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 250])
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    pipe = Text2ImagePipeline.from_pretrained(args.model)
    captions = [p for suite in SUITES[:4] for p in suite_prompts(suite, args.images // 4)]
    print(f"DDIM inversion round trip, {len(captions)} rendered world images, guidance scale 1, no clipping")
    print("| steps | spacing | largest t | PSNR (dB) |\n| --- | --- | --- | --- |")
    for steps in args.steps:
        for spacing in (Spacing.UNIFORM, Spacing.LEADING):
            t_max = pipe.schedule.timesteps(steps, spacing)[0]
            print(f"| {steps} | {spacing.value} | {t_max} | {round_trip(pipe, captions, steps, spacing):.2f} |")


if __name__ == "__main__":
    main()
