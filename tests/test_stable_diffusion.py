"""Stable Diffusion checkpoints under condiff (issue 32): tiny random SD models that diffusers itself builds and saves
(its own fast-test configs), read by condiff.formats, and every image compared with diffusers' StableDiffusionPipeline
drawing from the same seed."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

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
from condiff.formats.single_file import clip_tokenizer  # noqa: E402
from condiff.pipelines.text2image import Text2ImagePipeline  # noqa: E402
from condiff.formats.single_file import sfu_bytes_to_unicode  # noqa: E402
from condiff.world.render import to_uint8  # noqa: E402

PROMPT = "a photo of the cat"
MERGES = [("t", "h"), ("th", "e</w>")]


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A 516-token CLIP BPE tokenizer (FINDINGS: vocab=/merges= paths, not vocab_file=, in transformers 5)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = sfu_bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def tiny_sd(folder: Path, v: bool = False, conventional: bool = False, f8: bool = False) -> Path:
    """diffusers' fast-test SD (SD2-like with v: linear projections, gelu text model, v-prediction), saved.

    conventional: follows SD1's conventions as a single file must (32 groups, 64-dim text heads, CLIP's real
    49,408-token tokenizer), so that the same weights also load from an original-layout file.
    f8: an autoencoder of four levels, which downsamples by 8 as SD's does (the fast-test one by 2 only, so that at
    512 px its latent is 256 x 256 and one step takes minutes)."""
    torch.manual_seed(0)
    groups = 32 if conventional else 8
    widths = (64, 64) if v and conventional else (32, 64)  # SD2's 64-dim heads need 64 channels at every level
    unet = UNet2DConditionModel(block_out_channels=widths, layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=groups, use_linear_projection=v,
                                attention_head_dim=((1, 1) if conventional else (2, 4)) if v else 8)
    levels = [32, 32, 32, 64] if f8 else [32, 64]
    vae = AutoencoderKL(block_out_channels=levels, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * len(levels),
                        up_block_types=["UpDecoderBlock2D"] * len(levels), norm_num_groups=groups)
    if conventional:
        text_cfg = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=1, hidden_size=32, num_attention_heads=1,
                        vocab_size=49408)
        tokenizer = clip_tokenizer(sd2=v)
    else:
        text_cfg = dict(bos_token_id=514, eos_token_id=515, pad_token_id=515, hidden_size=32, num_attention_heads=4,
                        vocab_size=1000)
        tokenizer = tiny_tokenizer(folder.with_suffix(".tok"))
    text = CLIPTextModel(CLIPTextConfig(**text_cfg, intermediate_size=37, num_hidden_layers=5,
                                        hidden_act="gelu" if v else "quick_gelu"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if v else "epsilon")
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return tiny_sd(tmp_path_factory.mktemp("sd") / "sd1")


@pytest.fixture(scope="module")
def sd2v(tmp_path_factory) -> Path:
    return tiny_sd(tmp_path_factory.mktemp("sd") / "sd2v", v=True)


def diffusers_image(folder: Path, scheduler_cls=DDIMScheduler, size: int = 64, steps: int = 10, seed: int = 0,
                    negative: str | None = None, rescale: float = 0.0, **scheduler_kw) -> np.ndarray:
    """diffusers' own image, (H, W, 3) uint8 as int, from generator=torch.Generator().manual_seed(seed)."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **scheduler_kw)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=7.5, height=size,
                 width=size, guidance_rescale=rescale, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    return (image * 255).round().astype(int)


def condiff_image(folder: Path, sampler: str, schedule: str, size: int = 32, negative: str = "",
                  rescale: float = 0.0) -> np.ndarray:
    pipe = Text2ImagePipeline.from_pretrained(folder).at_size(size)
    opts = SamplingOptions(steps=10, guidance_scale=7.5, sampler=sampler, schedule=schedule, threshold="none",
                           negative_prompt=negative, guidance_rescale=rescale)
    return to_uint8(pipe([PROMPT], [0], opts)).numpy()[0].astype(int)


def test_generate_on_a_diffusers_folder_draws_diffusers_own_ddim_image(sd1, tmp_path, capsys):
    """The issue's bar, exactly as a user runs it: within 3/255 of StableDiffusionPipeline + DDIMScheduler (whose
    guidance_scale 7.5 is also what generate uses on a Stable Diffusion model unless told otherwise)."""
    out = tmp_path / "cli.png"
    assert main(["generate", PROMPT, "--model", str(sd1), "--seed", "0", "--sampler", "ddim", "--steps", "10",
                 "--size", "64", "--out", str(out)]) == 0
    assert "CFG scale: 7.5" in Image.open(out).info["parameters"]
    ours = np.asarray(Image.open(out)).astype(int)
    theirs = diffusers_image(sd1)
    assert ours.shape == (64, 64, 3)
    assert np.abs(ours - theirs).max() <= 3
    assert ours.std() > 20  # a random model's image, not a flat one the bar could not tell apart


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


def test_cfg_rescale_draws_diffusers_guidance_rescale_image(sd1):
    """--guidance-rescale phi == StableDiffusionPipeline(guidance_rescale=phi) (Lin et al. 2024, eq. 15-16)."""
    ours, theirs = condiff_image(sd1, "ddim", "leading", rescale=0.7), diffusers_image(sd1, size=32, rescale=0.7)
    assert np.abs(ours - theirs).max() <= 3
    assert np.abs(ours - condiff_image(sd1, "ddim", "leading")).max() > 6  # the rescale moved it past the tolerance


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


@pytest.mark.parametrize("argv, message", [
    (["edit", "variations", "IN", "-n", "2"], "reads no CLIP image embedding"),  # SD is not an unCLIP decoder
    (["generate", PROMPT, "--threshold", "dynamic"], "denoises latents"),  # pixel-range clipping of a latent
])
def test_methods_that_do_not_apply_to_sd_say_why_in_one_line(sd1, tmp_path, capsys, argv, message):
    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    argv = [str(picture) if a == "IN" else a for a in argv]
    assert main([*argv, "--model", str(sd1), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_pickle_checkpoint_is_refused_unread(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not even read")
    assert detect(ckpt) is Format.PICKLE
    assert main(["generate", PROMPT, "--model", str(ckpt), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "never unpickled" in err and len(err.splitlines()) == 1


# The original (CompVis) layout of the same weights, written here key by key; diffusers' own converters read it back.
RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"), ("norm2", "out_layers.0"),
          ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]

def unet_to_ldm(sd: dict, levels: int, nrb: int) -> dict:
    """diffusers UNet2DConditionModel keys -> LDM's model.diffusion_model.* (SD's original layout)."""
    names = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2"}
    for i in range(levels):
        for j in range(nrb):
            names[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{i * (nrb + 1) + j + 1}.0"
            names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{i * (nrb + 1) + j + 1}.1"
        names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (nrb + 1)}.0.op"
        for j in range(nrb + 1):
            names[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * (nrb + 1) + j}.0"
            names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * (nrb + 1) + j}.1"
    out = {}
    for k, v in sd.items():
        m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k)
        if m:
            i = int(m.group(1))
            has_attn = any(key.startswith(f"up_blocks.{i}.attentions.") for key in sd)
            out[f"model.diffusion_model.output_blocks.{i * (nrb + 1) + nrb}.{2 if has_attn else 1}.conv.{m.group(2)}"] = v
            continue
        for d, o in sorted(names.items(), key=lambda x: -len(x[0])):
            if k.startswith(d + "."):
                rest = k[len(d) + 1:]
                if ".resnets." in d or d.startswith("mid_block.resnets"):
                    for a, b in RESNET:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                k = o + "." + rest
                break
        else:
            raise KeyError(k)
        out["model.diffusion_model." + k] = v
    return out

VAE_RESNET = [("conv_shortcut", "nin_shortcut")]

def vae_to_ldm(sd: dict, levels: int, nrb: int) -> dict:
    """diffusers AutoencoderKL keys -> LDM's first_stage_model.*."""
    out = {}
    for k, v in sd.items():
        o = k
        o = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", o)
        o = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", o)
        o = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}", o)
        o = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample", o)
        o = re.sub(r"(encoder|decoder)\.mid_block\.resnets\.(\d)", lambda m: f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}", o)
        o = re.sub(r"(encoder|decoder)\.mid_block\.attentions\.0", r"\1.mid.attn_1", o)
        o = o.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in o:
            o = (o.replace("group_norm", "norm").replace("to_q", "q").replace("to_k", "k").replace("to_v", "v")
                 .replace("to_out.0", "proj_out"))
            if v.ndim == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + o] = v
    return out

def text_to_ldm(sd: dict) -> dict:
    return {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v for k, v in sd.items()}

def text_to_open_clip(sd: dict, width: int) -> dict:
    """transformers CLIPTextModel keys -> SD2's OpenCLIP cond_stage_model.model.*, plus one random last layer, which
    SD2 does not read (it takes the penultimate layer's states)."""
    p, out = "cond_stage_model.model.", {}
    sd = {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    out[p + "token_embedding.weight"] = sd.pop("embeddings.token_embedding.weight")
    out[p + "positional_embedding"] = sd.pop("embeddings.position_embedding.weight")
    out[p + "ln_final.weight"], out[p + "ln_final.bias"] = sd.pop("final_layer_norm.weight"), sd.pop("final_layer_norm.bias")
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for i in range(layers + 1):
        r, e = f"{p}transformer.resblocks.{i}.", f"encoder.layers.{i}."
        g = torch.Generator().manual_seed(i)
        get = (lambda k: sd[e + k]) if i < layers else (lambda k: torch.randn(sd["encoder.layers.0." + k].shape, generator=g) * 0.02)
        for part in ("weight", "bias"):
            out[r + f"attn.in_proj_{part}"] = torch.cat([get(f"self_attn.{q}_proj.{part}") for q in "qkv"])
            for new, old in names.items():
                out[r + f"{old}.{part}"] = get(f"{new}.{part}")
    out[p + "text_projection"] = torch.randn(width, width, generator=torch.Generator().manual_seed(99))
    return out


def folder_to_single_file(folder: Path, out: Path, sd2: bool = False) -> Path:
    """A diffusers SD1 (or with sd2, SD2: OpenCLIP text layout) folder as one original-layout safetensors file."""
    unet = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    vae = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    text = load_file(str(folder / "text_encoder" / "model.safetensors"))
    uc = json.loads((folder / "unet" / "config.json").read_text()); vc = json.loads((folder / "vae" / "config.json").read_text())
    sd = unet_to_ldm(unet, len(uc["block_out_channels"]), uc["layers_per_block"]) | vae_to_ldm(vae, len(vc["block_out_channels"]), vc["layers_per_block"])
    tc = json.loads((folder / "text_encoder" / "config.json").read_text())
    sd |= text_to_open_clip(text, tc["hidden_size"]) if sd2 else text_to_ldm(text)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out))
    return out


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory) -> tuple[Path, Path]:
    folder = tiny_sd(tmp_path_factory.mktemp("sd") / "conventional", conventional=True)
    return folder, folder_to_single_file(folder, folder.parent / "model.safetensors")


def test_a_single_file_draws_the_image_diffusers_draws_from_the_same_weights_as_a_folder(sd1_file, tmp_path):
    """The architecture is read from the tensors' shapes; the tokenizer is the shipped CLIP BPE vocabulary."""
    folder, single = sd1_file
    out = tmp_path / "file.png"
    assert main(["generate", PROMPT, "--model", str(single), "--seed", "0", "--sampler", "ddim", "--steps", "10",
                 "--guidance-scale", "7.5", "--size", "64", "--out", str(out)]) == 0
    assert np.abs(np.asarray(Image.open(out)).astype(int) - diffusers_image(folder)).max() <= 3


def test_the_infotext_names_the_checkpoint_and_its_a1111_hash(sd1_file, tmp_path, monkeypatch):
    """A1111's `Model hash` of a single file is the first 10 hex digits of its SHA-256 ('AutoV2'); the name is the
    file's stem. The hash is remembered by path, size and mtime: a changed file is hashed again."""
    import hashlib

    from condiff.fs import model_hash
    from condiff.png import read_parameters

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, single = sd1_file
    out = tmp_path / "h.png"
    assert main(["generate", PROMPT, "--model", str(single), "--steps", "2", "--size", "32", "--out", str(out)]) == 0
    params = read_parameters(out)
    assert params["Model hash"] == hashlib.sha256(single.read_bytes()).hexdigest()[:10]
    assert params["Model"] == single.stem
    assert params["Model hash"] in (tmp_path / "cache" / "condiff" / "hashes.json").read_text()
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(single.read_bytes() + b"")
    assert model_hash(copy) == params["Model hash"]
    copy.write_bytes(single.read_bytes()[:-1] + b"x")  # same size, new content and mtime
    assert model_hash(copy) == hashlib.sha256(copy.read_bytes()).hexdigest()[:10] != params["Model hash"]


def test_an_sd2_single_file_with_openclip_text_draws_the_image_diffusers_draws_from_the_folder(tmp_path):
    """SD2's layout: OpenCLIP's fused in_proj attention, read at the penultimate of its layers (the last one, random
    here, must be dropped), 64-dim UNet heads, v-prediction from --prediction v, the tokenizer padding with '!'."""
    folder = tiny_sd(tmp_path / "sd2", v=True, conventional=True)
    single = folder_to_single_file(folder, tmp_path / "sd2-v.safetensors", sd2=True)
    out = tmp_path / "file.png"
    assert main(["generate", PROMPT, "--model", str(single), "--prediction", "v", "--seed", "0", "--sampler", "ddim",
                 "--steps", "10", "--guidance-scale", "7.5", "--size", "64", "--out", str(out)]) == 0
    image = np.asarray(Image.open(out)).astype(int)
    assert image.std() > 10 and np.abs(image - diffusers_image(folder)).max() <= 3


def test_convert_writes_a_diffusers_folder_diffusers_reads(sd1_file, tmp_path):
    folder, single = sd1_file
    assert main(["convert", str(single), "--out", str(tmp_path / "converted")]) == 0
    converted = diffusers_image(tmp_path / "converted", size=32, steps=3)
    assert np.abs(converted - diffusers_image(folder, size=32, steps=3)).max() <= 1


def test_the_shipped_clip_vocabulary_is_sd1s_tokenizer():
    ids = clip_tokenizer(sd2=False)("a photograph of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]


def test_a_file_that_is_not_stable_diffusion_fails_in_one_line(tmp_path, capsys):
    bad = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(bad))
    assert main(["generate", PROMPT, "--model", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an original-layout Stable Diffusion file" in err and len(err.splitlines()) == 1
