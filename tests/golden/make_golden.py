"""Records the shipped base32 model's sampler outputs on the code before the Structure redesign (run once; the
fixture is committed). In float64, where the outputs no longer depend on the CPU's float kernels:

git worktree add /tmp/pre-redesign bc532d7
PYTHONPATH=/tmp/pre-redesign python tests/golden/make_golden.py  ->  tests/golden/samplers.safetensors

Why float64: the first fixture (float32) agreed to 1e-5 on the CPU that recorded it, but a 6-step DDPM chain started
at t = 999 amplifies rounding by 1/sqrt(alpha_bar) = 2e4, and on an AMD EPYC (AVX-512, where oneDNN's float32
convolutions round differently) it differed by 0.022 at a few pixels. float64 convolutions and matmuls round ~1e-16,
so the same amplification leaves ~1e-11 and any CPU reproduces the fixture to 1e-8.

Two places of the pre-redesign code fixed float32, and this script widens both as the current code does: PerSampleNoise
defaulted to float32 (it now defaults to torch's default dtype, so noise is drawn in float64 here), and the noisy
encoder did not cast its timestep embedding to the model's dtype. Neither changes anything in float32. The same
script runs on the current code, where it reproduces the fixture.
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

from condiff.diffusion import samplers
from condiff.diffusion.samplers import ddim_invert
from condiff.diffusion.sampling import Sampler, SamplingOptions, SigmaSchedule
from condiff.diffusion.thresholding import Threshold
from condiff.nets import encoder
from condiff.pipelines import text2image
from condiff.pipelines.guidance import GuidanceMethod, GuidanceOptions, make_guide

PROMPTS, SEEDS = ["a red circle to the left of a blue square", "three green triangles"], [0, 7]
CASES = {f"{s.value}": dict(sampler=s, steps=6) for s in Sampler if s is not Sampler.LCM}  # lcm: after the redesign
CASES |= {
    "ddim_eta": dict(sampler=Sampler.DDIM, steps=6, eta=0.5),
    "ddim_trailing_dynamic": dict(sampler=Sampler.DDIM, steps=6, schedule=SigmaSchedule.TRAILING,
                                  threshold=Threshold.DYNAMIC),
    "dpmpp_2m_karras": dict(sampler=Sampler.DPMPP_2M, steps=6, schedule=SigmaSchedule.KARRAS),
    "euler_a_exponential": dict(sampler=Sampler.EULER_A, steps=6, schedule=SigmaSchedule.EXPONENTIAL),
    "heun_karras_rescale": dict(sampler=Sampler.HEUN, steps=6, schedule=SigmaSchedule.KARRAS, guidance_rescale=0.7),
    "ddpm_large_negative": dict(sampler=Sampler.DDPM, steps=6, ddpm_variance="large", negative_prompt="a red circle"),
    "ddim_no_threshold_cfg1": dict(sampler=Sampler.DDIM, steps=6, threshold=Threshold.NONE, guidance_scale=1.0),
}
GUIDED = {"ddim_classifier": (dict(sampler=Sampler.DDIM, steps=4), GuidanceOptions(GuidanceMethod.CLASSIFIER, 2.0)),
          "ddpm_clip_mean": (dict(sampler=Sampler.DDPM, steps=4), GuidanceOptions(GuidanceMethod.CLIP, 2.0, "mean"))}


def _float64_on_the_old_code() -> None:
    """The two places where the pre-redesign code fixed float32 (both since follow the dtype they are given)."""
    draw = samplers.PerSampleNoise.__call__
    samplers.PerSampleNoise.__call__ = lambda self, shape, device=None, dtype=None: \
        draw(self, shape, device, dtype or torch.get_default_dtype())
    embed = encoder.timestep_embedding  # the classifier's and noisy CLIP's encoder did not cast it to x's dtype
    encoder.timestep_embedding = lambda *a, **kw: embed(*a, **kw).to(torch.get_default_dtype())


def record(pipe) -> dict[str, torch.Tensor]:
    """Every case's output from pipe, run on one thread in float64 (pipe loaded in float64)."""
    torch.manual_seed(0)
    out = {}
    for name, kw in CASES.items():
        out[name] = pipe(PROMPTS, SEEDS, SamplingOptions(**kw))
    for name, (kw, g) in GUIDED.items():
        out[name] = pipe(PROMPTS, SEEDS, SamplingOptions(**kw), guide=make_guide(g))
    model = pipe.guided_model(PROMPTS, SamplingOptions(steps=6, guidance_scale=1.0))
    with torch.no_grad():
        out["ddim_invert"] = ddim_invert(model, out["ddim"].clamp(-1, 1), pipe.schedule, pipe.schedule.timesteps(6))
    return out


def main() -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    _float64_on_the_old_code()
    folder = getattr(text2image, "BASE32", None) or text2image.DEFAULT_MODEL  # the shipped base32, before and after
    out = record(text2image.Text2ImagePipeline.from_pretrained(folder))
    assert all(v.dtype == torch.float64 for v in out.values())
    save_file({k: v.contiguous() for k, v in out.items()}, str(Path(__file__).with_name("samplers.safetensors")))
    print(sorted(out))


if __name__ == "__main__":
    main()
