"""Records the shipped base32 model's sampler outputs before the Structure redesign (run once; the fixture is committed).

OMP_NUM_THREADS=1 python tests/golden/make_golden.py  ->  tests/golden/samplers.safetensors

One thread: the stochastic samplers amplify the last-bit differences of multi-threaded reductions (DDPM by 4e-3 at
6 steps), so the fixture and the test both run on one thread. Recorded at commit bc532d7, before the redesign.
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

from condiff.diffusion.samplers import PerSampleNoise, ddim_invert
from condiff.diffusion.sampling import Sampler, SamplingOptions, SigmaSchedule
from condiff.diffusion.thresholding import Threshold
from condiff.pipelines.guidance import GuidanceMethod, GuidanceOptions, make_guide
from condiff.pipelines.text2image import BASE32, Text2ImagePipeline

PROMPTS, SEEDS = ["a red circle to the left of a blue square", "three green triangles"], [0, 7]
CASES = {f"{s.value}": dict(sampler=s, steps=6) for s in Sampler}
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


def main() -> None:
    torch.manual_seed(0)
    pipe = Text2ImagePipeline.from_pretrained(BASE32)
    out = {}
    for name, kw in CASES.items():
        out[name] = pipe(PROMPTS, SEEDS, SamplingOptions(**kw))
    for name, (kw, g) in GUIDED.items():
        out[name] = pipe(PROMPTS, SEEDS, SamplingOptions(**kw), guide=make_guide(g))
    opts = SamplingOptions(steps=6, guidance_scale=1.0)
    model = pipe.guided_model(PROMPTS, opts)
    x0 = out["ddim"].clamp(-1, 1)
    with torch.no_grad():
        out["ddim_invert"] = ddim_invert(model, x0, pipe.schedule, pipe.schedule.timesteps(6))
    save_file({k: v.float().contiguous() for k, v in out.items()}, str(Path(__file__).with_name("samplers.safetensors")))
    print(sorted(out))


if __name__ == "__main__":
    main()
