"""How many CPU threads torch uses, chosen so that a shared machine does not collapse it.

torch's default (one intra-op thread per core) spins on every core: with another CPU-bound process on the same cores
its threads wait for each other, and a 0.8 s sampling took 4-34 s (FINDINGS, "Threads on a shared machine"). So:

    --threads N  or  CONDIFF_THREADS=N   -> N                     (the user's word)
    OMP_NUM_THREADS set                  -> torch's own reading of it
    otherwise                            -> the cores this process may use, less the ones other processes keep busy
                                            (the kernel's runnable tasks now), at least 1

A SlowWatch tells, once, when steps run far slower than the best one so far (another process took the cores).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

ENV = "CONDIFF_THREADS"
MAX_THREADS = 1024


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cores() -> int:
    """Cores other processes keep busy now: the runnable tasks the kernel counts (/proc/stat's procs_running), less
    this one. Not the load average, which still counts a run that just ended for a minute after it. Where there is
    no /proc: the 1-minute load average, rounded; 0 where there is neither."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running "):
                    return max(0, int(line.split()[1]) - 1)
    except (OSError, ValueError):
        pass
    try:
        return round(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def parse_threads(value, where: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{where}: a whole number of threads from 1 to {MAX_THREADS}, got {str(value)[:20]!r}")
    return n


@dataclass(frozen=True)
class ThreadChoice:
    threads: int | None  # None: left to torch (OMP_NUM_THREADS)
    reason: str


def choose(requested: int | None = None) -> ThreadChoice:
    """The thread count and why (for a one-line note); ValueError for a bad --threads or CONDIFF_THREADS."""
    if requested is not None:
        return ThreadChoice(parse_threads(requested, "--threads"), "--threads")
    if os.environ.get(ENV):
        return ThreadChoice(parse_threads(os.environ[ENV], ENV), ENV)
    if os.environ.get("OMP_NUM_THREADS"):
        return ThreadChoice(None, "OMP_NUM_THREADS")
    n, busy = cores(), busy_cores()
    return ThreadChoice(max(1, n - busy), f"{n} cores, {busy} kept busy by other processes")


def apply(requested: int | None = None) -> ThreadChoice:
    """choose() and set torch's intra-op threads accordingly."""
    import torch

    choice = choose(requested)
    if choice.threads is not None:
        torch.set_num_threads(choice.threads)
    return choice


class SlowWatch:
    """Steps' durations; `check(seconds)` returns a one-line hint, once, when a step (after `warmup` of them) takes
    more than `factor` times the fastest so far: something else is using the cores."""

    def __init__(self, factor: float = 4.0, warmup: int = 3, patience: int = 3):
        self.factor, self.warmup, self.patience = factor, warmup, patience
        self.best, self.seen, self.slow, self.told = float("inf"), 0, 0, False

    def check(self, seconds: float) -> str | None:
        self.seen += 1
        if self.seen <= self.warmup:  # the first steps include one-time costs (allocation, caches)
            return None
        self.slow = self.slow + 1 if seconds > self.factor * self.best else 0
        self.best = min(self.best, seconds)
        if self.slow >= self.patience and not self.told:
            self.told = True
            return (f"steps now take {seconds:.2f} s against {self.best:.2f} s at best: another process is probably "
                    f"using the cores ({busy_cores()} busy of {cores()}); pin this run's threads with --threads "
                    f"or {ENV} (1 beside one other CPU-bound job on 2 cores)")
        return None
