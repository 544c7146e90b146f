"""How close the default's UNet comes to what this CPU can do, in one run: the cores' dense matmul peak (fp32, and
bf16 where oneDNN has it) against the UNet's achieved GFLOP/s in training (forward + backward) and in sampling (a
no-grad forward at CFG's doubled batch), at the shipped sizes, with the layouts and modes worth trying.

    python benchmarks/cpu_efficiency.py --threads 2 --out docs/fast/cpu_efficiency.json

FLOPs are torch.utils.flop_counter's count of one forward (a training step: 3x); the peak is the best of square
matmuls of side 512 to 2048. Variants: channels-last memory layout, bf16 autocast (when the CPU has bf16), and with
--compile torch.compile of the sampling forward (its compile time reported apart). Timings are best-of --iters after
warm-up; run it on a quiet machine, the threads pinned.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from condiff.catalogue import DEFAULT_MODEL
from condiff.config import load_json
from condiff.nets.unet import UNet, UNetConfig


def best_time(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(dtype: torch.dtype, iters: int) -> float:
    """GFLOP/s of the best square matmul (2 n^3 FLOPs) among n = 512, 1024, 2048."""
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        best = max(best, 2 * n ** 3 / best_time(lambda: torch.mm(a, b), iters) / 1e9)
    return best


def unet_inputs(unet: UNet, batch: int) -> dict:
    cfg = unet.cfg
    side = cfg.resolution
    kw = {"context": torch.randn(batch, 32, cfg.context_dim), "context_mask": torch.ones(batch, 32, dtype=torch.bool),
          "pooled": torch.randn(batch, cfg.context_dim)}
    if cfg.grounding_dim:
        n = cfg.grounding_max_boxes
        kw |= {"box_phrases": torch.randn(batch, n, cfg.grounding_dim), "boxes": torch.rand(batch, n, 4).sort(-1)[0],
               "box_mask": torch.ones(batch, n, dtype=torch.bool)}
    return {"x": torch.randn(batch, cfg.in_channels, side, side), "t": torch.randint(0, 1000, (batch,))} | kw


def forward_flops(unet: UNet, inputs: dict) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        unet(**inputs)
    return fc.get_total_flops()


def measure(unet: UNet, train_batch: int, sample_batch: int, iters: int, autocast: bool) -> dict:
    """Achieved GFLOP/s of a training step and of a sampling forward."""
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    train_in, sample_in = unet_inputs(unet, train_batch), unet_inputs(unet, sample_batch)
    target = torch.randn_like(train_in["x"])

    def train_step():
        with ctx():
            loss = (unet(**train_in).float() - target).pow(2).mean()
        loss.backward()

    def sample_step():
        with torch.no_grad(), ctx():
            unet(**sample_in)

    t_train, t_sample = best_time(train_step, iters), best_time(sample_step, iters)
    return {"train_gflops_per_s": 3 * forward_flops(unet, train_in) / t_train / 1e9,
            "sample_gflops_per_s": forward_flops(unet, sample_in) / t_sample / 1e9,
            "train_images_per_s": train_batch / t_train, "sample_images_per_s": sample_batch / t_sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--sample-batch", type=int, default=2, help="one image under CFG: both branches in one call")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also torch.compile the sampling forward")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    report = {"threads": args.threads, "peak_gflops_per_s": {"fp32": matmul_peak(torch.float32, args.iters)}}
    if bf16:
        report["peak_gflops_per_s"]["bf16"] = matmul_peak(torch.bfloat16, args.iters)
    unet = UNet(load_json(UNetConfig, DEFAULT_MODEL / "unet" / "config.json"))
    rows = {"fp32": measure(unet, args.train_batch, args.sample_batch, args.iters, False)}
    rows["fp32 channels-last"] = measure(unet.to(memory_format=torch.channels_last), args.train_batch,
                                         args.sample_batch, args.iters, False)
    unet = unet.to(memory_format=torch.contiguous_format)
    if bf16:
        rows["bf16 autocast"] = measure(unet, args.train_batch, args.sample_batch, args.iters, True)
    if args.compile:
        compiled = torch.compile(unet)
        inputs = unet_inputs(unet, args.sample_batch)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(**inputs)
        report["compile_seconds"] = time.perf_counter() - start
        with torch.no_grad():
            t = best_time(lambda: compiled(**inputs), args.iters)
        rows["fp32 compiled (sampling)"] = {"sample_gflops_per_s": forward_flops(unet, inputs) / t / 1e9,
                                            "sample_images_per_s": args.sample_batch / t}
    for name, row in rows.items():
        peak = report["peak_gflops_per_s"]["bf16" if "bf16" in name else "fp32"]
        for k in ("train", "sample"):
            if f"{k}_gflops_per_s" in row:
                row[f"{k}_fraction_of_peak"] = row[f"{k}_gflops_per_s"] / peak
    report["rows"] = rows
    print(f"matmul peak: {report['peak_gflops_per_s']} GFLOP/s on {args.threads} thread(s)")
    print("| variant | train GFLOP/s | of peak | sample GFLOP/s | of peak | train img/s | sample img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        tr = (f"{r['train_gflops_per_s']:.1f} | {r['train_fraction_of_peak']:.2f}" if "train_gflops_per_s" in r
              else "- | -")
        print(f"| {name} | {tr} | {r['sample_gflops_per_s']:.1f} | {r['sample_fraction_of_peak']:.2f} | "
              f"{r.get('train_images_per_s', float('nan')):.1f} | {r['sample_images_per_s']:.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
