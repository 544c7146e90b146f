"""The one trainer: setup, step, evaluate and save (nanoGPT style), for every model kind.

A task (train/tasks.py) contributes only what differs between kinds: its config class, the module it trains, its
loss on a batch, what it exports when it saves, and optionally a sample grid. Everything else is here: data
batches made ahead by workers, AdamW with warm-up, gradient clipping, EMA, bf16 autocast, tqdm progress, atomic
checkpoints, exact --resume, and a save on Ctrl-C.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, load_json, save_json
from ..data import make_dataset
from ..io import CheckpointError
from . import distributed
from .config import LRSchedule, Precision
from .distributed import World
from .. import threads
from .ema import EMA
from .state import latest_checkpoint, load_state, save_state
from .task import Run
from .tasks import task_of


def slow_bf16(device: torch.device, precision, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """bf16 autocast on a Linux CPU without native bf16 (AVX512-BF16 or AMX): emulated, measured 14x slower than
    fp32 for the unCLIP prior's step on a 2-core AMD EPYC. Elsewhere (GPUs, other systems) not known slow."""
    if Precision(precision) is not Precision.BF16 or device.type != "cpu" or not os.path.isfile(cpuinfo):
        return False
    with open(cpuinfo) as f:
        flags = f.read()
    return "avx512_bf16" not in flags and "amx_bf16" not in flags


def resolve_device(device: str | None) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def setup(cfg, folder: Path, resume: bool = False, device: str | None = None, overwrite: bool = False,
          world: World | None = None) -> Run:
    """Build data, model, EMA and optimizer for cfg's task; with resume, restore the latest checkpoint exactly.

    A folder that already holds a run is refused unless resume (continue it) or overwrite (start it over) is given.
    In a launched world every rank builds the same run; rank 0 alone writes to the folder.
    """
    task, folder, world = task_of(cfg), Path(folder), world or World()
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    held = (folder / "checkpoints" / "latest").exists() or (folder / "config.json").exists()
    distributed.barrier(world)  # every rank has looked before rank 0 writes
    if resume and not held:
        raise ConfigError(f"--resume: '{folder}' holds no training run to continue; leave out --resume to start one")
    if held and not resume and not overwrite:
        raise ConfigError(f"'{folder}' already holds a training run: pass --resume to continue it, "
                          f"--overwrite to start it over, or choose another --out")
    if held and overwrite and world.main:
        for name in ("checkpoints", "model", "samples", "snapshots", "config.json"):
            target = folder / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    if resume:  # the run's own config wins; only the step budget may be extended
        steps = cfg.optim.steps
        cfg = load_json(task.config_cls, folder / "config.json")
        cfg.optim.steps = max(steps, cfg.optim.steps)
    shards = check_shards(task, cfg, world)  # before any work
    device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    data = make_dataset(cfg.data)
    task.drop_handed()  # nothing an earlier build in this process handed on
    model = task.build(cfg, data, resume=resume).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.optim.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    run = Run(task, cfg, folder, data, model, ema, opt, generator, device, world=world, shards=shards)
    task.prepare(run)
    if cfg.compile:  # after EMA and optimizer hold the parameters; Module.compile keeps their names
        for module in model.children():
            module.compile()
    if resume:
        run.step = load_state(latest_checkpoint(folder), model, ema.model, opt, generator)
    elif world.main:
        save_json(cfg, folder / "config.json")
    distributed.barrier(world)
    return run


def check_shards(task, cfg, world: World) -> int:
    """optim.micro_batches resolved for this world, or a one-line error: the shards must divide the batch and split
    evenly over the processes."""
    try:
        shards = distributed.resolve_shards(cfg.optim.micro_batches, cfg.optim.batch_size, world.size)
        if shards != 1 or world.size > 1:
            distributed.my_shards(world, shards)
            distributed.shard_slices(cfg.optim.batch_size, shards)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if (shards != 1 or world.size > 1) and task.batch_coupled:
        raise ConfigError(f"optim.micro_batches: a {task.name} loss couples the whole batch (in-batch negatives); "
                          "train it as one shard on one process")
    return shards


def batch_line(run: Run) -> str:
    """The run's first line: the global batch, what each process computes of it, and the shards."""
    batch, world, shards = run.cfg.optim.batch_size, run.world, run.shards
    where = f"{world.size} processes" if world.size > 1 else "1 process"
    return (f"training {run.task.name} on {where}: global batch {batch}, {batch // world.size} per process, "
            f"{shards} shard{'s' if shards > 1 else ''} of {batch // shards} (optim.micro_batches "
            f"{run.cfg.optim.micro_batches}); from step {run.step} to {run.cfg.optim.steps}")


def lr_at(cfg, step: int) -> float:
    """Linear warm-up, then constant or (lr_schedule "cosine") half a cosine down to 0 at the last step."""
    o = cfg.optim
    if step < o.warmup_steps or LRSchedule(o.lr_schedule) is LRSchedule.CONSTANT:
        return o.lr * min(1.0, (step + 1) / max(1, o.warmup_steps))
    return o.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps))))


class StepBatches(torch.utils.data.Dataset):
    """Item k is the batch of optimiser step k; a function of (seed, k) alone, so workers may make it."""

    def __init__(self, data, seed: int, batch_size: int):
        self.data, self.seed, self.batch_size = data, seed, batch_size

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, step: int):
        return self.data.raw(self.seed, step, self.batch_size)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def ignore_stop_signals(worker_id: int) -> None:
    """A data worker's init: SIGINT and SIGTERM sent to the whole process group (Ctrl-C, `timeout`, `docker stop`)
    are left to the main process, which saves and then ends the workers."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def batches(run: Run, workers: int):
    """An iterator of raw batches for steps run.step .. steps-1, made ahead of time by `workers` processes (0: in
    this one). The workers start with SIGINT and SIGTERM blocked and ignore them from their init on, so a signal to
    the group in that window neither kills them nor is lost in the main process (it is delivered when unblocked)."""
    steps = range(run.step, run.cfg.optim.steps)
    ds = StepBatches(run.data, run.cfg.seed, run.cfg.optim.batch_size)
    extra = {"prefetch_factor": 4, "worker_init_fn": ignore_stop_signals} if workers else {}
    own = torch.Generator().manual_seed(0)  # worker seeding must not consume the global RNG
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=steps, num_workers=workers, generator=own, **extra)
    if not workers or not hasattr(signal, "pthread_sigmask"):
        return iter(loader)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)  # forks the workers
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def train_step(run: Run, batch=None) -> float:
    cfg = run.cfg
    raw = batch if batch is not None else run.data.raw(cfg.seed, run.step, cfg.optim.batch_size)
    for group in run.opt.param_groups:
        group["lr"] = lr_at(cfg, run.step)
    run.opt.zero_grad(set_to_none=True)
    if run.shards == 1 and run.world.size == 1:
        loss = _backward(run, raw, 1.0).item()
    else:
        loss = _sharded_backward(run, raw)
    nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.grad_clip)
    run.opt.step()
    run.step += 1
    run.ema.update(run.model, run.step)
    return loss


def _backward(run: Run, raw, weight: float) -> torch.Tensor:
    """The task's loss on one (part of a) batch, its gradient (times weight) accumulated."""
    images, captions = run.data.materialize(raw, run.device)
    extras = run.task.extras(run, raw)  # e.g. boxes, for tasks that use them
    with run.autocast():
        loss = run.task.loss(run, images, captions, **extras)
    (loss * weight).backward()
    if getattr(run.data, "skipped", 0):  # undecodable samples a streaming source replaced, shown in the progress line
        run.logs["skipped"] = run.data.skipped
    return loss.detach()


def _sharded_backward(run: Run, raw) -> float:
    """This rank's shards of the global batch, each with its own (seed, step, shard) generator; then the gradients
    (each shard weighted by its share of the batch) summed across ranks: the mean gradient of the whole batch."""
    cfg, world, own = run.cfg, run.world, run.generator
    slices = distributed.shard_slices(cfg.optim.batch_size, run.shards)
    total = torch.zeros((), device=run.device)
    try:
        for s in distributed.my_shards(world, run.shards):
            run.generator = distributed.shard_generator(cfg.seed, run.step, s)
            total += _backward(run, run.data.shard(raw, slices[s]), 1 / len(slices)) / len(slices)
    finally:
        run.generator = own
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    distributed.all_reduce_(grads + [total.view(1)], world)
    return total.item()


def save(run: Run) -> None:
    """An atomic checkpoint (model, EMA, optimizer, RNG) and the exported EMA model in <run>/model (rank 0 only)."""
    if not run.world.main or run.saved_step == run.step:
        return
    run.saved_step = run.step
    save_state(run.folder, run.step, run.model, run.ema.model, run.opt, run.generator, run.cfg.keep_checkpoints)
    try:
        run.task.export(run, run.folder / "model")
    except OSError as e:  # e.g. ENOSPC: the export is written beside the old model and swapped in only when complete
        for tmp in run.folder.glob("model.tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"exporting the model of step {run.step} failed ({e.strerror or e}); the checkpoint "
                              f"of step {run.step} is saved: free space and continue with --resume") from None


def train(cfg, folder: Path, resume: bool = False, device: str | None = None, workers: int | None = None,
          overwrite: bool = False) -> Run:
    """Train cfg's task to cfg.optim.steps; Ctrl-C or SIGTERM saves a checkpoint first (resume continues exactly).
    Under torchrun / accelerate launch, each process trains its shards of every batch (train/distributed.py)."""
    world = distributed.init_world(resolve_device(device))
    try:
        return _train(cfg, folder, resume, distributed.local_device(device, world), workers, overwrite, world)
    finally:
        distributed.close(world)


def _train(cfg, folder, resume, device, workers, overwrite, world) -> Run:
    from tqdm.auto import tqdm

    run = setup(cfg, folder, resume, device, overwrite, world)
    cfg = run.cfg
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) // 2 // world.size)
    if world.main and slow_bf16(run.device, cfg.precision):
        print("warning: precision bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo) is "
              "emulated and can be 10x slower than fp32; set \"precision\": \"fp32\"", file=sys.stderr)
    if world.main:
        print(batch_line(run), flush=True)
    bar = tqdm(total=cfg.optim.steps, initial=run.step, desc=f"training {run.task.name}", unit="step", dynamic_ncols=True,
               disable=not world.main)
    start, start_step, loss_avg = time.time(), run.step, None
    stop, previous = _interrupt_between_steps()
    watch = threads.SlowWatch()
    try:
        for batch in batches(run, workers):
            began = time.time()
            loss = train_step(run, batch)
            if run.step == start_step + 1 and world.main:
                grace_warning(time.time() - began, bar)
            if world.main and (hint := watch.check(time.time() - began)):
                bar.write(f"note: {hint}")
            loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == cfg.optim.steps:
                rate = (run.step - start_step) / (time.time() - start)
                bar.set_postfix(loss=f"{loss_avg:.4f}", img_s=f"{rate * cfg.optim.batch_size:.0f}", **run.logs)
            evaluate(run, bar)
            signum = distributed.agree_on_stop(stop[0] if stop else 0, run.world, run.device)
            if signum:  # Ctrl-C or SIGTERM arrived during the step (on any rank): act on it now, at a step boundary
                stop.quiet = True  # a second signal while the data workers shut down is noted, not raised in __del__
                raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if run.step == start_step:  # nothing to train: export the initialised model (e.g. init.from_model +
            save(run)               # grounding), or again a finished run's, whose export may have failed (disk full)
    except KeyboardInterrupt as e:
        stop.quiet = False
        if isinstance(e, Again) or len(stop) > 1:
            bar.write(f"interrupted again: not saved; {run.folder} keeps its last complete checkpoint")
        elif run.step > start_step:
            save(run)
            if world.main:
                bar.write(f"interrupted: saved step {run.step} in {run.folder}; continue with --resume")
        raise
    finally:
        bar.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler if not stop else _after_echo(handler, stop))
    return run


TORCHRUN_GRACE_S = 30  # torchrun's default --shutdown-timeout: SIGKILL this long after it forwards SIGTERM


def grace_warning(step_seconds: float, bar) -> None:
    """Under torchrun a signal is saved at the end of the running step, and torchrun kills its workers
    --shutdown-timeout seconds (default 30) after forwarding it: a longer step would be killed before it saves."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    grace = float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", TORCHRUN_GRACE_S))
    if step_seconds > 0.8 * grace:
        need = int(math.ceil(3 * step_seconds / 10) * 10)
        bar.write(f"warning: a step takes {step_seconds:.0f} s, close to or over torchrun's {grace:.0f} s shutdown "
                  f"grace: a signal would kill the ranks before the step ends and saves; launch with "
                  f"torchrun --shutdown-timeout {need}")


def _after_echo(previous, stop: Signals):
    """The handler put back after a stop: the echo of the signal that stopped the run, still on its way while the
    process exits, is dropped; a later signal gets the old handler (the default one: terminate)."""

    def handler(signum, frame):
        if stop.is_echo():
            return
        if callable(previous):
            return previous(signum, frame)
        signal.signal(signum, previous)  # SIG_DFL (or SIG_IGN): as if it had never been replaced
        os.kill(os.getpid(), signum)
    return handler


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that both save the run the same way."""


class Again:
    """A second signal: exit at once, without saving (the checkpoint being written, if any, is discarded whole)."""


class InterruptedAgain(Again, KeyboardInterrupt):
    pass


class TerminatedAgain(Again, Terminated):
    pass


ECHO_SECONDS = 1.0  # a signal this soon after the first is its echo, not a second request (CONDIFF_SIGNAL_ECHO_S)


class Signals(list):
    """The signals noted so far; while quiet (the loop is already unwinding) a second one is noted, not raised."""
    quiet = False
    first = 0.0  # time.monotonic() of the first signal
    echo = ECHO_SECONDS

    def is_echo(self) -> bool:
        """A signal now, after a first one, is that one's echo."""
        return bool(self) and time.monotonic() - self.first < self.echo


def _interrupt_between_steps():
    """Ctrl-C and SIGTERM are noted and acted on after the running step, so the checkpoint that save() writes is a
    step boundary (an interrupt between opt.step() and the step count would save a state that --resume repeats a
    step from); a second signal interrupts at once. One request often arrives twice within milliseconds: `timeout`
    or Ctrl-C signal the whole group, and torchrun's agent, signalled too, then forwards SIGTERM to its workers. A
    signal within ECHO_SECONDS of the first (the environment's CONDIFF_SIGNAL_ECHO_S, if set) is taken as that echo
    and dropped, so the run still saves. Returns (the
    noted signals, the old handlers to restore); off the main thread nothing is installed."""
    stop = Signals()
    stop.echo = float(os.environ.get("CONDIFF_SIGNAL_ECHO_S", ECHO_SECONDS))

    def handler(signum, frame):
        if stop.is_echo():
            return
        if stop and not stop.quiet:
            raise TerminatedAgain if signum == signal.SIGTERM else InterruptedAgain
        if not stop:
            stop.first = time.monotonic()
        stop.append(signum)

    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    return stop, previous


def evaluate(run: Run, bar) -> None:
    """Periodic work after a step: checkpoint, snapshot for learning curves, sample grid."""
    cfg, step, last = run.cfg, run.step, run.step == run.cfg.optim.steps
    if not run.world.main:
        return
    if step % cfg.checkpoint_every == 0 or last:
        save(run)
    if cfg.snapshot_every and step % cfg.snapshot_every == 0:
        run.task.export(run, run.folder / "snapshots" / f"step_{step:08d}")
    if cfg.sample_every and (step % cfg.sample_every == 0 or last) and (grid := run.task.sample(run)) is not None:
        bar.write(f"step {step}: samples in {grid}")
