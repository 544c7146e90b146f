"""Editing through the sampler hooks: img2img (SDEdit) at the strength's level, RePaint's known region, DDIM
inversion round trips (closed form on Gaussian data), and condiff edit's files and one-line errors."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from condiff.cli import main
from condiff.diffusion.samplers import PerSampleNoise
from condiff.diffusion.sampling import SamplingOptions, plan_alpha_bars, sampling_timesteps
from condiff.pipelines.editing import (
    PLAIN_INVERSION,
    img2img,
    invert,
    invert_coupled,
    leakage,
    regenerate,
    regenerate_coupled,
    repaint,
)
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.png import read_parameters

sys.path.insert(0, str(Path(__file__).parent))
from test_latent import TINY_AE, _latent_config, _write  # noqa: E402

MU, S = 0.3, 0.5  # Gaussian data x0 ~ N(MU, S^2 I): its exact denoiser and probability-flow ODE are closed-form


def gaussian_pipe(folder) -> Text2ImagePipeline:
    """A real pipeline whose denoiser is the exact eps of the Gaussian data (whatever the conditioning)."""
    pipe = Text2ImagePipeline.from_pretrained(folder)
    ab_of = pipe.schedule.alpha_bar_at

    def eps(x, t, **_):
        ab = ab_of(t).to(x).view(-1, 1, 1, 1)
        x0 = MU + ab.sqrt() * S ** 2 / (ab * S ** 2 + 1 - ab) * (x - ab.sqrt() * MU)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    pipe.denoiser = eps
    return pipe


def ode_to_data(x, ab):
    """Where the probability-flow ODE takes x at level alpha_bar ab: the standardised coordinate is kept."""
    return MU + S * (x - ab ** 0.5 * MU) / (ab * S ** 2 + 1 - ab) ** 0.5


def scene(seed=0, shape=(1, 3, 16, 16)):
    return PerSampleNoise([100 + seed])(shape).clamp(-1, 1)


def test_img2img_starts_from_q_of_the_input_at_the_strengths_level(tiny_model):
    pipe, x0 = gaussian_pipe(tiny_model), scene()
    opts = SamplingOptions(steps=100, threshold="none")
    k = 100 - 60
    level = plan_alpha_bars(pipe.schedule, opts)[k]
    assert level == pytest.approx(pipe.schedule.alpha_bar[sampling_timesteps(pipe.schedule, opts)[k]].item())
    z = PerSampleNoise([7])(x0.shape)  # the seed's first draw: the noise text-to-image would start from
    want = ode_to_data(level ** 0.5 * x0 + (1 - level) ** 0.5 * z, level)
    got = img2img(pipe, ["a red circle"], x0, [7], opts, strength=0.6)
    assert (got - want).abs().mean() < 1e-2  # DDIM's discretisation error on a 100-step schedule
    off = plan_alpha_bars(pipe.schedule, opts)[k - 10]
    assert (ode_to_data(off ** 0.5 * x0 + (1 - off) ** 0.5 * z, off) - got).abs().mean() > 2e-2  # 10 steps off is seen


def test_img2img_strength_0_is_the_input_and_1_is_text_to_image(tiny_model):
    pipe, x0, opts = Text2ImagePipeline.from_pretrained(tiny_model), scene(), SamplingOptions(steps=4)
    assert torch.equal(img2img(pipe, ["a red circle"], x0, [3], opts, 0.0), x0)
    assert torch.equal(img2img(pipe, ["a red circle"], x0, [3], opts, 1.0), pipe(["a red circle"], [3], opts))
    two = img2img(pipe, ["a blue square", "a red circle"], torch.cat([scene(1), x0]), [9, 3], opts, 0.5)
    torch.testing.assert_close(two[1:], img2img(pipe, ["a red circle"], x0, [3], opts, 0.5), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="strength"):
        img2img(pipe, ["a red circle"], x0, [3], opts, float("nan"))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler_a", "dpmpp_2m"])
def test_repaint_keeps_the_known_region_exactly_and_repaints_the_rest(tiny_model, sampler):
    pipe, x0 = Text2ImagePipeline.from_pretrained(tiny_model), scene()
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., 4:12, 2:9] = True
    opts = SamplingOptions(steps=5, sampler=sampler)
    raw = repaint(pipe, ["a red circle"], x0, mask, [1], opts, paste_back=False)
    keep = ~mask.expand_as(x0)
    assert torch.equal(raw[keep], x0[keep])  # a pixel model: the last replace puts q(x_0 | x_0) = x_0 there
    assert (raw[~keep] - x0[~keep]).abs().mean() > 0.05
    assert leakage(x0, raw, mask) == float("inf")


def test_ddim_inversion_round_trip_is_exact_for_the_exact_denoiser(tiny_model):
    pipe, x0 = gaussian_pipe(tiny_model), scene()
    opts = SamplingOptions(steps=100, schedule="leading", guidance_scale=3.0)
    x_T = invert(pipe, ["a red circle"], x0, opts)
    ab_T = pipe.schedule.alpha_bar[sampling_timesteps(pipe.schedule, opts.replace(sampler="ddim"))[0]].item()
    standard = (x0 - MU) / S  # the ODE keeps it: x_T = sqrt(ab) MU + sqrt(ab S^2 + 1 - ab) standard
    assert (x_T - (ab_T ** 0.5 * MU + (ab_T * S ** 2 + 1 - ab_T) ** 0.5 * standard)).abs().mean() < 3e-2  # ~1% off: the schedule has 100 steps
    err = (regenerate(pipe, ["a blue square"], x_T, opts) - x0).abs().mean()
    opts50 = opts.replace(steps=50)
    plain = lambda o: (regenerate(pipe, ["a"], invert(pipe, ["a"], x0, o, PLAIN_INVERSION), o) - x0).abs().mean()
    assert plain(opts) < 2.5e-2 and plain(opts) < 0.6 * plain(opts50)  # first order: eps read a step late, ~ 1/steps
    assert err < 0.05 * plain(opts)  # the default's fixed-point steps remove that lag
    pair = invert_coupled(pipe, ["a"], x0, opts50)  # EDICT: exact by construction, at 50 steps and CFG 3
    assert (regenerate_coupled(pipe, ["a"], pair, opts50) - x0).abs().max() < 1e-4


@pytest.fixture(scope="module")
def tiny_latent_model(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edit_latent")
    assert main(["train", "--config", str(_write(tmp / "ae.json", TINY_AE)), "--out", str(tmp / "ae")]) == 0
    cfg = _latent_config(tmp, tmp / "ae" / "model", tiny_bert)
    assert main(["train", "--config", str(cfg), "--out", str(tmp / "run")]) == 0
    return tmp / "run" / "model"


def test_editing_a_latent_model_works_in_its_latent_space(tiny_latent_model):
    pipe, x0 = Text2ImagePipeline.from_pretrained(tiny_latent_model), scene()
    opts = SamplingOptions(steps=3, threshold="none")
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., :8, :] = True
    out = repaint(pipe, ["a red circle"], x0, mask, [0], opts)
    assert torch.equal(out[~mask.expand_as(x0)], x0[~mask.expand_as(x0)])  # pasted back
    raw = repaint(pipe, ["a red circle"], x0, mask, [0], opts, paste_back=False)
    assert np.isfinite(leakage(x0, raw, mask))
    assert img2img(pipe, ["a red circle"], x0, [0], opts, 0.5).shape == x0.shape
    assert invert(pipe, ["a red circle"], x0, opts).shape == (1, *pipe.sample_shape)


def _png(path, size=16, colour=(200, 30, 30)):
    px = np.zeros((size, size, 3), dtype=np.uint8)
    px[4:10, 4:10] = colour
    Image.fromarray(px).save(path)
    return str(path)


def test_edit_commands_write_pngs_with_infotext(tiny_model, tmp_path):
    src = _png(tmp_path / "in.png")
    common = ["--model", str(tiny_model), "--steps", "3", "--prompt", "a red circle"]
    assert main(["edit", "img2img", src, *common, "--strength", "0.5", "--out", str(tmp_path / "a.png")]) == 0
    assert read_parameters(tmp_path / "a.png")["Denoising strength"] == "0.5"
    assert main(["edit", "inpaint", src, *common, "--box", "0,0,8,16", "--out", str(tmp_path / "b.png")]) == 0
    out, src_px = np.asarray(Image.open(tmp_path / "b.png")), np.asarray(Image.open(src))
    assert np.array_equal(out[:, 8:], src_px[:, 8:])  # outside the box: IN's pixels exactly
    assert main(["edit", "inpaint", src, *common, "--box", "0,0,8,16", "--jump-n-sample", "2", "--jump-length", "2",
                 "--out", str(tmp_path / "j.png")]) == 0
    assert read_parameters(tmp_path / "j.png")["Jump samples"] == "2"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "j.png"))[:, 8:], src_px[:, 8:])
    noise = tmp_path / "x_T.safetensors"
    assert main(["edit", "invert", src, *common, "--guidance-scale", "1", "--method", "ddim", "--save-noise",
                 str(noise), "--out", str(tmp_path / "rec.png")]) == 0
    assert "Reconstruction PSNR" in read_parameters(tmp_path / "rec.png")
    again = ["generate", "a red circle", "--model", str(tiny_model), "--steps", "3", "--schedule", "leading",
             "--threshold", "none", "--guidance-scale", "1", "--out", str(tmp_path / "again.png")]
    assert main([*again, "--from-noise", str(noise)]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(tmp_path / "rec.png")))
    pair = tmp_path / "pair.safetensors"  # the default, EDICT: a pair of chains that generate cannot run
    assert main(["edit", "invert", src, *common, "--save-noise", str(pair), "--out", str(tmp_path / "e.png")]) == 0
    assert read_parameters(tmp_path / "e.png")["Inversion"] == "EDICT, decoder 50"
    assert sorted(load_file(str(pair))) == ["x_T", "y_T"]
    assert main([*again, "--from-noise", str(pair)]) == 2


@pytest.mark.parametrize("args, message", [
    (["img2img", "{missing}", "--strength", "0.5"], "no such file"),
    (["img2img", "{text}", "--strength", "0.5"], "not a readable image"),
    (["img2img", "{src}", "--strength", "1.5"], "strength"),
    (["img2img", "{src}", "--strength", "nan"], "strength"),
    (["inpaint", "{src}", "--box", "0,0,17,8"], "--box"),
    (["inpaint", "{src}", "--box", "4,4,4,8"], "--box"),
    (["inpaint", "{src}", "--box", "a,b"], "--box"),
    (["inpaint", "{src}"], "exactly one of"),
    (["inpaint", "{src}", "--box", "0,0,8,8", "--jump-n-sample", "0"], "jump_n_sample"),
    (["inpaint", "{src}", "--mask", "{big}"], "must match"),
    (["inpaint", "{src}", "--mask", "{empty}"], "empty"),
    (["invert", "{src}", "--guidance-scale", "inf"], "guidance"),
])
def test_bad_edit_input_is_one_line_and_writes_nothing(tiny_model, tmp_path, capsys, args, message):
    files = {"src": _png(tmp_path / "in.png"), "big": _png(tmp_path / "big.png", 32), "missing": str(tmp_path / "no.png"),
             "empty": _png(tmp_path / "empty.png", colour=(0, 0, 0))}
    (tmp_path / "t.png").write_text("not an image")
    files["text"] = str(tmp_path / "t.png")
    argv = ["edit", *[a.format(**files) for a in args], "--prompt", "a red circle", "--model", str(tiny_model),
            "--steps", "2", "--out", str(tmp_path / "out.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "out.png").exists()


def test_from_noise_of_the_wrong_shape_is_refused(tiny_model, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"x_T": torch.zeros(1, 3, 8, 8)}, str(tmp_path / "n.safetensors"))
    assert main(["generate", "a red circle", "--model", str(tiny_model), "--from-noise", str(tmp_path / "n.safetensors"),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "does not fit" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
