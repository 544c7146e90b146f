import numpy as np
import pytest
import torch

from condiff.diffusion.samplers import PerSampleNoise, sample_ddim
from condiff.diffusion.schedule import NoiseSchedule, cosine_betas
from condiff.diffusion.thresholding import Threshold, dynamic_threshold, static_threshold, x0_fn_for
from condiff.diffusion.sampling import SamplingOptions
from condiff.pipelines.text2image import Text2ImagePipeline


def test_static_threshold_clips_to_data_range():
    x = torch.tensor([-3.0, -1.0, 0.2, 1.5])
    assert torch.equal(static_threshold(x), torch.tensor([-1.0, -1.0, 0.2, 1.0]))


def test_dynamic_threshold_matches_imagen_formula():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([0.3, 2.0, 5.0]).view(3, 1, 1, 1)
    out = dynamic_threshold(0.9)(x0)
    for i in range(3):
        s = max(1.0, float(np.quantile(np.abs(x0[i].numpy()), 0.9)))
        expected = np.clip(x0[i].numpy(), -s, s) / s
        assert np.allclose(out[i].numpy(), expected)
    assert torch.equal(out[0], x0[0].clamp(-1, 1))  # s = 1 for an image already in range: static clipping
    assert out.abs().max() <= 1.0


def test_x0_fn_for_modes():
    assert x0_fn_for(Threshold.NONE) is None
    assert x0_fn_for("static") is static_threshold
    x = torch.full((1, 4), 4.0)
    assert torch.equal(x0_fn_for("dynamic", 0.5)(x), torch.ones(1, 4))


def test_threshold_keeps_out_of_range_targets_in_range():
    """With the exact eps of data at c = 3, unthresholded DDIM returns 3; thresholded, values within [-1, 1]."""
    sched = NoiseSchedule(cosine_betas(1000))
    c = 3.0

    def model(x, t):
        ab = sched.alpha_bar[t].view(-1, 1, 1, 1).to(x.dtype)
        return (x - ab.sqrt() * c) / (1 - ab).sqrt()

    x_T = PerSampleNoise([0])((1, 3, 4, 4), dtype=torch.float64)
    ts = sched.timesteps(20)
    assert torch.allclose(sample_ddim(model, x_T, sched, ts, x0_fn=None), torch.full_like(x_T, c))
    assert sample_ddim(model, x_T, sched, ts, x0_fn=static_threshold).abs().max() <= 1.0 + 1e-9
    assert sample_ddim(model, x_T, sched, ts, x0_fn=dynamic_threshold(0.995)).abs().max() <= 1.0 + 1e-9


@pytest.mark.parametrize("threshold", list(Threshold))
def test_pipeline_threshold_options(tiny_model, threshold):
    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    out = pipe(["a red circle"], [0], SamplingOptions(steps=3, threshold=threshold))
    assert torch.isfinite(out).all()
