import json

import pytest
import torch

from condiff.cli import main
from condiff.diffusion.loss import (discretized_gaussian_log_likelihood, hybrid_loss, normal_kl, vlb_terms)
from condiff.diffusion.samplers import PerSampleNoise, Variance, sample_ddpm
from condiff.diffusion.schedule import NoiseSchedule, cosine_betas
from condiff.pipelines.text2image import Text2ImagePipeline

SCHED = NoiseSchedule(cosine_betas(1000))


def test_normal_kl_matches_torch_distributions():
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5)
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(torch.distributions.kl_divergence(p, q).item())


def test_discretized_likelihood_is_a_distribution_over_256_bins():
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, -2.0), (-0.9, -4.0), (0.0, 1.0)):
        p = discretized_gaussian_log_likelihood(bins, torch.tensor(mean, dtype=torch.float64),
                                                torch.tensor(log_scale, dtype=torch.float64)).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_vlb_is_zero_for_the_exact_posterior():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    x_t = SCHED.q_sample(x0, t, eps)
    v = torch.zeros_like(x0)  # log Sigma = log beta_tilde (clipped), the true posterior's
    assert torch.allclose(vlb_terms(SCHED, x0, x_t, t, eps, v), torch.zeros(4, dtype=torch.float64), atol=1e-9)
    assert (vlb_terms(SCHED, x0, x_t, t, eps, torch.ones_like(x0)) > 0).all()  # beta != beta_tilde costs bits


def test_hybrid_loss_gives_the_mean_no_gradient_from_the_vlb():
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([5, 700])
    out = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(3), requires_grad=True)
    hybrid_loss(lambda x, t: out, SCHED, "epsilon", x0, t, eps).backward()
    grad_mean = out.grad[:, :3].clone()
    expected = 2 * (out[:, :3] - eps) / eps.numel()  # gradient of the MSE alone
    assert torch.allclose(grad_mean, expected.detach(), atol=1e-6)
    assert out.grad[:, 3:].abs().sum() > 0  # the variance learns from L_vlb


@pytest.mark.parametrize("v,fixed", [(0.0, Variance.SMALL), (1.0, Variance.LARGE)])
def test_learned_variance_interpolates_small_and_large(v, fixed):
    def model(x, t, return_variance=False):
        eps = 0.5 * torch.tanh(x)
        return (eps, torch.full_like(x, v)) if return_variance else eps

    x_T = PerSampleNoise([0])((1, 3, 4, 4), dtype=torch.float64)
    ts = SCHED.timesteps(10)
    a = sample_ddpm(model, x_T, SCHED, ts, PerSampleNoise([4]), variance=Variance.LEARNED)
    b = sample_ddpm(model, x_T, SCHED, ts, PerSampleNoise([4]), variance=fixed)
    assert torch.allclose(a, b, atol=1e-10)


def test_train_and_sample_a_learned_variance_model(tiny_config_path, tmp_path, tiny_model, capsys):
    cfg = json.loads(tiny_config_path.read_text())
    cfg["pipeline"]["learn_sigma"] = True
    path = tmp_path / "learned.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--workers", "0"]) == 0
    pipe = Text2ImagePipeline.from_pretrained(tmp_path / "run" / "model")
    assert pipe.unet.cfg.out_channels == 6 and pipe.cfg.learn_sigma
    out = tmp_path / "l.png"
    for sampler in (["--sampler", "ddpm", "--ddpm-variance", "learned"], ["--sampler", "dpmpp_2m"]):
        assert main(["generate", "a red circle", "--model", str(tmp_path / "run" / "model"), "--steps", "3",
                     "--out", str(out), *sampler]) == 0
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "steps.py"  # improved DDPM's comparison, one row per variance
    r = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "run" / "model"), "--samplers", "ddpm",
                        "--nfe", "2", "3", "--ddpm-variances", "small", "learned", "--reference", "ddpm:3",
                        "--prompts-per-category", "1", "--n-per-prompt", "1", "--features", "pixels",
                        "--device", "cpu", "--out-dir", str(tmp_path / "steps")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "steps" / "steps.json").read_text())["rows"]
    assert [(x["nfe"], x["ddpm_variance"]) for x in rows] == [(3, "small"), (2, "small"), (2, "learned"), (3, "learned")]
    assert rows[0]["reference"] and all("gap" in x for x in rows[1:])
    capsys.readouterr()
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--steps", "3", "--sampler", "ddpm",
                 "--ddpm-variance", "learned", "--out", str(out)]) == 2
    assert "learned variance needs a model trained with learn_sigma" in capsys.readouterr().err


def test_weighted_loss_is_the_per_sample_weighted_mean():
    """Min-SNR-gamma: uniform weights reproduce L_simple; per-sample weights scale each sample's mean squared error."""
    from condiff.diffusion.loss import diffusion_loss, min_snr_weight
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    out = torch.randn(4, 3, 4, 4, generator=g)
    t = torch.tensor([0, 100, 600, 999])
    net = lambda x, t: out
    plain = diffusion_loss(net, SCHED, "epsilon", x0, t, eps)
    assert diffusion_loss(net, SCHED, "epsilon", x0, t, eps, weight=torch.ones(4)).item() == pytest.approx(plain.item())
    w = min_snr_weight(SCHED, t, "epsilon", 5.0)
    per_sample = (out - eps).pow(2).flatten(1).mean(1)
    expected = (w * per_sample).mean()
    assert diffusion_loss(net, SCHED, "epsilon", x0, t, eps, weight=w).item() == pytest.approx(expected.item(), rel=1e-6)
    ab = SCHED.alpha_bar[t]
    snr = ab / (1 - ab)
    assert torch.allclose(w.double(), torch.where(snr > 5, 5 / snr, torch.ones_like(snr)), rtol=1e-6)
    assert w[0] < 1e-3 and w[-1] == 1  # t = 0 (SNR ~ 1e5) nearly ignored; noisy steps keep weight 1


def test_learned_variance_fine_tune_from_a_fixed_variance_model_keeps_its_eps(tiny_config_path, tiny_model, tmp_path):
    """init.from_model of a fixed-variance model into a learn_sigma run: eps's output channels are the base's
    exactly at step 0 and v's start at zero (v = 1/2, halfway between beta_tilde and beta)."""
    from condiff.train.tasks.text2image import Text2ImageTask
    from condiff.train.tasks import load_train_config
    from condiff.data import make_dataset

    cfg = json.loads(tiny_config_path.read_text())
    cfg["pipeline"]["learn_sigma"] = True
    cfg["init"] = {"from_model": str(tiny_model)}
    path = tmp_path / "lv.json"
    path.write_text(json.dumps(cfg))
    run_cfg = load_train_config(path)
    model = Text2ImageTask().build(run_cfg, make_dataset(run_cfg.data), resume=False)
    base = Text2ImagePipeline.from_pretrained(tiny_model)
    unet = model.unet.eval()
    x, t = torch.randn(2, base.unet.cfg.in_channels, 8, 8), torch.tensor([10, 700])
    ctx = torch.randn(2, 4, base.unet.cfg.context_dim)
    with torch.no_grad():
        out, ref = unet(x, t, context=ctx), base.unet(x, t, context=ctx)
    C = base.unet.cfg.out_channels
    assert out.shape[1] == 2 * C
    torch.testing.assert_close(out[:, :C], ref)
    assert torch.equal(out[:, C:], torch.zeros_like(out[:, C:]))
