import pytest
import torch

from condiff.cli import SAMPLER_NAMES, SCHEDULE_NAMES, THRESHOLD_NAMES, VARIANCE_NAMES, main
from condiff.diffusion.samplers import Variance
from condiff.diffusion.thresholding import Threshold
from condiff.diffusion.sampling import Sampler, SamplingOptions, SigmaSchedule, sampling_sigmas
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.catalogue import BASE32
from condiff.world.oracle import judge
from condiff.world.render import to_uint8


def test_cli_names_are_the_enums():
    assert SAMPLER_NAMES == [s.value for s in Sampler]
    assert SCHEDULE_NAMES == [s.value for s in SigmaSchedule]
    assert THRESHOLD_NAMES == [t.value for t in Threshold]
    assert VARIANCE_NAMES == [v.value for v in Variance]
    from condiff.cli.control import CONTROL_KINDS
    from condiff.nets.controlnet import ControlKind

    assert CONTROL_KINDS == [k.value for k in ControlKind]


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_sampler_runs_and_keeps_seeds_independent_of_batch(tiny_model, sampler):
    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    opts = SamplingOptions(steps=4, sampler=sampler)
    both = pipe(["a red circle", "two blue squares"], [3, 4], opts)
    one = pipe(["two blue squares"], [4], opts)
    assert both.shape == (2, 3, 16, 16) and torch.isfinite(both).all()
    assert torch.allclose(both[1:], one, atol=1e-4)


@pytest.mark.parametrize("placement", [SigmaSchedule.KARRAS, SigmaSchedule.EXPONENTIAL])
def test_placed_sigmas_span_the_spaced_range_and_need_a_sigma_sampler(tiny_model, placement):
    pipe = Text2ImagePipeline.from_pretrained(tiny_model)
    sig = sampling_sigmas(pipe.schedule, SamplingOptions(steps=5, schedule=placement, sampler=Sampler.DPMPP_2M))
    plain = sampling_sigmas(pipe.schedule, SamplingOptions(steps=5))
    assert len(sig) == 6 and sig[-1] == 0 and torch.all(sig[:-1] > sig[1:])
    assert sig[0] == pytest.approx(plain[0].item()) and sig[-2] == pytest.approx(plain[-2].item())
    if placement is SigmaSchedule.EXPONENTIAL:  # equal ratios: uniform steps in log sigma (logSNR)
        ratios = sig[1:-1] / sig[:-2]
        assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-9)
    with pytest.raises(ValueError, match=f"{placement.value} schedule needs a sigma sampler"):
        pipe(["a red circle"], [0], SamplingOptions(steps=3, sampler=Sampler.DDIM, schedule=placement))


def test_a_saved_sigma_placement_gives_way_to_leading_when_a_timestep_sampler_is_asked_for_without_a_schedule():
    """The default saves DPM++ 2M with Karras sigmas; `--sampler ddim` alone must still draw (leading spacing), while
    a schedule given with the sampler is checked as given."""
    from argparse import Namespace

    saved = SamplingOptions(steps=20, sampler=Sampler.DPMPP_2M, schedule=SigmaSchedule.KARRAS)
    for opts in (saved.replace(sampler="ddim"), SamplingOptions.from_args(Namespace(sampler="ddim"), base=saved)):
        assert (opts.sampler, opts.schedule, opts.steps) == (Sampler.DDIM, SigmaSchedule.LEADING, 20)
    assert saved.replace(sampler="euler").schedule is SigmaSchedule.KARRAS  # a sigma sampler keeps the placement
    assert saved.replace(steps=5).schedule is SigmaSchedule.KARRAS
    assert SamplingOptions(sampler="ddim", schedule="trailing").replace(sampler="ddpm").schedule is SigmaSchedule.TRAILING
    with pytest.raises(ValueError, match="karras schedule needs a sigma sampler"):
        saved.replace(sampler="ddim", schedule="karras")
    with pytest.raises(ValueError, match="karras schedule needs a sigma sampler"):
        SamplingOptions.from_args(Namespace(sampler="ddim", schedule="karras"), base=saved)
    with pytest.raises(ValueError, match="unknown value 'dim'"):
        saved.replace(sampler="dim")


def test_shipped_model_with_dpmpp_2m_at_10_steps():
    pipe = Text2ImagePipeline.from_pretrained(BASE32)
    prompts = ["a red circle", "a blue square", "a yellow triangle", "a large green circle"]
    opts = SamplingOptions(steps=10, sampler=Sampler.DPMPP_2M, schedule=SigmaSchedule.KARRAS)
    images = to_uint8(pipe(prompts, [0, 1, 2, 3], opts)).numpy()
    assert sum(judge(px, p).correct for px, p in zip(images, prompts)) >= 3


def test_samplers_command_lists_a1111_names(capsys):
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    assert "dpmpp_2m_sde" in out and "DPM++ 2M SDE" in out and "karras" in out and "exponential" in out
