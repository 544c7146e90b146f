"""Guidance wrappers against closed forms: Gaussian scores, the DDPM mean shift, and diffusers' CFG rescale."""
import math

import pytest
import torch

from condiff.diffusion.guidance import ClassifierFreeGuidance, GradientGuidance, rescale_guidance
from condiff.diffusion.samplers import PerSampleNoise, sample_ddpm
from condiff.diffusion.schedule import NoiseSchedule, cosine_betas
from condiff.world.distractors import distractor_captions
from condiff.world.grammar import Category, sample_prompt
from condiff.world.oracle import judge
from condiff.world.render import layout, render, to_uint8

SCHEDULE = NoiseSchedule(cosine_betas(1000))


def gaussian_eps(x, t):
    """Exact eps-model of data x_0 ~ N(0, I): x_t ~ N(0, I), so E[eps | x_t] = sqrt(1 - alpha_bar) x_t."""
    ab = SCHEDULE.alpha_bar_at(t).to(x).view(-1, 1, 1, 1)
    return (1 - ab).sqrt() * x


def test_score_form_gives_the_tilted_score():
    """With p(x_t) = N(0, I) and p(y | x_t) = N(x_t; m, tau^2 I), guided eps = -sqrt(1 - abar) grad log p(x_t) p(y | x_t)."""
    m, tau, s = 0.7, 0.5, 1.0
    log_prob = lambda x, t: -((x - m) ** 2).flatten(1).sum(1) / (2 * tau ** 2)
    guided = GradientGuidance(gaussian_eps, SCHEDULE, log_prob, s)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    for t in (torch.tensor([10, 500, 990]), torch.tensor([10.5, 321.25, 700.75], dtype=torch.float64)):
        ab = SCHEDULE.alpha_bar_at(t).view(-1, 1, 1, 1)
        tilted_score = -x + (m - x) / tau ** 2
        torch.testing.assert_close(guided(x, t), -(1 - ab).sqrt() * tilted_score)


def test_alpha_bar_at_is_exact_on_integers_and_monotone_between():
    t = torch.arange(0, 1000)
    torch.testing.assert_close(SCHEDULE.alpha_bar_at(t), SCHEDULE.alpha_bar)
    mid = SCHEDULE.alpha_bar_at(torch.tensor([100.5]))
    assert SCHEDULE.alpha_bar[101] < mid < SCHEDULE.alpha_bar[100]


def test_gradient_through_x0_hat_matches_the_chain_rule():
    """eps = a x: x0_hat = k x with k = (1 - sqrt(1 - abar) a) / sqrt(abar); grad of -|x0_hat - c|^2/2 is k (c - k x)."""
    a, c = 0.3, 0.25
    model = lambda x, t: a * x
    guided = GradientGuidance(model, SCHEDULE, lambda x0, t: -((x0 - c) ** 2).flatten(1).sum(1) / 2, 2.0, through_x0=True)
    x, t = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([200, 600])
    ab = SCHEDULE.alpha_bar[t].view(-1, 1, 1, 1)
    k = (1 - (1 - ab).sqrt() * a) / ab.sqrt()
    torch.testing.assert_close(guided.grad(x, t), 2.0 * k * (c - k * x))
    torch.testing.assert_close(guided(x, t), a * x - (1 - ab).sqrt() * 2.0 * k * (c - k * x))


def test_mean_form_shifts_the_ddpm_mean_by_sigma_times_the_gradient():
    """guided-diffusion's condition_mean: mu + Sigma g, Sigma = beta_tilde of the (respaced) step."""
    g = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
    model = lambda x, t: torch.zeros_like(x)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ts = [900, 600]
    plain = sample_ddpm(model, x, SCHEDULE, ts, PerSampleNoise([1, 2]), x0_fn=None)
    shifted = sample_ddpm(model, x, SCHEDULE, ts, PerSampleNoise([1, 2]), x0_fn=None, cond_fn=lambda x, t: g)
    # the first step's mean moves by beta_tilde g; the last step (Sigma = 0, no shift) returns x0_hat = x / sqrt(abar)
    ab_t, ab_s = SCHEDULE.alpha_bar[900].item(), SCHEDULE.alpha_bar[600].item()
    beta = 1 - ab_t / ab_s
    beta_tilde = beta * (1 - ab_s) / (1 - ab_t)
    torch.testing.assert_close(shifted - plain, beta_tilde * g / math.sqrt(ab_s))


def test_guidance_rescale_matches_diffusers():
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    torch.manual_seed(0)
    cond, uncond = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    guided = uncond + 5 * (cond - uncond)
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.7), rescale_noise_cfg(guided, cond, 0.7))


def test_cfg_with_rescale_keeps_the_conditional_std():
    torch.manual_seed(0)
    denoiser = lambda x, t, ctx: x * ctx.view(-1, 1, 1, 1)
    cfg = ClassifierFreeGuidance(denoiser, 7.0, {"ctx": torch.ones(2)}, {"ctx": torch.zeros(2)}, rescale=1.0)
    x = torch.randn(2, 3, 8, 8)
    out = cfg(x, torch.tensor([5, 5]))
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)))


@pytest.mark.parametrize("category", list(Category))
def test_distractors_are_captions_the_oracle_rejects(category):
    """Every distractor of a caption is a valid caption that a correct image of the caption fails."""
    import random

    rng = random.Random(category.value)
    for _ in range(15):
        spec = sample_prompt(rng, category)
        px = to_uint8(render([layout(spec, rng)], 64)).numpy()[0]
        assert judge(px, spec.caption).correct
        distractors = distractor_captions(spec.caption)
        assert distractors and spec.caption not in distractors
        for d in distractors:
            assert not judge(px, d).correct, (spec.caption, d)
