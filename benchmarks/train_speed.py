"""Training throughput (images/s) of a config on this machine: fp32 (baseline) vs bf16 autocast, same process.

    python benchmarks/train_speed.py --config configs/base32.json --batch-size 32 --steps 3
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from condiff.config import load_json
from condiff.train.config import Precision, TrainConfig
from condiff.train.trainer import setup, train_step


def images_per_second(cfg: TrainConfig, steps: int, device: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run = setup(cfg, tmp, device=device)
        train_step(run)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            train_step(run)
        if device == "cuda":
            torch.cuda.synchronize()
        return steps * cfg.optim.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/base32.json")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    results = {}
    for precision in (Precision.FP32, Precision.BF16):
        cfg = load_json(TrainConfig, args.config)
        cfg.optim.batch_size, cfg.precision = args.batch_size, precision
        results[precision] = images_per_second(cfg, args.steps, args.device)
    base = results[Precision.FP32]
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    for precision, ips in results.items():
        print(f"{precision.value:5s} {ips:8.1f} img/s  ratio vs fp32 {ips / base:.2f}")
    cfg = load_json(TrainConfig, args.config)
    hours = cfg.optim.steps * cfg.optim.batch_size / base / 3600
    print(f"{args.config}: {cfg.optim.steps} steps x {cfg.optim.batch_size} images at fp32 -> {hours:.1f} h here")


if __name__ == "__main__":
    main()
