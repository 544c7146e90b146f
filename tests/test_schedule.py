import math

import pytest
import torch

from condiff.diffusion.denoiser import eps_from_v, eps_from_x0, v_target, x0_from_eps
from condiff.diffusion.schedule import BetaSchedule, NoiseSchedule, ScheduleConfig, Spacing, cosine_betas, linear_betas


def test_linear_betas_and_alpha_bar_closed_form():
    s = NoiseSchedule(linear_betas(1000))
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    t = 500
    beta_t = 1e-4 + (0.02 - 1e-4) * t / 999
    assert s.betas[t].item() == pytest.approx(beta_t)
    prod = 1.0
    for k in range(t + 1):
        prod *= 1 - (1e-4 + (0.02 - 1e-4) * k / 999)
    assert s.alpha_bar[t].item() == pytest.approx(prod, rel=1e-12)


def test_cosine_alpha_bar_matches_eq_17():
    T, s_ = 1000, 0.008
    sched = NoiseSchedule(cosine_betas(T))
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2
    for t in (0, 10, 250, 500, 900):
        assert sched.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert sched.betas.max().item() <= 0.999


def test_q_sample_closed_form_and_moments():
    sched = NoiseSchedule.from_config(ScheduleConfig(1000, BetaSchedule.COSINE))
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    t = torch.full((20000,), 300)
    eps = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = sched.q_sample(x0, t, eps)
    ab = sched.alpha_bar[300].item()
    assert torch.allclose(x_t, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps)
    assert x_t.mean().item() == pytest.approx(0.7 * math.sqrt(ab), abs=0.02)
    assert x_t.var().item() == pytest.approx(1 - ab, rel=0.05)


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x0) from Bayes' rule: N(sqrt(ab') x0, 1 - ab') times N(x_t; sqrt(a_t) x_{t-1}, beta_t)."""
    sched = NoiseSchedule(linear_betas(1000))
    x0, x_t = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-1.1]], dtype=torch.float64)
    for t in (1, 17, 500, 999):
        ab_prev, a, beta = sched.alpha_bar[t - 1].item(), sched.alphas[t].item(), sched.betas[t].item()
        precision = 1 / (1 - ab_prev) + a / beta
        mean = (math.sqrt(ab_prev) * 0.3 / (1 - ab_prev) + math.sqrt(a) * -1.1 / beta) / precision
        m, v = sched.posterior_mean_variance(x0, x_t, torch.tensor([t]))
        assert m.item() == pytest.approx(mean, rel=1e-9)
        assert v.item() == pytest.approx(1 / precision, rel=1e-9)


def test_parameterisations_are_consistent():
    sched = NoiseSchedule(cosine_betas(1000))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 100, 500, 900])
    x_t = sched.q_sample(x0, t, eps)
    assert torch.allclose(x0_from_eps(sched, x_t, t, eps), x0)
    assert torch.allclose(eps_from_x0(sched, x_t, t, x0), eps)
    assert torch.allclose(eps_from_v(sched, x_t, t, v_target(sched, x0, t, eps)), eps)


def test_respacing():
    sched = NoiseSchedule(linear_betas(1000))
    uniform = sched.timesteps(50, Spacing.UNIFORM)
    assert len(uniform) == 50 and uniform[0] == 999 and uniform[-1] == 0
    assert uniform == sorted(uniform, reverse=True)
    # diffusers DDIMScheduler(timestep_spacing=...).set_timesteps(10) gives these:
    assert sched.timesteps(10, Spacing.LEADING) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert sched.timesteps(10, Spacing.TRAILING) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert sched.timesteps(1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        sched.timesteps(0)
