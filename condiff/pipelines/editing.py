"""Editing with a text-to-image pipeline, all through the sampler's hooks (no loop of its own):

- img2img / SDEdit (Meng et al. 2022): noise the input to the step that `strength` selects (`start`), denoise;
- RePaint inpainting (Lugmayr et al. 2022): each step, the known region is replaced by q(x_t | x_0) (`replace`),
  optionally with its resampling jumps (`Resample`); or a fine-tuned inpainting model (GLIDE) given mask= and
  masked_image=, in one plain chain;
- DDIM inversion (Song et al. 2021; Mokady et al. 2023): the eta = 0 chain run backwards, x_0 -> x_T, made exact by
  fixed-point iterations per step and, for a latent model, by inverting the decoder (`Inversion`); or EDICT's
  coupled chains (Wallace et al. 2023), whose inversion is exact by construction (`invert_coupled`).

Each works in the model's sampling space: pixels for a pixel model, the autoencoder's scaled latent otherwise.
Images are (B, 3, H, W) in [-1, 1] at the model's resolution; masks (B, 1, H, W), 1 (True) = repaint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..catalogue import DEFAULT_MODEL, INPAINT_MODEL
from ..data.masks import inpaint_inputs, latent_mask
from ..diffusion.samplers import EDICT_P, PerSampleNoise, ddim_invert, edict_invert, edict_sample
from ..diffusion.sampling import (
    Replace,
    Resample,
    Sampler,
    SamplingOptions,
    noise_to,
    plan_alpha_bars,
    sampling_timesteps,
    start_step,
)
from .text2image import EditConvention, Text2ImagePipeline

KNOWN_NOISE_SEED = 0x5EED_0F_0A  # RePaint's per-step noise of the known region: seed + this, apart from the sampler's


def to_model_space(pipe: Text2ImagePipeline, images: torch.Tensor) -> torch.Tensor:
    """x_0 of the sampler: the image itself, or its latent (the posterior mean, scaled) for a latent pipeline."""
    images = images.to(pipe.device)
    if pipe.autoencoder is None:
        return images
    with torch.no_grad():
        return pipe.autoencoder.encode(images)


def posterior_sample(pipe: Text2ImagePipeline, images: torch.Tensor, noise: PerSampleNoise) -> torch.Tensor:
    """x_0 as diffusers' SD pipelines draw it (retrieve_latents, sample_mode "sample"): image i encoded alone, its
    latent mean + std z with z the next draw of seed i's generator, scaled."""
    images = images.to(pipe.device)
    with torch.no_grad():
        return torch.cat([pipe.autoencoder.encode(images[i:i + 1], g) for i, g in enumerate(noise.generators)])


def follows_diffusers(pipe: Text2ImagePipeline) -> bool:
    return pipe.edit_convention is EditConvention.DIFFUSERS


def image_holds_layout(pipe: Text2ImagePipeline, n: int, kw: dict) -> dict:
    """A grounded model edits an image with no boxes unless given some: the input holds the layout, and a layout
    pipeline's prior would sample another (measured on layout64, img2img at 0.3 with the scene's caption: 8 of 8
    kept at 34 dB PSNR with none, 6 of 8 at 14 dB with the prior's boxes)."""
    if pipe.unet.cfg.grounding_dim and "boxes" not in kw:
        return kw | {"boxes": [[] for _ in range(n)]}
    return kw


def img2img(pipe: Text2ImagePipeline, prompts: list[str], images: torch.Tensor, seeds: list[int],
            opts: SamplingOptions, strength: float, **kw) -> torch.Tensor:
    """SDEdit: x_k ~ q(x_k | x_0) at the plan's step k = steps - round(strength steps), then the plan from k.

    strength 0 returns the input unchanged; strength 1 is text-to-image from the seeds' noise (exactly).
    The noise of x_k is the seed's first draw, the one text-to-image would start from.
    A pipeline that follows diffusers (Stable Diffusion) draws StableDiffusionImg2ImgPipeline's x_k instead:
    k = steps - int(strength steps), x_0 a posterior sample (the seed's first draw), x_k's noise its second draw;
    strength 1 noises x_0 to the first step's level rather than replacing it.
    """
    k = start_step(opts, strength, truncate=follows_diffusers(pipe))
    kw = image_holds_layout(pipe, len(prompts), kw)
    if k == opts.steps:
        return images.clone().cpu()
    if k == 0 and not follows_diffusers(pipe):
        return pipe(prompts, seeds, opts, **kw).cpu()
    noise = PerSampleNoise(seeds)
    x0 = posterior_sample(pipe, images, noise) if follows_diffusers(pipe) else to_model_space(pipe, images)
    x_k = noise_to(x0, noise(x0.shape, x0.device), plan_alpha_bars(pipe.schedule, opts)[k])
    with torch.no_grad():
        return pipe.decode(pipe.denoise(prompts, seeds, opts, x=x_k, noise=noise, start=k, **kw)).cpu()


def repaint(pipe: Text2ImagePipeline, prompts: list[str], images: torch.Tensor, masks: torch.Tensor,
            seeds: list[int], opts: SamplingOptions, paste_back: bool = True, resample: Resample | None = None,
            **kw) -> torch.Tensor:
    """RePaint: after each step, x = m x + (1 - m) q(x_level | x_0) with fresh noise, m the mask; with `resample`,
    blocks of steps are taken back up by forward noise and denoised again (RePaint's jumps), which lets the
    generated region agree with the known one. A pipeline that follows diffusers draws its known region as
    StableDiffusionInpaintPipeline does for a 4-channel UNet (`known_as_diffusers`).

    paste_back: the output outside the mask is the input's pixels exactly (a latent model's decoder blurs the seam
    and shifts the known region slightly; see `leakage`).
    """
    kw = image_holds_layout(pipe, len(prompts), kw)
    replace, start = (known_as_diffusers if follows_diffusers(pipe) else known_fresh)(pipe, images, masks, seeds, opts)
    with torch.no_grad():
        out = pipe.decode(pipe.denoise(prompts, seeds, opts, replace=replace, resample=resample, **start, **kw)).cpu()
    return paste(out, images, masks) if paste_back else out


def replace_known(x0: torch.Tensor, m: torch.Tensor, eps: Callable[[], torch.Tensor], clean: float) -> Replace:
    """RePaint's step: x = m x + (1 - m) q(x_level | x_0) with noise eps(), or x_0 itself from the level `clean` on."""

    def replace(x, level):
        known = x0 if level >= clean else noise_to(x0, eps(), level)
        return m * x + (1 - m) * known

    return replace


def known_fresh(pipe: Text2ImagePipeline, images: torch.Tensor, masks: torch.Tensor, seeds: list[int],
                opts: SamplingOptions) -> tuple[Replace, dict]:
    """RePaint's known region: x_0 the posterior mean, fresh noise at each level (seed + KNOWN_NOISE_SEED, apart
    from the sampler's), the mask max-pooled to the latent grid; x_T the seeds' own."""
    x0 = to_model_space(pipe, images)
    known_noise = PerSampleNoise([s + KNOWN_NOISE_SEED for s in seeds])
    m = latent_mask(masks.to(pipe.device), x0.shape)
    return replace_known(x0, m, lambda: known_noise(x0.shape, x0.device, x0.dtype), 1.0), {}


def known_as_diffusers(pipe: Text2ImagePipeline, images: torch.Tensor, masks: torch.Tensor, seeds: list[int],
                       opts: SamplingOptions) -> tuple[Replace, dict]:
    """StableDiffusionInpaintPipeline's with a 4-channel UNet (strength 1): x_0 a posterior sample (the seed's first
    draw), x_T its second draw and also the known region's noise at every level, the third spent as diffusers spends
    it; x_0 itself after the last step, the mask taken to the latent grid by its nearest pixels."""
    noise = PerSampleNoise(seeds)
    x0 = posterior_sample(pipe, images, noise)  # (B, C, h, w)
    x_T = noise(x0.shape, x0.device)
    noise(x0.shape)  # diffusers' draw for the masked image's latent, which a 4-channel UNet does not read
    m = latent_mask(masks.to(pipe.device), x0.shape, nearest=True)
    return replace_known(x0, m, lambda: x_T, plan_alpha_bars(pipe.schedule, opts)[-1]), {"x": x_T, "noise": noise}


def paste(out: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The input's pixels outside the mask, the edit's inside."""
    m = masks.float().cpu()
    return m * out.cpu() + (1 - m) * images.cpu()


def inpaint_model(pipe: Text2ImagePipeline, prompts: list[str], images: torch.Tensor, masks: torch.Tensor,
                  seeds: list[int], opts: SamplingOptions, paste_back: bool = True, **kw) -> torch.Tensor:
    """GLIDE's way: a model fine-tuned with mask= and masked_image= inputs draws the hole in one plain chain.

    A pipeline that follows diffusers draws StableDiffusionInpaintPipeline's inputs (strength 1): x_T the seed's first
    draw, the masked image's latent a posterior sample (its second), the mask taken to the latent grid by its nearest
    pixels."""
    if not pipe.inpainting:
        raise ValueError("this model has no inpainting inputs (mask, masked image); use RePaint or an inpainting model")
    kw = image_holds_layout(pipe, len(prompts), kw)
    if follows_diffusers(pipe):
        noise = PerSampleNoise(seeds)
        x_T = noise((len(seeds), *pipe.sample_shape), pipe.device)
        cond = inpaint_inputs(images.to(pipe.device), masks.to(pipe.device),
                              lambda masked: posterior_sample(pipe, masked, noise), nearest=True)
        kw |= cond | {"x": x_T, "noise": noise}
    else:
        kw |= pipe.inpaint_conditioning(images, masks)
    with torch.no_grad():
        out = pipe.decode(pipe.denoise(prompts, seeds, opts, **kw)).cpu()
    return paste(out, images, masks) if paste_back else out


INPAINT_METHODS = ("auto", "model", "repaint")


def inpainting_pipeline(pipe: Text2ImagePipeline, folder: Path, method: str = "auto") -> Text2ImagePipeline:
    """The pipeline that inpaints for `pipe` (loaded from `folder`): itself if it has inpainting inputs or the method
    is RePaint; for the shipped default, the shipped inpainting model where it is installed (as A1111 switches to an
    inpainting checkpoint); else itself."""
    if pipe.inpainting or method == "repaint" or Path(folder).resolve() != DEFAULT_MODEL or not INPAINT_MODEL.is_dir():
        return pipe
    return Text2ImagePipeline.from_pretrained(INPAINT_MODEL).to(pipe.device)


def inpaint(pipe: Text2ImagePipeline, prompts: list[str], images: torch.Tensor, masks: torch.Tensor, seeds: list[int],
            opts: SamplingOptions, method: str = "auto", **kw) -> tuple[torch.Tensor, str]:
    """Inpainting by `method`: 'model' (a fine-tuned inpainting model), 'repaint' (any model), or 'auto' (the model's
    own inputs where it has them). Returns the images and the method's name for the infotext."""
    if method not in INPAINT_METHODS:
        raise ValueError(f"method: unknown value {method!r} (known: {', '.join(INPAINT_METHODS)})")
    if method == "model" or (method == "auto" and pipe.inpainting):
        kw.pop("resample", None)
        return inpaint_model(pipe, prompts, images, masks, seeds, opts, **kw), "inpainting model"
    return repaint(pipe, prompts, images, masks, seeds, opts, **kw), "RePaint"


def leakage(images: torch.Tensor, edited: torch.Tensor, masks: torch.Tensor) -> float:
    """PSNR in dB (pixels in [-1, 1] as 0..255) of the edited image against the input outside the mask."""
    keep = ~masks.bool().expand_as(images)
    a = ((images.clamp(-1, 1) + 1) * 127.5)[keep]
    b = ((edited.clamp(-1, 1) + 1) * 127.5)[keep]
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def inversion_options(opts: SamplingOptions) -> SamplingOptions:
    """DDIM inversion runs the deterministic DDIM chain without clipping: sampler ddim, eta 0, threshold none."""
    return opts.replace(sampler=Sampler.DDIM, eta=0.0, threshold="none")


@dataclass
class Inversion:
    """How exactly x_0 -> x_T is inverted. The plain DDIM inversion (both 0) is off by eps's one-step lag, and a
    latent model's round trip cannot beat its autoencoder's D(E(x)). fixed_point_iters solves each step for the x_t
    whose DDIM step lands on x_{t'} (samplers.ddim_invert); decoder_steps fits the latent z by Adam on
    |D(z) - x|^2 from E(x) (decoder inversion, Hong et al. 2024, "On exact inversion of DPM-solvers"), so that the
    chain starts from a latent that decodes to the image itself. Measured (docs/editing.md, benchmarks/inversion.py)
    the decoder fit lowers the round trip's PSNR, drawn or rendered scenes alike: the fitted latent leaves the
    encoder's distribution that the UNet learned, so it is off by default."""
    fixed_point_iters: int = 2
    decoder_steps: int = 0
    decoder_lr: float = 0.03

    def __post_init__(self):
        if self.fixed_point_iters < 0 or self.decoder_steps < 0 or not self.decoder_lr > 0:
            raise ValueError(f"inversion: fixed-point iterations and decoder steps must be >= 0 and the decoder's "
                             f"learning rate > 0, got {self.fixed_point_iters}, {self.decoder_steps}, {self.decoder_lr}")


PLAIN_INVERSION = Inversion(0, 0)  # Song et al.'s DDIM inversion as it is
EDICT_DECODER_STEPS = 50  # decoder-fit steps before EDICT on condiff's models (docs/editing.md: 42-47 dB latents)


def fit_latent(pipe: Text2ImagePipeline, images: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """z minimising |D(z) - x|^2, from z = E(x) by `steps` Adam steps through the decoder (a pixel model: x)."""
    z0 = to_model_space(pipe, images)
    if pipe.autoencoder is None or steps == 0:
        return z0
    x = images.to(pipe.device)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = (pipe.autoencoder.decode(z) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return z.detach()


def inversion_model(pipe: Text2ImagePipeline, prompts: list[str], opts: SamplingOptions):
    """The inversion's options and the guided eps model its chains run, in both directions: a grounded model sees no
    boxes (the image holds the layout)."""
    opts = inversion_options(opts)
    return opts, pipe.guided_model(prompts, opts, *pipe.grounding_keywords(None, len(prompts)))


def invert(pipe: Text2ImagePipeline, prompts: list[str], images: torch.Tensor, opts: SamplingOptions,
           how: Inversion = Inversion()) -> torch.Tensor:
    """x_T of the eta = 0 DDIM chain (with the prompts' classifier-free guidance) that ends at the images."""
    opts, model = inversion_model(pipe, prompts, opts)
    z = fit_latent(pipe, images, how.decoder_steps, how.decoder_lr)
    with torch.no_grad():
        return ddim_invert(model, z, pipe.schedule, sampling_timesteps(pipe.schedule, opts), how.fixed_point_iters)


def invert_coupled(pipe: Text2ImagePipeline, prompts: list[str], images: torch.Tensor, opts: SamplingOptions,
                   p: float = EDICT_P, decoder_steps: int = 0, decoder_lr: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """EDICT's pair (x_T, y_T) from which `regenerate_coupled` gives the images back, exact up to float rounding
    (the guided eps, at the plan's DDIM steps, two model calls a step). Being exact for any latent, it keeps what
    the decoder fit gains (`fit_latent`), which a chain that is only exact near the data cannot."""
    opts, model = inversion_model(pipe, prompts, opts)
    z = fit_latent(pipe, images, decoder_steps, decoder_lr)
    with torch.no_grad():
        return edict_invert(model, z, pipe.schedule, sampling_timesteps(pipe.schedule, opts), p)


def regenerate_coupled(pipe: Text2ImagePipeline, prompts: list[str], noise: tuple[torch.Tensor, torch.Tensor],
                       opts: SamplingOptions, p: float = EDICT_P) -> torch.Tensor:
    """EDICT's coupled chains from an inverted pair, perhaps under other prompts (the edit); the image of x."""
    opts, model = inversion_model(pipe, prompts, opts)
    x_T, y_T = (z.to(pipe.device) for z in noise)
    with torch.no_grad():
        x, _ = edict_sample(model, x_T, y_T, pipe.schedule, sampling_timesteps(pipe.schedule, opts), p)
        return pipe.decode(x).cpu()


def regenerate(pipe: Text2ImagePipeline, prompts: list[str], x_T: torch.Tensor, opts: SamplingOptions,
               seeds: list[int] | None = None) -> torch.Tensor:
    """The DDIM chain from a given x_T (e.g. from `invert`, perhaps under another prompt). A grounded model sees no
    boxes, as `invert` did (a layout pipeline would otherwise sample a new layout, which the inverted x_T does not hold)."""
    opts = inversion_options(opts)
    seeds = seeds if seeds is not None else list(range(len(prompts)))
    kw = image_holds_layout(pipe, len(prompts), {})
    with torch.no_grad():
        return pipe.decode(pipe.denoise(prompts, seeds, opts, x=x_T.to(pipe.device), **kw)).cpu()

