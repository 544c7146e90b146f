"""Training throughput on 1 process against 2 launched processes (torchrun, gloo), same config, same global batch:

    python benchmarks/train_scaling.py --config configs/latent64.json --batch 32 --out docs/train_scaling.json

Each setting trains twice, for --short and --long steps, from scratch; the difference of the two wall times over the
difference of steps is the time of a step without start-up (model build, text encoder load, process launch).
1 process uses all --threads; 2 processes use threads / 2 each. Both split the batch into 2 micro-batches, so they
train the same weights (tests/test_distributed.py). The ratio is images/s of 2 processes over 1; efficiency is it / 2
of the 2-process ideal.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: Path, out: Path, nproc: int, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.getcwd())
    launch = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={port()}", "-m", "condiff.cli"] if nproc > 1 else [sys.executable, "-m", "condiff.cli"])
    t = time.time()
    subprocess.run(launch + ["train", "--config", str(config), "--out", str(out), "--workers", "0"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/latent64.json")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--short", type=int, default=4)
    p.add_argument("--long", type=int, default=14)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    cfg = json.loads(Path(args.config).read_text())
    cfg["optim"] |= {"batch_size": args.batch, "micro_batches": 2}
    cfg |= {"sample_every": 0, "snapshot_every": 0, "checkpoint_every": 10 ** 6}
    cfg.pop("init", None)
    report = {"config": args.config, "batch": args.batch, "threads": args.threads, "rows": {}}
    for nproc in (1, 2):
        times = {}
        for steps in (args.short, args.long):
            c = tmp / f"c{nproc}_{steps}.json"
            c.write_text(json.dumps(cfg | {"optim": cfg["optim"] | {"steps": steps}}))
            times[steps] = run(c, tmp / f"r{nproc}_{steps}", nproc, max(1, args.threads // nproc))
        step_s = (times[args.long] - times[args.short]) / (args.long - args.short)
        report["rows"][f"{nproc} process(es)"] = {"s_per_step": step_s, "images_per_s": args.batch / step_s}
        print(nproc, report["rows"][f"{nproc} process(es)"], flush=True)
    one, two = (report["rows"][k]["images_per_s"] for k in report["rows"])
    report["speedup"], report["efficiency"] = two / one, two / one / 2
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
