"""Progressive distillation: the grid, the closed-form target, the truncated-SNR weight, and a tiny round through
the commands (train, export, generate on the progressive grid without CFG)."""
import json

import pytest
import torch

from condiff.cli import main
from condiff.diffusion.progressive import alpha_bar_at, ddim_to, distillation_target, grid_spacing, truncated_snr_weight
from condiff.diffusion.samplers import PerSampleNoise
from condiff.diffusion.sampling import SamplingOptions, sample
from condiff.diffusion.schedule import Spacing
from condiff.pipelines.base import load_pipeline
from test_samplers import SCHED, point_mass_eps  # the exact eps of a point mass, on the cosine schedule


def test_the_progressive_grids_nest_and_top_out_below_T():
    grids = {n: SCHED.timesteps(n, Spacing.PROGRESSIVE) for n in (1, 2, 4, 8, 16)}
    assert grids[1] == [960] and grids[2] == [960, 480] and grids[4] == [960, 720, 480, 240]
    for n in (1, 2, 4, 8):
        assert set(grids[n]) < set(grids[2 * n]) and len(grids[2 * n]) == 2 * n
    assert grid_spacing(SCHED, 8) == 120 and grid_spacing(SCHED, 2) == 480
    for bad in (1, 3, 7, 128):  # odd, or not splitting 960 evenly
        with pytest.raises(ValueError, match="divides 960"):
            grid_spacing(SCHED, bad)


def test_the_target_is_the_x0_whose_single_step_lands_where_two_teacher_steps_do():
    g = torch.Generator().manual_seed(0)
    z_t, x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                   dtype=torch.float64)
    t, s = torch.tensor([960, 480, 240]), torch.tensor([480, 0, 120])
    ab_t = alpha_bar_at(SCHED, t, z_t)
    eps = (z_t - ab_t.sqrt() * x) / (1 - ab_t).sqrt()  # the eps that makes x the x0_hat at (z_t, t)
    z_s = ddim_to(SCHED, z_t, t, s, eps)
    assert torch.allclose(distillation_target(SCHED, z_t, t, z_s, s), x, atol=1e-9)
    assert torch.allclose(z_s[1], x[1], atol=1e-12)  # level 0 is clean data
    w = truncated_snr_weight(SCHED, torch.tensor([960, 20]), z_t[:2]).flatten()
    ab = SCHED.alpha_bar[20].item()
    assert w[0].item() == 1.0 and w[1].item() == pytest.approx(ab / (1 - ab))


def test_two_teacher_steps_on_a_point_mass_give_the_point_as_target_and_ddim_on_the_grid_returns_it():
    c = torch.tensor([0.5, -0.25, 0.75], dtype=torch.float64).view(1, 3, 1, 1)
    eps_model = point_mass_eps(c)
    z = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, mid, s = torch.tensor([960, 480]), torch.tensor([720, 360]), torch.tensor([480, 240])
    z_mid = ddim_to(SCHED, z, t, mid, eps_model(z, t))
    z_s = ddim_to(SCHED, z_mid, mid, s, eps_model(z_mid, mid))
    assert torch.allclose(distillation_target(SCHED, z, t, z_s, s), c.expand_as(z), atol=1e-9)
    opts = SamplingOptions(sampler="ddim", schedule="progressive", steps=4, threshold="none")
    out = sample(eps_model, SCHED, z, PerSampleNoise([0, 1]), opts)
    assert torch.allclose(out, c.expand_as(out), atol=1e-9)


def test_a_round_trains_and_the_student_draws_on_the_grid_at_half_the_steps_without_cfg(tiny_model, tmp_path,
                                                                                        monkeypatch):
    from condiff.train.tasks import distill

    loads, load = [], distill.teacher_pipeline
    monkeypatch.setattr(distill, "teacher_pipeline", lambda c: loads.append(c.teacher) or load(c))
    cfg = {"model": "progressive_distillation", "teacher": str(tiny_model), "teacher_steps": 4, "guidance_scale": 2.0,
           "data": {"resolution": 16}, "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "lr": 1e-3},
           "log_every": 1, "checkpoint_every": 1}
    (tmp_path / "pd.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "pd.json"), "--out", str(tmp_path / "run")]) == 0
    assert loads == [str(tiny_model)]  # build's checked teacher is the one training reads: loaded once
    pipe, teacher = load_pipeline(tmp_path / "run" / "model"), load_pipeline(tiny_model)
    d = pipe.defaults
    assert (d.sampler.value, d.schedule.value, d.steps, d.guidance_scale) == ("ddim", "progressive", 2, 1.0)
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), teacher.unet.state_dict().values()))
    assert main(["generate", "a red circle", "--model", str(tmp_path / "run" / "model"), "--out",
                 str(tmp_path / "a.png")]) == 0
    (tmp_path / "bad.json").write_text(json.dumps(cfg | {"teacher_steps": 3}))
    assert main(["train", "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "bad")]) != 0
