"""condiff's UNet against diffusers' UNet2DConditionModel at matched parameter count, resolution, context and batch:

    python benchmarks/unet_speed.py --out docs/unet_speed.json

Ours is the shipped latent64 UNet's config (16x16x4 latents, 64 channels, attention at 16 and 8 px, the text's
tokens in every attention layer's keys, pooled text in the timestep embedding). diffusers' is configured to the same
number of parameters (within 5 %, checked), with cross-attention on the same 32 tokens of width 384. Both run in
float32 on this machine's threads. Training is forward + backward of the MSE to a random target (images/s);
sampling is a no-grad forward at the sampler's batch (images/s, one model call per image and step). The ratio is
ours / diffusers: above 1 means condiff is faster. With --flops, also the forward FLOPs per image of each (by
torch.utils.flop_counter), and on a GPU with --peak-tflops the MFU of the training step.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from condiff.config import load_json
from condiff.nets.unet import UNet, UNetConfig
from condiff.catalogue import WEIGHTS


def diffusers_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(56, 112, 128),
                                layers_per_block=2, norm_num_groups=8, cross_attention_dim=384, attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def timed(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--flops", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="the chip's bf16 peak, for MFU (H100/H200 SXM: 989)")
    p.add_argument("--out")
    args = p.parse_args()
    dev, B = torch.device(args.device), args.batch
    torch.manual_seed(0)
    ours = UNet(load_json(UNetConfig, WEIGHTS / "latent64" / "unet" / "config.json")).to(dev)
    theirs = diffusers_unet().to(dev)
    n_ours, n_theirs = (sum(q.numel() for q in m.parameters()) for m in (ours, theirs))
    assert abs(n_theirs / n_ours - 1) < 0.05, (n_ours, n_theirs)
    x, t = torch.randn(B, 4, 16, 16, device=dev), torch.randint(0, 1000, (B,), device=dev)
    ctx, mask, pooled = torch.randn(B, 32, 384, device=dev), torch.ones(B, 32, dtype=torch.bool, device=dev), torch.randn(B, 384, device=dev)
    target = torch.randn_like(x)
    calls = {"condiff": lambda: ours(x, t, context=ctx, context_mask=mask, pooled=pooled),
             "diffusers": lambda: theirs(x, t, encoder_hidden_states=ctx).sample}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    report = {"batch": B, "device": str(dev), "threads": torch.get_num_threads(),
              "parameters": {"condiff": n_ours, "diffusers": n_theirs}}
    for name, call in calls.items():
        def train_step(call=call):
            loss = (call() - target).pow(2).mean()
            loss.backward()
            sync()

        def sample_step(call=call):
            with torch.no_grad():
                call()
            sync()
        report.setdefault("train_images_per_s", {})[name] = B / timed(train_step, args.iters)
        report.setdefault("sample_images_per_s", {})[name] = B / timed(sample_step, args.iters)
        if args.flops:
            from torch.utils.flop_counter import FlopCounterMode

            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                call()
            report.setdefault("forward_gflops_per_image", {})[name] = fc.get_total_flops() / B / 1e9
            if args.peak_tflops:  # training ~ 3x the forward's FLOPs
                achieved = 3 * fc.get_total_flops() / B * report["train_images_per_s"][name]
                report.setdefault("mfu", {})[name] = achieved / (args.peak_tflops * 1e12)
    for key in ("train_images_per_s", "sample_images_per_s"):
        report[key]["ratio_condiff_over_diffusers"] = report[key]["condiff"] / report[key]["diffusers"]
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
