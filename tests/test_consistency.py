"""Latent consistency distillation and the lcm sampler: closed forms, and a tiny distillation through the commands."""
import json

import numpy as np
import pytest
import torch

from condiff.cli import main
from condiff.diffusion.consistency import (consistency_grid, ddim_solver_step, lcm_timesteps, pseudo_huber,
                                           sample_lcm)
from condiff.diffusion.guidance import ClassifierFreeGuidance
from condiff.diffusion.samplers import PerSampleNoise
from condiff.diffusion.sampling import SamplingOptions, sample
from condiff.pipelines.base import load_pipeline
from test_samplers import SCHED, point_mass_eps  # the exact eps of a point mass, on the cosine schedule

def test_the_grid_is_the_teachers_ddim_50_and_few_steps_start_at_its_top():
    grid = consistency_grid(SCHED)
    assert grid == list(range(0, 1000, 20))
    assert lcm_timesteps(SCHED, 1) == [980]
    assert lcm_timesteps(SCHED, 2) == [980, 480]
    assert lcm_timesteps(SCHED, 4) == [980, 740, 500, 260]  # diffusers' LCMScheduler: the reversed grid every 50 // 4
    assert lcm_timesteps(SCHED, 50) == grid[::-1]
    with pytest.raises(ValueError, match="1 to 50 steps"):
        SamplingOptions(sampler="lcm", steps=51)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_the_lcm_sampler_returns_a_point_mass_in_any_number_of_steps(steps):
    c = torch.tensor([0.5, -0.25, 0.75], dtype=torch.float64).view(1, 3, 1, 1)
    noise = PerSampleNoise([0, 1])
    x_T = noise((2, 3, 2, 2), dtype=torch.float64)
    out = sample_lcm(point_mass_eps(c), x_T, SCHED, lcm_timesteps(SCHED, steps), noise)
    assert torch.allclose(out, c.expand_as(out), atol=1e-9)
    opts = SamplingOptions(sampler="lcm", steps=steps, threshold="none")
    assert torch.allclose(sample(point_mass_eps(c), SCHED, x_T, PerSampleNoise([0, 1]), opts), out, atol=1e-12)
    # (the stochastic steps draw fresh noise, but a point mass forgets it: the same point either way)


def test_a_chain_stopped_part_way_is_the_point_noised_to_that_level_with_the_seeds_next_draw():
    c = torch.full((1, 3, 2, 2), 0.3, dtype=torch.float64)
    opts = SamplingOptions(sampler="lcm", steps=4, threshold="none")
    noise = PerSampleNoise([7])
    x_T = noise((1, 3, 2, 2), dtype=torch.float64)
    half = sample(point_mass_eps(c), SCHED, x_T, noise, opts, stop=2)
    g = PerSampleNoise([7])
    g((1, 3, 2, 2), dtype=torch.float64)  # x_T
    g((1, 3, 2, 2), dtype=torch.float64)  # the renoising after step 1
    ab = SCHED.alpha_bar[500].item()
    assert torch.allclose(half, ab ** 0.5 * c + (1 - ab) ** 0.5 * g((1, 3, 2, 2), dtype=torch.float64), atol=1e-12)


def test_the_ddim_solver_step_with_the_true_eps_lands_on_the_forward_process():
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t, s = torch.tensor([980, 500, 20]), torch.tensor([960, 480, 0])
    x_s = ddim_solver_step(SCHED, SCHED.q_sample(x0, t, eps), t, s, eps)
    assert torch.allclose(x_s, SCHED.q_sample(x0, s, eps), atol=1e-9)


def test_pseudo_huber_is_l1_far_away_and_half_a_square_over_c_near():
    a, b = torch.tensor([3.0, -1.0]), torch.zeros(2)
    assert pseudo_huber(a, b, 0.0).item() == pytest.approx(2.0)
    small = torch.tensor([1e-4, -2e-4])
    assert pseudo_huber(small, torch.zeros(2), 0.1).item() == pytest.approx(((1e-8 + 4e-8) / 2) / (2 * 0.1), rel=1e-3)


@pytest.fixture(scope="module")
def tiny_lcm(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lcm")
    cfg = {"model": "consistency_distillation", "teacher": str(tiny_model), "guidance_scale": 2.0,
           "data": {"resolution": 16}, "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "lr": 1e-3},
           "log_every": 1, "checkpoint_every": 1, "sample_steps": 2}
    (folder / "lcm.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(folder / "lcm.json"), "--out", str(folder / "run")]) == 0
    return folder / "run" / "model"


def test_the_distilled_model_samples_with_lcm_at_its_steps_and_no_cfg(tiny_model, tiny_lcm, tmp_path):
    pipe = load_pipeline(tiny_lcm)
    assert (pipe.defaults.sampler.value, pipe.defaults.steps, pipe.defaults.guidance_scale) == ("lcm", 2, 1.0)
    teacher = load_pipeline(tiny_model)
    changed = [not torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), teacher.unet.state_dict().values())]
    assert any(changed)  # the student trained
    assert all(torch.equal(a, b) for a, b in zip(pipe.text_encoder.state_dict().values(),
                                                 teacher.text_encoder.state_dict().values()))  # the rest: the teacher's
    out = tmp_path / "a.png"
    assert main(["generate", "a red circle", "--model", str(tiny_lcm), "--out", str(out), "--seed", "3"]) == 0
    assert out.is_file()


def test_the_teacher_the_student_learns_from_is_the_guided_model_its_pipeline_samples(tiny_model):
    from types import SimpleNamespace

    from condiff.train.tasks.distill import ConsistencyDistillationTask

    teacher = load_pipeline(tiny_model)
    run = SimpleNamespace(state={"teacher": teacher, "text": teacher.text_encoder})
    prompts = ["a red circle", "two blue squares"]
    c, u = ConsistencyDistillationTask().conditions(run, prompts, None, "cpu")
    opts = SamplingOptions(guidance_scale=2.0, threshold="none")
    x, t = torch.randn(2, *teacher.sample_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([40, 80])
    with torch.no_grad():
        mine = ClassifierFreeGuidance(teacher.denoiser, 2.0, c, u)(x, t)
        pipelines = teacher.guided_model(prompts, opts)(x, t)
    assert (mine - pipelines).abs().max() < 1e-6, (mine - pipelines).abs().max()


def test_few_steps_on_a_model_with_a_distilled_copy_draw_with_the_copy(tiny_model, tiny_lcm, tmp_path, monkeypatch):
    from PIL import Image

    from condiff import catalogue
    from condiff.pipelines.requests import ModelTag
    from condiff.png import parse_parameters

    condiff_tag = lambda folder: ModelTag.of(folder).parameters()["Model"]  # noqa: E731

    monkeypatch.setitem(catalogue.FEW_STEP, tiny_model.resolve(), ((8, tiny_lcm),))

    def drawn(*extra) -> dict:
        out = tmp_path / "x.png"
        assert main(["generate", "a red circle", "--model", str(tiny_model), "--out", str(out), *extra]) == 0
        return parse_parameters(Image.open(out).text["parameters"])

    few = drawn("--steps", "2")
    assert (few["Sampler"], few["Steps"], few["CFG scale"]) == ("LCM", "2", "1.0")
    assert few["Model"] == condiff_tag(tiny_lcm)
    assert drawn("--steps", "2", "--sampler", "ddim")["Sampler"] == "DDIM"  # a sampler asked for: the model itself
    assert drawn("--steps", "20")["Sampler"] == "DDIM"  # over the copy's 8
    assert drawn()["Sampler"] == "DDIM" and drawn()["Steps"] == "50"  # no --steps: the model's own settings


def test_exporting_the_distilled_model_shares_its_teachers_parts_and_draws_the_same(tiny_model, tiny_lcm, tmp_path):
    out = tmp_path / "shipped" / "lcm"
    assert main(["export", str(tiny_lcm), str(out), "--share-from", str(tiny_model)]) == 0
    spec = json.loads((out / "pipeline.json").read_text())
    paths = {c["name"]: c["path"] for c in spec["components"]}
    assert paths["unet"] is None and sorted(p.name for p in out.iterdir()) == ["pipeline.json", "unet"]
    assert (out / paths["text_encoder"]).resolve() == (tiny_model / "text_encoder").resolve()
    a, b = load_pipeline(out), load_pipeline(tiny_lcm)
    with torch.no_grad():
        assert torch.equal(a(["a red circle"], [4]), b(["a red circle"], [4]))


@pytest.mark.parametrize("steps, copy, sampler, schedule", [("4", "lcm64", "LCM", "leading"),
                                                             ("1", "pd64", "DDIM", "progressive")])
def test_the_shipped_default_at_few_steps_draws_with_its_distilled_copies_and_draws_right(tmp_path, steps, copy,
                                                                                        sampler, schedule):
    from PIL import Image

    from condiff.png import parse_parameters
    from condiff.world.oracle import judge

    prompts = ["a red circle to the left of a blue square", "three green triangles", "a small yellow square",
               "a white circle above a purple square"]
    right = 0
    for i, prompt in enumerate(prompts):
        out = tmp_path / f"{i}.png"
        assert main(["generate", prompt, "--steps", steps, "--seed", str(i), "--out", str(out)]) == 0
        params = parse_parameters(Image.open(out).text["parameters"])
        assert (params["Model"], params["Sampler"], params["Steps"], params["CFG scale"]) == (copy, sampler, steps, "1.0")
        assert params["Schedule type"] == schedule
        right += judge(np.asarray(Image.open(out).convert("RGB")), prompt).correct
    assert right >= 3
