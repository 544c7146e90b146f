"""Step-by-step cross-checks of condiff's samplers against diffusers' schedulers (a test-only peer), in float64.

Both sides get the same epsilon-model callable, initial sample, noise and timesteps. diffusers keeps its
schedule tensors in float32; we hand it our float64 alpha_bar (and, where it casts them, our float64 sigmas:
the sigma values themselves are compared separately at float32 precision).
"""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from condiff.diffusion.samplers import PerSampleNoise, Variance, sample_ddim, sample_ddpm  # noqa: E402
from condiff.diffusion.schedule import NoiseSchedule, Spacing  # noqa: E402
from condiff.diffusion.sigma_samplers import (SigmaDenoiser, exponential_sigmas, karras_sigmas,  # noqa: E402
                                              sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_euler, sample_euler_ancestral, sample_heun,
                                              sigmas_at)

SHAPE = (1, 3, 4, 4)
STEPS = 10
SPACING = {"leading": Spacing.LEADING, "trailing": Spacing.TRAILING, "linspace": Spacing.UNIFORM}


def eps_model(x, t):
    """A smooth, x- and t-dependent stand-in for a network."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.7 * torch.tanh(x) + 0.1 * torch.sin(t / 100.0) + 0.05 * x * torch.cos(t / 300.0)


def make(cls, **kw):
    sch = cls(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", **kw)
    ours = NoiseSchedule(sch.betas.double())
    sch.alphas_cumprod = ours.alpha_bar.clone()
    return sch, ours


def x_init(scale=1.0):
    return PerSampleNoise([0])(SHAPE, dtype=torch.float64) * scale


def run_diffusers(sch, x, generator=None, **step_kw):
    xs = []
    for t in sch.timesteps:
        eps = eps_model(sch.scale_model_input(x, t), t)
        x = sch.step(eps, t, x, generator=generator, **step_kw).prev_sample if generator is not None else \
            sch.step(eps, t, x, **step_kw).prev_sample
        xs.append(x)
    return xs


def trajectory(sampler, *args, **kw):
    xs = []
    sampler(*args, callback=lambda d: xs.append(d["x"]), **kw)
    return xs


def assert_close(ours, theirs, tol=1e-5):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        err = (a - b).abs().max().item()
        assert err < tol * max(1.0, b.abs().max().item()), f"step {i}: max error {err}"


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers(spacing):
    sch, ours = make(diffusers.DDIMScheduler, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    sch.set_timesteps(STEPS)
    ts = ours.timesteps(STEPS, SPACING[spacing])
    assert ts == sch.timesteps.tolist()
    x = x_init()
    theirs = run_diffusers(sch, x, eta=0.0)
    assert_close(trajectory(sample_ddim, eps_model, x, ours, ts, x0_fn=None), theirs)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_matches_diffusers(variance):
    sch, ours = make(diffusers.DDPMScheduler, clip_sample=False, variance_type=f"fixed_{variance}")
    sch.set_timesteps(STEPS)
    ts = ours.timesteps(STEPS, Spacing.LEADING)
    assert ts == sch.timesteps.tolist()
    x = x_init()
    theirs = run_diffusers(sch, x, generator=torch.Generator().manual_seed(5))
    # diffusers draws its variance noise for every step but the last from one generator, as PerSampleNoise does
    assert_close(trajectory(sample_ddpm, eps_model, x, ours, ts, PerSampleNoise([5]), x0_fn=None,
                            variance=Variance(variance)), theirs)


PLACEMENTS = {"karras": karras_sigmas, "exponential": exponential_sigmas}


def spaced_or_placed(sch, ours, placement):
    """Sigmas at diffusers' timesteps; with a placement (karras, exponential), placed between the smallest and
    largest of those, as diffusers' use_karras_sigmas / use_exponential_sigmas do."""
    spaced = sigmas_at(ours, list(dict.fromkeys(sch.timesteps.tolist())))  # Heun lists each timestep twice
    return PLACEMENTS[placement](spaced[-2].item(), spaced[0].item(), STEPS) if placement else spaced


def placement_kw(placement):
    return {f"use_{placement}_sigmas": True} if placement else {}


def _sigma_sampler_case(cls, spacing, placement=None, **kw):
    sch, ours = make(cls, timestep_spacing=spacing, **placement_kw(placement), **kw)
    sch.set_timesteps(STEPS)
    sigmas = spaced_or_placed(sch, ours, placement)
    assert torch.allclose(sch.sigmas.double().unique(), sigmas.unique(), rtol=1e-6)  # float32 on their side
    return sch, ours, sigmas


@pytest.mark.parametrize("spacing,placement", [("linspace", None), ("leading", None), ("trailing", None),
                                               ("leading", "karras"), ("leading", "exponential")])
def test_euler_matches_diffusers(spacing, placement):
    sch, ours, sigmas = _sigma_sampler_case(diffusers.EulerDiscreteScheduler, spacing, placement)
    sch.sigmas = sigmas.clone()  # diffusers casts its sigmas to float32; use the float64 values
    x = x_init(sch.init_noise_sigma)
    theirs = run_diffusers(sch, x)
    assert_close(trajectory(sample_euler, SigmaDenoiser(eps_model, ours), x, sigmas), theirs)


def test_euler_ancestral_matches_diffusers():
    sch, ours, sigmas = _sigma_sampler_case(diffusers.EulerAncestralDiscreteScheduler, "linspace")
    sch.sigmas = sigmas.clone()
    x = x_init(sch.init_noise_sigma)
    theirs = run_diffusers(sch, x, generator=torch.Generator().manual_seed(3))
    assert_close(trajectory(sample_euler_ancestral, SigmaDenoiser(eps_model, ours), x, sigmas, PerSampleNoise([3])),
                 theirs)


def test_heun_matches_diffusers():
    sch, ours, sigmas = _sigma_sampler_case(diffusers.HeunDiscreteScheduler, "linspace")
    x = x_init(sch.init_noise_sigma)
    theirs = []
    for t in sch.timesteps:
        eps = eps_model(sch.scale_model_input(x, t), t)
        x = sch.step(eps, t, x).prev_sample
        if sch.state_in_first_order:  # a full Heun step has completed
            theirs.append(x)
    theirs.append(x)  # the last step, to sigma = 0, is a single Euler step
    ours_xs = trajectory(sample_heun, SigmaDenoiser(eps_model, ours), x_init(sch.init_noise_sigma), sigmas)
    assert_close(ours_xs, theirs, tol=1e-4)  # diffusers' Heun keeps sigmas in float32


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
@pytest.mark.parametrize("placement", [None, "karras", "exponential"])
def test_dpmpp_2m_matches_diffusers(algorithm, placement):
    sch, ours = make(diffusers.DPMSolverMultistepScheduler, algorithm_type=algorithm, solver_order=2,
                     final_sigmas_type="zero", timestep_spacing="linspace", **placement_kw(placement))
    sch.set_timesteps(STEPS)
    sigmas = spaced_or_placed(sch, ours, placement)
    assert torch.allclose(sch.sigmas.double(), sigmas, rtol=1e-6)
    sch.sigmas = sigmas.clone()
    x_vp = x_init()
    alpha = lambda s: 1 / math.sqrt(s ** 2 + 1)  # VP sample = alpha(sigma) * (x0 + sigma eps)
    noise = PerSampleNoise([11])
    theirs, x = [], x_vp
    gen = torch.Generator().manual_seed(11)
    for t in sch.timesteps:
        eps = eps_model(x, t)
        z = torch.randn(SHAPE, generator=gen, dtype=torch.float64) if algorithm.startswith("sde") else None
        x = sch.step(eps, t, x, variance_noise=z).prev_sample
        theirs.append(x)
    sampler = sample_dpmpp_2m_sde if algorithm.startswith("sde") else sample_dpmpp_2m
    # Deliberate difference: with placed (Karras, exponential) sigmas, diffusers' DPM-Solver shows the model an integer timestep of its own
    # mapping; condiff (like k-diffusion, and like diffusers' Euler) passes the fractional log-sigma interpolation.
    # To compare the solver itself, our model is shown diffusers' timestep for each sigma.
    denoiser = SigmaDenoiser(eps_model, ours)
    if placement:
        theirs_t = {denoiser.t_of(s.item()): t for s, t in zip(sigmas, sch.timesteps)}
        denoiser = SigmaDenoiser(lambda x, t: eps_model(x, theirs_t[t[0].item()]), ours)
    ours_ve = trajectory(sampler, denoiser, x_vp / alpha(sigmas[0].item()), sigmas, noise)
    ours_vp = [x * alpha(s.item()) for x, s in zip(ours_ve, sigmas[1:])]
    assert_close(ours_vp, theirs)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_diffusers_training_recipe(prediction):
    """diffusers' train_text_to_image.py: w = min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), SNR = compute_snr."""
    from diffusers.training_utils import compute_snr

    from condiff.diffusion.loss import min_snr_weight
    sch, ours = make(diffusers.DDPMScheduler)
    t = torch.tensor([0, 1, 10, 100, 300, 500, 700, 900, 999])
    snr = compute_snr(sch, t).double()
    peer = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    peer = peer / snr if prediction == "epsilon" else peer / (snr + 1)
    mine = min_snr_weight(ours, t, "epsilon" if prediction == "epsilon" else "v", 5.0).double()
    torch.testing.assert_close(mine, peer, rtol=1e-5, atol=1e-7)
