import pytest
import torch

from condiff.diffusion.denoiser import Denoiser
from condiff.diffusion.guidance import ClassifierFreeGuidance
from condiff.diffusion.samplers import PerSampleNoise, ddim_invert, sample_ddim, sample_ddpm
from condiff.diffusion.schedule import NoiseSchedule, cosine_betas, linear_betas
from condiff.nets.unet import UNet, UNetConfig

SCHED = NoiseSchedule(cosine_betas(1000))


def point_mass_eps(c: torch.Tensor):
    """The exact eps for data concentrated at x0 = c: eps*(x_t, t) = (x_t - sqrt(ab) c) / sqrt(1 - ab)."""
    def model(x, t):
        ab = SCHED.alpha_bar[t].view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (x - ab.sqrt() * c) / (1 - ab).sqrt()
    return model


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_recover_a_point_mass_exactly(sampler):
    c = torch.tensor([0.5, -0.25, 0.75], dtype=torch.float64).view(1, 3, 1, 1)
    noise = PerSampleNoise([0, 1])
    x_T = noise((2, 3, 2, 2), dtype=torch.float64)
    ts = SCHED.timesteps(20)
    if sampler == "ddim":
        out = sample_ddim(point_mass_eps(c), x_T, SCHED, ts, eta=0.0)
    else:
        out = sample_ddpm(point_mass_eps(c), x_T, SCHED, ts, noise)
    assert torch.allclose(out, c.expand_as(out), atol=1e-10)


def test_ddim_eta_one_equals_ddpm_posterior():
    """DDIM's sigma at eta=1 is the respaced posterior's beta_tilde, and its mean is the posterior mean."""
    torch.manual_seed(0)
    net = lambda x, t: torch.tanh(x) * 0.5 + 0.01 * t.view(-1, 1, 1, 1).to(x.dtype) / 1000
    x_T = PerSampleNoise([3])((1, 3, 4, 4), dtype=torch.float64)
    ts = SCHED.timesteps(15)
    a = sample_ddim(net, x_T, SCHED, ts, eta=1.0, noise=PerSampleNoise([9]))
    b = sample_ddpm(net, x_T, SCHED, ts, PerSampleNoise([9]))
    # the last DDIM step adds no noise either; but DDPM draws no noise at the last step, DDIM none when sigma = 0
    assert torch.allclose(a, b, atol=1e-10)


def test_ddim_deterministic_and_invertible_for_t_independent_model():
    """With eps depending on neither x nor t, each DDIM step is an exact affine map, so inversion is exact."""
    e = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = lambda x, t: e.expand_as(x)
    x_T = PerSampleNoise([5])((1, 3, 4, 4), dtype=torch.float64)
    ts = SCHED.timesteps(50)
    x0 = sample_ddim(model, x_T, SCHED, ts, x0_fn=None)
    assert torch.equal(x0, sample_ddim(model, x_T, SCHED, ts, x0_fn=None))
    assert torch.allclose(ddim_invert(model, x0, SCHED, ts), x_T, atol=1e-9)


def _tiny_denoiser():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(resolution=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(4,), head_channels=8, context_dim=0)).double()
    for p in unet.parameters():  # a non-trivial (randomly initialised, non-zero output) network
        torch.nn.init.normal_(p, std=0.05)
    return Denoiser(unet, NoiseSchedule(linear_betas(1000)))


def test_ddim_inversion_round_trip_on_tiny_unet_converges_with_steps():
    den = _tiny_denoiser()
    model = lambda x, t: den(x, t)
    x0 = PerSampleNoise([1])((1, 3, 8, 8), dtype=torch.float64).clamp(-1, 1) * 0.5
    errors = []
    for steps in (10, 50, 250):
        ts = den.schedule.timesteps(steps)
        x_T = ddim_invert(model, x0, den.schedule, ts)
        rec = sample_ddim(model, x_T, den.schedule, ts, x0_fn=None)
        errors.append((rec - x0).abs().max().item())
    # DDIM inversion is first order in the step size: 5x the steps gives about 5x smaller error
    assert errors[0] > 3 * errors[1] > 9 * errors[2], errors
    assert errors[2] < 2e-3, errors
    # and the same x_T always gives the same image
    ts = den.schedule.timesteps(10)
    x_T = PerSampleNoise([2])((1, 3, 8, 8), dtype=torch.float64)
    assert torch.equal(sample_ddim(model, x_T, den.schedule, ts), sample_ddim(model, x_T, den.schedule, ts))


def test_per_sample_noise_depends_on_own_seed_only():
    a = PerSampleNoise([7, 8, 9])((3, 2, 5))
    b = PerSampleNoise([8])((1, 2, 5))
    assert torch.equal(a[1], b[0])
    a2 = a.clone()
    assert not torch.equal(a2[0], a2[1])


def test_classifier_free_guidance_mixes_eps():
    calls = []

    def den(x, t, y):
        calls.append(len(x))
        return x * y.view(-1, 1)

    x, t = torch.ones(2, 3), torch.zeros(2, dtype=torch.long)
    cond, uncond = {"y": torch.tensor([2.0, 3.0])}, {"y": torch.tensor([1.0, 1.0])}
    out = ClassifierFreeGuidance(den, 4.0, cond, uncond)(x, t)
    assert calls == [4]  # one batched call for both branches
    expected = 1.0 + 4.0 * (torch.tensor([2.0, 3.0]) - 1.0)
    assert torch.allclose(out, expected.view(-1, 1).expand(2, 3))
    assert torch.allclose(ClassifierFreeGuidance(den, 1.0, cond, uncond)(x, t), den(x, t, **cond))
    assert torch.allclose(ClassifierFreeGuidance(den, 0.0, cond, uncond)(x, t), den(x, t, **uncond))


def test_fixed_point_inversion_makes_the_round_trip_exact_on_a_tiny_unet():
    """Each step solved for the x_t whose DDIM step back lands on x_{t'}: the round trip error falls geometrically
    with the iterations, to float64 precision, where the plain inversion is off by eps's one-step lag."""
    den = _tiny_denoiser()
    model = lambda x, t: den(x, t)
    x0 = PerSampleNoise([1])((1, 3, 8, 8), dtype=torch.float64).clamp(-1, 1) * 0.5
    ts = den.schedule.timesteps(10)
    errors = []
    for k in (0, 1, 3, 10):
        rec = sample_ddim(model, ddim_invert(model, x0, den.schedule, ts, k), den.schedule, ts, x0_fn=None)
        errors.append((rec - x0).abs().max().item())
    assert errors[0] > 10 * errors[1] > 100 * errors[2], errors
    assert errors[3] < 1e-10, errors


def test_edict_inversion_is_exact_and_its_chain_is_ddim_where_eps_does_not_depend_on_x():
    """EDICT's pair of chains undoes itself to float64 precision on a tiny UNet, with no iterations; on a model whose
    eps is a constant field both chains are the DDIM chain itself (the coupling has nothing to couple)."""
    from condiff.diffusion.samplers import edict_invert, edict_sample

    den = _tiny_denoiser()
    model = lambda x, t: den(x, t)
    x0 = PerSampleNoise([1])((1, 3, 8, 8), dtype=torch.float64).clamp(-1, 1) * 0.5
    ts = den.schedule.timesteps(10)
    x_T, y_T = edict_invert(model, x0, den.schedule, ts)
    x, y = edict_sample(model, x_T, y_T, den.schedule, ts)
    assert (x - x0).abs().max() < 1e-9 and (y - x0).abs().max() < 1e-9
    assert (x_T - y_T).abs().max() > 1e-5  # two different chains, not one run twice
    c = PerSampleNoise([2])((1, 3, 8, 8), dtype=torch.float64)
    const = lambda x, t: c.expand_as(x)
    x, y = edict_sample(const, x0, x0, den.schedule, ts)
    ddim = sample_ddim(const, x0, den.schedule, ts, x0_fn=None)
    assert (x - ddim).abs().max() < 1e-12 and (y - ddim).abs().max() < 1e-12
    with pytest.raises(ValueError, match="mixing weight"):
        edict_invert(model, x0, den.schedule, ts, p=1.0)
