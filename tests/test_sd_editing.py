"""img2img (SDEdit) and inpainting on Stable Diffusion: `condiff edit` on a tiny random SD folder draws, within 3/255,
the image that diffusers' StableDiffusionImg2ImgPipeline / StableDiffusionInpaintPipeline draw from the same seed
(docs/stable-diffusion.md, the parity table). 64 px, DDIM (the model's default) with 10 steps, CFG 7.5."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
from diffusers import (EulerAncestralDiscreteScheduler, StableDiffusionImg2ImgPipeline,  # noqa: E402
                       StableDiffusionInpaintPipeline, UNet2DConditionModel)
from test_stable_diffusion import PROMPT, tiny_sd  # noqa: E402

from condiff.cli import main  # noqa: E402
from condiff.diffusion.sampling import SamplingOptions, start_step  # noqa: E402

SIZE, STEPS, CFG = 64, 10, 7.5
BOX = (17, 13, 51, 45)  # X0, Y0, X1, Y1: odd edges, off the latent grid, where nearest and max-pooling differ


def picture() -> Image.Image:
    """A fixed 64 x 64 RGB picture: smooth random colours (8 x 8 upsampled bicubically)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)


def box_mask() -> Image.Image:
    m = np.zeros((SIZE, SIZE), np.uint8)
    x0, y0, x1, y1 = BOX
    m[y0:y1, x0:x1] = 255
    return Image.fromarray(m)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return tiny_sd(tmp_path_factory.mktemp("sd") / "sd1")


@pytest.fixture(scope="module")
def sd1_inpainting(tmp_path_factory) -> Path:
    """The same tiny SD with a 9-channel inpainting UNet (latents, mask, masked-image latents), as SD's inpainting
    checkpoints have."""
    folder = tiny_sd(tmp_path_factory.mktemp("sd") / "sd1-inpainting")
    torch.manual_seed(1)
    config = UNet2DConditionModel.load_config(folder / "unet")
    UNet2DConditionModel.from_config({**config, "in_channels": 9}).save_pretrained(folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": "StableDiffusionInpaintPipeline"}))
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    picture().save(folder / "in.png")
    box_mask().save(folder / "mask.png")
    return folder / "in.png", folder / "mask.png"


def diffusers_edit(cls, folder: Path, sampler=None, **kw) -> np.ndarray:
    """diffusers' own edit, (H, W, 3) uint8 as int, from generator=torch.Generator().manual_seed(0)."""
    pipe = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    if sampler is not None:
        pipe.scheduler = sampler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, image=picture(), num_inference_steps=STEPS, guidance_scale=CFG,
                 generator=torch.Generator().manual_seed(0), output_type="np", **kw).images[0]
    return (image * 255).round().astype(int)


def condiff_edit(command: str, folder: Path, image: Path, out: Path, *args: str) -> np.ndarray:
    """`condiff edit COMMAND` as a user runs it, seed 0; the PNG it writes, as int."""
    assert main(["edit", command, str(image), "--prompt", PROMPT, "--model", str(folder), "--seed", "0",
                 "--steps", str(STEPS), "--guidance-scale", str(CFG), "--out", str(out), *args]) == 0
    return np.asarray(Image.open(out)).astype(int)


def test_sd_img2img_starts_where_diffusers_does():
    """diffusers' get_timesteps truncates strength x steps (init_timestep = int(10 x 0.75) = 7: start at step 3);
    condiff's own models round it (8: step 2)."""
    opts = SamplingOptions(steps=STEPS)
    assert [start_step(opts, s, truncate=True) for s in (0.5, 0.75, 0.29, 1.0, 0.05)] == [5, 3, 8, 0, 10]
    assert [start_step(opts, s) for s in (0.5, 0.75, 0.29, 1.0, 0.05)] == [5, 2, 7, 0, 10]


@pytest.mark.parametrize("strength", [0.5, 0.75, 1.0])
def test_img2img_draws_diffusers_img2img_image(sd1, inputs, tmp_path, strength):
    """x_0 a posterior sample of the VAE (the seed's first draw), x_k's noise its second, k = steps - int(strength
    steps); at strength 1 the input is noised to the first step's level (not replaced), as diffusers does."""
    image, _ = inputs
    ours = condiff_edit("img2img", sd1, image, tmp_path / "ours.png", "--strength", str(strength))
    theirs = diffusers_edit(StableDiffusionImg2ImgPipeline, sd1, strength=strength)
    assert ours.shape == (SIZE, SIZE, 3)
    assert np.abs(ours - theirs).max() <= 3
    assert ours.std() > 20  # a random model's image, not a flat one the bar could not tell apart


def test_img2img_with_an_ancestral_sampler_continues_the_seeds_generator(sd1, inputs, tmp_path):
    """Euler a's step noise follows the two draws of x_k in the same generator, in diffusers' order."""
    image, _ = inputs
    ours = condiff_edit("img2img", sd1, image, tmp_path / "ours.png", "--strength", "0.75", "--sampler", "euler_a")
    theirs = diffusers_edit(StableDiffusionImg2ImgPipeline, sd1, EulerAncestralDiscreteScheduler, strength=0.75)
    assert np.abs(ours - theirs).max() <= 3


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])
def test_repaint_draws_diffusers_inpaint_image_with_a_plain_unet(sd1, inputs, tmp_path, sampler):
    """A 4-channel UNet in StableDiffusionInpaintPipeline blends the known latent in after each step: condiff's
    RePaint with the same noise at every level, x_0 after the last step, the mask by nearest pixels, no paste-back
    (diffusers pastes nothing back). Euler a checks the third draw, spent on the masked image's latent."""
    image, mask = inputs
    ours = condiff_edit("inpaint", sd1, image, tmp_path / "ours.png", "--mask", str(mask), "--method", "repaint",
                        "--no-paste-back", "--sampler", sampler)
    scheduler = EulerAncestralDiscreteScheduler if sampler == "euler_a" else None
    theirs = diffusers_edit(StableDiffusionInpaintPipeline, sd1, scheduler, mask_image=box_mask(), height=SIZE,
                            width=SIZE)
    assert np.abs(ours - theirs).max() <= 3
    assert ours.std() > 20


def test_an_inpainting_unet_draws_diffusers_inpaint_image(sd1_inpainting, inputs, tmp_path):
    """A 9-channel UNet: x_T the seed's first draw, the masked image's latent a posterior sample (its second), the
    mask by nearest pixels; with paste-back (the default) the input's pixels outside the mask, the same inside."""
    image, mask = inputs
    ours = condiff_edit("inpaint", sd1_inpainting, image, tmp_path / "ours.png", "--mask", str(mask),
                        "--no-paste-back")
    theirs = diffusers_edit(StableDiffusionInpaintPipeline, sd1_inpainting, mask_image=box_mask(), height=SIZE,
                            width=SIZE)
    assert np.abs(ours - theirs).max() <= 3
    assert ours.std() > 20
    pasted = condiff_edit("inpaint", sd1_inpainting, image, tmp_path / "pasted.png", "--mask", str(mask))
    inside = np.asarray(box_mask()) > 0
    assert np.array_equal(pasted[~inside], np.asarray(picture()).astype(int)[~inside])
    assert np.abs(pasted[inside] - theirs[inside]).max() <= 3
