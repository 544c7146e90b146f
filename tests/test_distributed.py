"""Multi-process training (torch.distributed under torchrun, gloo on CPU): the same config trains the same weights
on 1 and 2 processes, and a run resumes exactly on another process count."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from condiff.cli import main


def _config(tmp_path, steps: int, micro_batches: int = 2, **extra) -> str:
    cfg = json.loads(json.dumps(TINY))
    cfg["optim"] |= {"steps": steps, "batch_size": 4, "micro_batches": micro_batches}
    cfg |= {"checkpoint_every": 2} | extra
    path = tmp_path / f"c{steps}_{micro_batches}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_port()}", "-m", "condiff.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _weights(run) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text()
    return {k: v for k, v in load_file(str(run / "checkpoints" / latest / "state.safetensors")).items()
            if k.startswith(("model.", "ema.")) or k.startswith("optim.")}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_two_processes_train_the_weights_of_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--config", _config(tmp_path, 3), "--out", str(one), "--workers", "0"]) == 0
    done = _torchrun(["train", "--config", _config(tmp_path, 3), "--out", str(two), "--workers", "0"])
    assert done.returncode == 0, done.stderr[-8000:]  # the ranks' own output comes before torchrun's report
    _same(_weights(one), _weights(two))
    assert (two / "model" / "pipeline.json").exists() and len(list((two / "checkpoints").glob("step_*"))) >= 1
    # and the shards are the math: one shard of 4 is another run (its own randomness), so the weights differ
    single = tmp_path / "single"
    assert main(["train", "--config", _config(tmp_path, 3, micro_batches=1), "--out", str(single), "--workers", "0"]) == 0
    a, b = _weights(one), _weights(single)
    assert any(not torch.allclose(a[k], b[k]) for k in a if k.startswith("model."))


def test_a_run_resumes_exactly_on_another_process_count(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", "--config", _config(tmp_path, 4), "--out", str(whole), "--workers", "0"]) == 0
    done = _torchrun(["train", "--config", _config(tmp_path, 2), "--out", str(split), "--workers", "0"])
    assert done.returncode == 0, done.stderr[-8000:]  # the ranks' own output comes before torchrun's report
    assert main(["train", "--config", _config(tmp_path, 4), "--out", str(split), "--workers", "0", "--resume"]) == 0
    _same(_weights(whole), _weights(split))


@pytest.mark.parametrize("optim, message", [({"batch_size": 4, "micro_batches": 3}, "must divide the batch size"),
                                           ({"batch_size": 4, "micro_batches": 0}, "must divide")])
def test_bad_shards_are_one_line(tmp_path, capsys, optim, message):
    cfg = json.loads(json.dumps(TINY))
    cfg["optim"] |= optim
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_kill_9_of_one_rank_ends_the_run_and_leaves_a_checkpoint_that_resumes(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_port()}", "-m", "condiff.cli", "train", "--config", _config(tmp_path, 400), "--out", str(run),
           "--workers", "0"]
    agent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "latest").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (run / "checkpoints" / "latest").exists()
        ranks = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2
        os.kill(int(ranks[-1]), signal.SIGKILL)
        t = time.time()
        agent.wait(timeout=90)
        assert agent.returncode != 0 and time.time() - t < 90
    finally:
        if agent.poll() is None:
            agent.kill()
    step = int((run / "checkpoints" / "latest").read_text().split("_")[1])
    assert step >= 2 and step % 2 == 0  # an atomic checkpoint (checkpoint_every 2), readable:
    cfg = _config(tmp_path, step + 2)
    assert main(["train", "--config", cfg, "--out", str(run), "--workers", "0", "--resume"]) == 0


def test_sigterm_to_a_torchrun_group_saves_once(tmp_path):
    """`timeout` signals the whole group: torchrun's agent and both workers, and then the agent forwards SIGTERM to the
    workers. That forwarded echo must not count as a second signal, which exits without saving: rank 0 saves once,
    and the run resumes to the end. (torchrun itself then reports the signal as its SignalException, exit 1.)"""
    import signal
    import time

    cfg = json.loads(json.dumps(TINY))
    cfg["optim"] |= {"steps": 400, "batch_size": 128}  # a step long enough (about a second) for the echo to land in
    cfg["data"] |= {"resolution": 32}
    cfg["checkpoint_every"] = 2
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_port()}", "-m", "condiff.cli", "train", "--config", str(tmp_path / "c.json"),
           "--workers", "0", "--out", str(tmp_path / "r")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    while not (tmp_path / "r" / "checkpoints" / "latest").exists() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert out.count("interrupted: saved step") == 1 and "condiff: interrupted (SIGTERM)" in out, out[-2000:]
    assert "interrupted again" not in out
    step = int(out.split("interrupted: saved step ")[1].split()[0])
    assert (tmp_path / "r" / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"


class _Bar:
    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)


@pytest.mark.parametrize("env, step_s, expect", [
    ({}, 76.0, None),  # not under torchrun: no launcher kills it
    ({"TORCHELASTIC_RUN_ID": "x"}, 10.0, None),  # a 10 s step saves well within the 30 s grace
    ({"TORCHELASTIC_RUN_ID": "x"}, 76.0, "torchrun --shutdown-timeout 230"),  # 3 steps' time, in tens of seconds
    ({"TORCHELASTIC_RUN_ID": "x", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}, 76.0, None),
])
def test_a_step_longer_than_torchruns_grace_is_warned_of(monkeypatch, env, step_s, expect):
    from condiff.train.trainer import grace_warning

    for k in ("TORCHELASTIC_RUN_ID", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bar = _Bar()
    grace_warning(step_s, bar)
    assert (bar.lines == []) if expect is None else (len(bar.lines) == 1 and expect in bar.lines[0])
