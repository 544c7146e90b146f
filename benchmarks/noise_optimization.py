"""CLIP-optimised x_T (seed 003, approach 2): memory and time of the differentiable DDIM chain with and without
gradient checkpointing, and what the optimisation buys (CLIP logit, oracle accuracy).

    python benchmarks/noise_optimization.py --chain-steps 5 10 20 --iters 10 --prompts 16

Memory is the bytes autograd saves for the backward pass (exact, device-independent); with checkpointing, one
step's activations are rebuilt at a time in the backward pass, so the peak is those plus one step's. Time is one
ascent iteration (forward + backward through the chain), best of --repeats, the variants interleaved. Prints the checkpointed / plain ratios. Writes
docs/noise_optimization.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from condiff.diffusion.noise_optimization import (Checkpointed, ddim_chain, optimize_initial_noise,
                                                  saved_activation_bytes)
from condiff.diffusion.samplers import PerSampleNoise
from condiff.diffusion.sampling import SamplingOptions
from condiff.nets.clip import load_clip
from condiff.pipelines.guidance import clip_log_prob
from condiff.catalogue import DEFAULT_JUDGES
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.bench import suite_prompts
from condiff.world.oracle import judge
from condiff.world.render import to_uint8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain-steps", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=16, help="position + two-object prompts, one image each")
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations per variant (best is kept)")
    ap.add_argument("--out", default="docs/noise_optimization.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    pipe = Text2ImagePipeline.from_pretrained()
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    clip = load_clip(DEFAULT_JUDGES["clip"]).requires_grad_(False)
    prompts = suite_prompts("position", args.prompts // 2) + suite_prompts("two_objects", args.prompts - args.prompts // 2)
    seeds = list(range(len(prompts)))
    model = pipe.guided_model(prompts, SamplingOptions(guidance_scale=1.0))
    objective = clip_log_prob(clip, prompts)
    report = {"prompts": len(prompts), "iters": args.iters, "rows": []}
    print("| chain steps | saved MB plain | saved MB ckpt (+ one step's rebuilt) | ratio | s/iter plain | s/iter ckpt | ratio "
          "| CLIP logit before -> after | oracle acc before -> after |")
    print("| --- " * 9 + "|")
    for n in args.chain_steps:
        ts = pipe.schedule.timesteps(n)
        z = PerSampleNoise(seeds)((len(seeds), 3, 32, 32))
        row = {"chain_steps": n}
        variants = (("plain", model), ("checkpointed", Checkpointed(model)))
        for name, m in variants:
            row[f"saved_mb_{name}"] = saved_activation_bytes(
                lambda: ddim_chain(m, z.clone().requires_grad_(True), pipe.schedule, ts)) / 2 ** 20
        row["saved_mb_one_step"] = saved_activation_bytes(
            lambda: ddim_chain(model, z.clone().requires_grad_(True), pipe.schedule, ts[:1])) / 2 ** 20
        for _ in range(args.repeats):  # interleaved, best of `repeats`: neither variant gets the warm caches
            for name, m in variants:
                zz = z.clone().requires_grad_(True)
                start = time.perf_counter()
                objective(ddim_chain(m, zz, pipe.schedule, ts), None).sum().backward()
                elapsed = time.perf_counter() - start
                row[f"s_per_iter_{name}"] = min(elapsed, row.get(f"s_per_iter_{name}", elapsed))
        start = time.perf_counter()
        best, history = optimize_initial_noise(model, pipe.schedule, z, lambda x0: objective(x0, None), ts, iters=args.iters)
        row["optimise_s"] = time.perf_counter() - start
        with torch.no_grad():
            before, after = ddim_chain(model, z, pipe.schedule, ts).clamp(-1, 1), ddim_chain(model, best, pipe.schedule, ts).clamp(-1, 1)
            row["clip_before"], row["clip_after"] = objective(before, None).mean().item(), objective(after, None).mean().item()
        acc = lambda imgs: sum(judge(px, p).correct for px, p in zip(to_uint8(imgs).numpy(), prompts)) / len(prompts)
        row["acc_before"], row["acc_after"] = acc(before), acc(after)
        report["rows"].append(row)
        print(f"| {n} | {row['saved_mb_plain']:.0f} | {row['saved_mb_checkpointed']:.0f} (+{row['saved_mb_one_step']:.0f}) | "
              f"{row['saved_mb_checkpointed'] / row['saved_mb_plain']:.3f} | {row['s_per_iter_plain']:.2f} | "
              f"{row['s_per_iter_checkpointed']:.2f} | {row['s_per_iter_checkpointed'] / row['s_per_iter_plain']:.2f} | "
              f"{row['clip_before']:.2f} -> {row['clip_after']:.2f} | {row['acc_before']:.2f} -> {row['acc_after']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
