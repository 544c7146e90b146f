"""Threads on a shared machine: one cold `condiff generate`, alone and beside a competing CPU-bound process, with
torch's own default, condiff's choice, 1 thread and 2 threads, in one command.

    python benchmarks/threads.py --repeats 3 --out docs/fast/threads.json

Run it on an otherwise quiet machine: it makes its own competitor. Each cell is the median over --repeats runs of
a fresh process running the README's first command (`condiff generate "a red circle to the left of a blue square"`,
the default model at its own settings, one image): its wall time, and the generation time the command reports. The competitor is a CPU-bound process doing float32 matmuls on
--competitor-threads threads, as a training run with OMP_NUM_THREADS=1 does; it runs for the whole 'beside' column.

Settings:
- torch: OMP_NUM_THREADS and CONDIFF_THREADS unset and `--threads` set to torch's own default (one per core), i.e.
  what a plain torch program does;
- condiff: nothing set: condiff/threads.py chooses (the cores less the ones other processes keep busy);
- 1, 2: `--threads 1`, `--threads 2`.
The ratio column is the cell's wall time over condiff's choice alone.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


COMPETITOR = """
import torch, time
torch.set_num_threads({threads})
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a) * 0.5
"""


def env_without_threads() -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CONDIFF_THREADS"):
        env.pop(k, None)
    return env


def one_generate(threads: str | None, out: Path) -> tuple[float, float]:
    """(wall seconds, generation seconds as the command reports them) of one fresh `condiff generate`."""
    cmd = [sys.executable, "-m", "condiff.cli", "generate", "a red circle to the left of a blue square", "--out",
           str(out)] + (["--threads", threads] if threads else [])
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env_without_threads(), capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"generate failed: {done.stderr.strip().splitlines()[-1:]}")
    found = re.search(r"image\(s\) in ([0-9.]+) s", done.stderr)
    return wall, float(found.group(1)) if found else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--competitor-threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             env=env_without_threads(), capture_output=True, text=True, check=True).stdout.strip()
    settings = {"torch": default, "condiff": None, "1": "1", "2": "2"}
    cells, t0 = {}, time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for where in ("alone", "beside"):
            rival = None
            if where == "beside":
                rival = subprocess.Popen([sys.executable, "-c", COMPETITOR.format(threads=args.competitor_threads)],
                                         env=env_without_threads())
                time.sleep(2)  # let it reach its loop (and the kernel count it runnable)
            try:
                for name, threads in settings.items():
                    runs = [one_generate(threads, Path(tmp) / "o.png") for _ in range(args.repeats)]
                    cells[(where, name)] = {"wall_s": statistics.median(r[0] for r in runs),
                                            "sampling_s": statistics.median(r[1] for r in runs),
                                            "runs": [[round(w, 2), s] for w, s in runs]}
                    print(where, name, cells[(where, name)], flush=True)
            finally:
                if rival is not None:
                    rival.kill()
                    rival.wait()
    base = cells[("alone", "condiff")]["wall_s"]
    rows = [{"setting": name, "threads": threads or "chosen", **{f"{where}_{k}": round(cells[(where, name)][k], 2)
                                                                for where in ("alone", "beside")
                                                                for k in ("wall_s", "sampling_s")},
             "beside_over_condiff_alone": round(cells[("beside", name)]["wall_s"] / base, 2)}
            for name, threads in settings.items()]
    report = {"command": "condiff generate 'a red circle to the left of a blue square'", "repeats": args.repeats, "competitor_threads": args.competitor_threads,
              "cores": os.cpu_count(), "torch_default_threads": settings["torch"], "rows": rows,
              "runs": {f"{w}/{n}": c["runs"] for (w, n), c in cells.items()}, "wall_s": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("| setting | alone: wall | alone: sampling | beside: wall | beside: sampling | beside / condiff alone |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['setting']} | {r['alone_wall_s']} s | {r['alone_sampling_s']} s | {r['beside_wall_s']} s | "
              f"{r['beside_sampling_s']} s | {r['beside_over_condiff_alone']}x |")


if __name__ == "__main__":
    main()
