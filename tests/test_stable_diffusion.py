"""Stable Diffusion checkpoints under condiff (issue 32): tiny random SD models that diffusers itself builds and saves
(its own fast-test configs), read by condiff.formats, and every image compared with diffusers' StableDiffusionPipeline
drawing from the same seed."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from condiff import components  # noqa: E402
from condiff.cli import main  # noqa: E402
from condiff.diffusion.sampling import SamplingOptions  # noqa: E402
from condiff.diffusion.schedule import NoiseSchedule  # noqa: E402
from condiff.formats import Format, detect  # noqa: E402
from condiff.formats.diffusers_sd import diffusion_config  # noqa: E402
from condiff.pipelines.text2image import Text2ImagePipeline  # noqa: E402
from condiff.world.render import to_uint8  # noqa: E402

PROMPT = "a photo of the cat"
MERGES = [("t", "h"), ("th", "e</w>")]


def bytes_to_unicode() -> list[str]:
    """CLIP's byte-level BPE alphabet: printable bytes as themselves, the rest shifted past 255."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A 516-token CLIP BPE tokenizer (FINDINGS: vocab=/merges= paths, not vocab_file=, in transformers 5)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def tiny_sd(folder: Path, v: bool = False) -> Path:
    """diffusers' fast-test SD (SD2-like with v: linear projections, gelu text model, v-prediction), saved."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=8, use_linear_projection=v, attention_head_dim=(2, 4) if v else 8)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=514, eos_token_id=515, pad_token_id=515, hidden_size=32,
                                        intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
                                        vocab_size=1000, hidden_act="gelu" if v else "quick_gelu"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if v else "epsilon")
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(folder.with_suffix(".tok")),
                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return tiny_sd(tmp_path_factory.mktemp("sd") / "sd1")


@pytest.fixture(scope="module")
def sd2v(tmp_path_factory) -> Path:
    return tiny_sd(tmp_path_factory.mktemp("sd") / "sd2v", v=True)


def diffusers_image(folder: Path, scheduler_cls=DDIMScheduler, size: int = 64, steps: int = 10, seed: int = 0,
                    negative: str | None = None, **scheduler_kw) -> np.ndarray:
    """diffusers' own image, (H, W, 3) uint8 as int, from generator=torch.Generator().manual_seed(seed)."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **scheduler_kw)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=7.5, height=size,
                 width=size, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    return (image * 255).round().astype(int)


def condiff_image(folder: Path, sampler: str, schedule: str, size: int = 32, negative: str = "") -> np.ndarray:
    pipe = Text2ImagePipeline.from_pretrained(folder).at_size(size)
    opts = SamplingOptions(steps=10, guidance_scale=7.5, sampler=sampler, schedule=schedule, threshold="none",
                           negative_prompt=negative)
    return to_uint8(pipe([PROMPT], [0], opts)).numpy()[0].astype(int)


def test_generate_on_a_diffusers_folder_draws_diffusers_own_ddim_image(sd1, tmp_path, capsys):
    """The issue's bar, exactly as a user runs it: within 3/255 of StableDiffusionPipeline + DDIMScheduler."""
    out = tmp_path / "cli.png"
    assert main(["generate", PROMPT, "--model", str(sd1), "--seed", "0", "--sampler", "ddim", "--steps", "10",
                 "--guidance-scale", "7.5", "--size", "64", "--out", str(out)]) == 0
    ours = np.asarray(Image.open(out)).astype(int)
    theirs = diffusers_image(sd1)
    assert ours.shape == (64, 64, 3)
    assert np.abs(ours - theirs).max() <= 3
    assert np.abs(ours - diffusers_image(sd1, seed=1)).max() > 3 * 3  # the check can tell one seed from another


@pytest.mark.parametrize("sampler, schedule, scheduler_cls, kw", [
    ("euler", "leading", EulerDiscreteScheduler, {}),
    ("euler_a", "leading", EulerAncestralDiscreteScheduler, {}),
    ("dpmpp_2m", "trailing", DPMSolverMultistepScheduler, {"timestep_spacing": "trailing"}),
    ("ddim", "trailing", DDIMScheduler, {"timestep_spacing": "trailing"}),
])
def test_each_sampler_draws_its_diffusers_schedulers_image(sd1, sampler, schedule, scheduler_cls, kw):
    """condiff's sampler == diffusers' scheduler built from the model's config (+ kw), same seed (docs table)."""
    ours = condiff_image(sd1, sampler, schedule)
    assert np.abs(ours - diffusers_image(sd1, scheduler_cls, size=32, **kw)).max() <= 3


def test_sd2_like_v_prediction_folder_and_a_negative_prompt(sd2v):
    ours = condiff_image(sd2v, "ddim", "leading", negative="the")
    assert np.abs(ours - diffusers_image(sd2v, size=32, negative="the")).max() <= 3


def test_schedule_and_timesteps_are_diffusers_own():
    """scaled_linear alpha_bar (condiff's float64 cumprod of diffusers' float32 betas); leading + steps_offset,
    trailing and linspace (condiff's uniform) timesteps exactly."""
    raw = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "set_alpha_to_one": False, "steps_offset": 1, "skip_prk_steps": True}
    cfg, opts = diffusion_config(raw, "scheduler_config.json")
    schedule = NoiseSchedule.from_config(cfg.schedule)
    ref = DDIMScheduler.from_config(raw)
    torch.testing.assert_close(schedule.alpha_bar.float(), ref.alphas_cumprod, rtol=2e-6, atol=0)
    assert schedule.final_alpha_bar == pytest.approx(ref.final_alpha_cumprod.item(), rel=1e-7)
    assert (opts.sampler.value, opts.schedule.value, opts.guidance_scale) == ("ddim", "leading", 7.5)
    for spacing, ours in (("leading", "leading"), ("trailing", "trailing"), ("linspace", "uniform")):
        for steps in (10, 25, 50):
            ref = DDIMScheduler.from_config(raw, timestep_spacing=spacing)
            ref.set_timesteps(steps)
            assert schedule.timesteps(steps, ours) == ref.timesteps.tolist(), (spacing, steps)


def test_a_diffusers_vae_folder_is_never_taken_for_a_condiff_autoencoder(sd1):
    with pytest.raises(ValueError, match="diffusers"):
        components.guess_type(sd1 / "vae")


def _copy(folder: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(folder, to)
    return to


def test_bad_folders_and_sizes_fail_in_one_line_before_any_work(sd1, tmp_path, capsys):
    unknown = _copy(sd1, tmp_path / "unknown")
    index = json.loads((unknown / "model_index.json").read_text())
    (unknown / "model_index.json").write_text(json.dumps(index | {"_class_name": "KandinskyPipeline"}))
    no_tokenizer = _copy(sd1, tmp_path / "no_tokenizer")
    for f in (no_tokenizer / "tokenizer").iterdir():
        f.unlink()
    truncated = _copy(sd1, tmp_path / "truncated")
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    cases = [(unknown, "64", "_class_name 'KandinskyPipeline'"), (no_tokenizer, "64", "no tokenizer"),
             (truncated, "64", "not a readable safetensors file"), (sd1, "60", "multiples of 8")]
    for folder, size, message in cases:
        assert main(["generate", PROMPT, "--model", str(folder), "--size", size, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("x*.png"))


def test_a_pickle_checkpoint_is_refused_unread(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not even read")
    assert detect(ckpt) is Format.PICKLE
    assert main(["generate", PROMPT, "--model", str(ckpt), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "never unpickled" in err and len(err.splitlines()) == 1
