"""Threads on a shared machine (issue 37): --threads / CONDIFF_THREADS / OMP_NUM_THREADS / the cores left free, and
the one-line hint when steps slow down far below the best."""
import pytest
import torch

from condiff import threads
from condiff.cli import main


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_the_choice_follows_flag_then_env_then_omp_then_free_cores(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1)
    assert threads.choose().threads == 1  # one core kept busy by another process: one thread, not two
    monkeypatch.setattr(threads, "busy_cores", lambda: 5)
    assert threads.choose().threads == 1  # never fewer than one
    monkeypatch.setattr(threads, "busy_cores", lambda: 0)
    assert threads.choose().threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose() == threads.ThreadChoice(None, "OMP_NUM_THREADS")  # torch reads it itself
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.choose().threads == 3
    assert threads.choose(4).threads == 4
    for bad in ("0", "-1", "two", "1.5", "99999"):
        with pytest.raises(ValueError, match="whole number of threads"):
            threads.choose(bad)
    monkeypatch.setenv(threads.ENV, "lots")
    with pytest.raises(ValueError, match=threads.ENV):
        threads.choose()


def test_generate_sets_the_threads_and_refuses_a_bad_count_in_one_line(tiny_model, tmp_path, capsys):
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "2", "--threads", "1",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert torch.get_num_threads() == 1
    capsys.readouterr()
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--threads", "0",
                 "--out", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--threads" in err and len(err.splitlines()) == 1 and not (tmp_path / "b.png").exists()


def test_the_slow_step_hint_comes_once_after_steps_slow_down_far_below_the_best():
    watch = threads.SlowWatch(factor=4, warmup=3, patience=3)
    said = [watch.check(s) for s in [9.0, 9.0, 9.0, 0.1, 0.12, 0.5, 0.5, 0.5, 0.5, 0.5]]
    assert said[:7] == [None] * 7  # warm-up ignored; two slow steps are not yet a pattern
    assert said[7] is not None and "--threads" in said[7] and said[8:] == [None, None]  # told once

