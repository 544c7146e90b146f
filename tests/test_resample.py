"""The sampler's stop= hook and RePaint's resampling (Resample), against closed forms on Gaussian data."""
from __future__ import annotations

import pytest
import torch

from condiff.diffusion.samplers import PerSampleNoise
from condiff.diffusion.sampling import Resample, SamplingOptions, noise_to, plan_alpha_bars, sample
from condiff.diffusion.schedule import NoiseSchedule, cosine_betas

SCHEDULE = NoiseSchedule(cosine_betas(1000))
RHO, C = 0.95, 1.5  # data (a, b) ~ N(0, [[1, rho], [rho, 1]]); given a = C, b ~ N(rho C, 1 - rho^2)
SIGMA = torch.tensor([[1, RHO], [RHO, 1.0]], dtype=torch.float64)


def exact_eps(x, t, **_):
    """eps of the exact denoiser of the 2-D Gaussian: x0_hat = sqrt(ab) S (ab S + (1 - ab) I)^-1 x_t."""
    ab = SCHEDULE.alpha_bar_at(t).double().view(-1, 1, 1)
    xt = x.double().reshape(-1, 2, 1)
    x0 = ab.sqrt() * (SIGMA @ torch.linalg.solve(ab * SIGMA + (1 - ab) * torch.eye(2, dtype=torch.float64), xt))
    return ((xt - ab.sqrt() * x0) / (1 - ab).sqrt()).view_as(x).to(x.dtype)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0), ("euler", 0.0),
                                         ("euler_a", 0.0), ("heun", 0.0)])
def test_a_chain_stopped_and_resumed_is_the_whole_chain(sampler, eta):
    """sample(stop=k) then sample(start=k) is the same chain (multistep DPM++ restarts at a split, so it is not
    listed: its second-order memory is lost)."""
    opts = SamplingOptions(steps=12, sampler=sampler, eta=eta, threshold="none")
    z = PerSampleNoise([1, 2])((2, 2, 1, 1))
    whole = sample(exact_eps, SCHEDULE, z, PerSampleNoise([5, 6]), opts)
    noise = PerSampleNoise([5, 6])
    half = sample(exact_eps, SCHEDULE, z, noise, opts, stop=5)
    torch.testing.assert_close(sample(exact_eps, SCHEDULE, half, noise, opts, start=5), whole, rtol=1e-5, atol=1e-5)
    # a stopped chain returns x in VP space at step 5's level: what `replace` sees there in the whole chain
    seen = {}
    record = lambda x, level: seen.setdefault(level, x.clone())
    sample(exact_eps, SCHEDULE, z, PerSampleNoise([5, 6]), opts, replace=record)
    torch.testing.assert_close(half, seen[plan_alpha_bars(SCHEDULE, opts)[5]], rtol=1e-5, atol=1e-5)


def test_resample_runs_each_block_n_times_and_n_1_is_plain_sampling():
    calls = []
    counted = lambda x, t, **_: calls.append(1) or exact_eps(x, t)
    opts, z = SamplingOptions(steps=20, threshold="none"), PerSampleNoise([3])((1, 2, 1, 1))
    plain = sample(counted, SCHEDULE, z, PerSampleNoise([4]), opts)
    assert len(calls) == 20
    assert torch.equal(sample(exact_eps, SCHEDULE, z, PerSampleNoise([4]), opts, resample=Resample(5, 1)), plain)
    calls.clear()
    sample(counted, SCHEDULE, z, PerSampleNoise([4]), opts, resample=Resample(jump_length=6, jump_n_sample=3))
    assert len(calls) == 60  # blocks of 6, 6, 6, 2 steps, each denoised 3 times
    for bad in ({"jump_length": 0}, {"jump_n_sample": 0}, {"jump_n_sample": 2.5}, {"jump_n_sample": True}):
        with pytest.raises(ValueError, match="jump_"):
            Resample(**bad)


def _inpaint_b(n: int, jump: int, batch: int = 1500) -> torch.Tensor:
    """RePaint of b given a = C on the 2-D Gaussian with the exact denoiser (DDPM, 20 steps)."""
    known = torch.zeros(batch, 2, 1, 1)
    known[:, 0] = C
    m = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)  # 1 = repaint
    known_noise = PerSampleNoise([s + 10 ** 6 for s in range(batch)])
    replace = lambda x, level: m * x + (1 - m) * (known if level >= 1 else noise_to(known, known_noise(x.shape), level))
    noise = PerSampleNoise(range(batch))
    x = sample(exact_eps, SCHEDULE, noise((batch, 2, 1, 1)), noise, SamplingOptions(steps=20, sampler="ddpm", threshold="none"),
               replace=replace, resample=Resample(jump, n))
    assert torch.equal(x[:, 0], known[:, 0])
    return x[:, 1].flatten().double()


def test_resampling_brings_repaint_to_the_true_conditional():
    """Without jumps the repainted half ignores much of the known half (the known region's noise is independent of
    the generated one's); RePaint's jumps move it towards p(b | a): mean rho C, variance 1 - rho^2."""
    plain, jumped = _inpaint_b(1, 10), _inpaint_b(4, 4)
    err = lambda b: abs(b.mean().item() - RHO * C)
    assert err(plain) > 0.2  # measured 0.41
    assert err(jumped) < 0.5 * err(plain)  # measured 0.11
    assert abs(jumped.var().item() - (1 - RHO ** 2)) < abs(plain.var().item() - (1 - RHO ** 2))
