"""Training throughput (images/s) of configs on this machine, fp32 and bf16 autocast, all in one process.

The baseline is the first config at fp32; every row prints its ratio to it, and each config's own precision gives
its wall-clock estimate for the full run.

    python benchmarks/train_speed.py --config configs/base32.json configs/base32_cpu.json --batch-size 64 --steps 4
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from condiff.train.config import Precision
from condiff.train.tasks import load_train_config
from condiff.train.trainer import setup, train_step


def images_per_second(cfg, steps: int, device: str) -> float:
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
    parser.add_argument("--config", nargs="+", default=["configs/base32.json"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    results = {}
    for path in args.config:
        for precision in (Precision.FP32, Precision.BF16):
            cfg = load_train_config(path)
            cfg.optim.batch_size, cfg.precision = args.batch_size, precision
            results[path, precision] = images_per_second(cfg, args.steps, args.device)
    base = results[args.config[0], Precision.FP32]
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}; "
          f"baseline {args.config[0]} fp32")
    for (path, precision), ips in results.items():
        print(f"{path:28s} {precision.value:5s} {ips:8.1f} img/s  ratio {ips / base:.2f}")
    for path in args.config:
        cfg = load_train_config(path)
        ips = results[path, Precision(cfg.precision)]
        minutes = cfg.optim.steps * cfg.optim.batch_size / ips / 60
        print(f"{path}: {cfg.optim.steps} steps x {cfg.optim.batch_size} images at its {Precision(cfg.precision).value}"
              f" -> {minutes:.0f} min here")


if __name__ == "__main__":
    main()
