"""Text -> image: text encoder, UNet and a sampler, composed (and an autoencoder's decoder for latent diffusion).

No diffusion logic of its own: the denoiser contract, guidance wrappers and `diffusion.sampling.sample` do the work.
"""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..catalogue import DEFAULT_MODEL
from ..components import ComponentType
from ..data.masks import inpaint_inputs
from ..diffusion.denoiser import Denoiser, DiffusionConfig
from ..diffusion.guidance import ClassifierFreeGuidance
from ..diffusion.samplers import PerSampleNoise, Variance
from ..diffusion.sampling import Replace, Resample, SamplingOptions, sample
from ..diffusion.thresholding import Threshold
from ..nets.grounding import grounding_inputs
from .base import ComponentSpec, Pipeline, PipelineSpec, StageSpec

Guide = Callable[..., tuple]
PipelineConfig = DiffusionConfig  # the name of the first releases


def default_sampling(latent: bool) -> SamplingOptions:
    """A new model's saved sampler settings. Latents are not in [-1, 1]: no x0 clipping, and 'leading' spacing, whose
    first step (t = 980 of 1000 at 50 steps) is well-conditioned without it; 'uniform' starts at t = 999, where the
    cosine schedule's alpha_bar = 2.4e-9 multiplies the error of x0_hat by 2e4 (measured: accuracy 0 against 0.48)."""
    return SamplingOptions(threshold="none", schedule="leading") if latent else SamplingOptions()


class EditConvention(str, enum.Enum):
    """How img2img and inpainting (pipelines/editing.py) draw their start from a strength, an image and a seed. The
    model's pipeline decides: condiff's own models keep CONDIFF; Stable Diffusion draws what diffusers' pipelines do."""

    CONDIFF = "condiff"  # k = steps - round(strength steps); x_0 the posterior mean; latent mask max-pooled
    DIFFUSERS = "diffusers"  # k = steps - int(strength steps); x_0 a posterior sample; latent mask nearest


class Text2ImagePipeline(Pipeline):
    kind = "text2image"
    edit_convention = EditConvention.CONDIFF

    @property
    def family(self) -> str:
        """What the model is, as the web page names it ('condiff layout2image'; a Stable Diffusion model: 'SD1')."""
        return f"condiff {self.kind}"

    def __init__(self, text_encoder: nn.Module, unet: nn.Module, cfg: DiffusionConfig,
                 autoencoder: nn.Module | None = None, sampling: SamplingOptions | None = None):
        parts = {"text_encoder": text_encoder, "unet": unet} | ({"autoencoder": autoencoder} if autoencoder else {})
        types = {name: ComponentType(name) for name in parts}
        if getattr(text_encoder, "frozen", False):
            types["text_encoder"] = ComponentType.PRETRAINED_TEXT_ENCODER
        spec = PipelineSpec(self.kind, [ComponentSpec(name, types[name]) for name in parts],
                            [StageSpec("base", "unet", cfg, sampling or default_sampling(autoencoder is not None))])
        super().__init__(parts, spec)
        self.text_encoder, self.unet, self.autoencoder, self.cfg = text_encoder, unet, autoencoder, cfg
        self.denoiser = Denoiser.from_config(unet, cfg)
        self.schedule = self.denoiser.schedule

    @classmethod
    def from_parts(cls, parts: dict[str, nn.Module], spec: PipelineSpec) -> "Text2ImagePipeline":
        base = spec.stage("base")
        return cls(parts["text_encoder"], parts[base.unet], base.diffusion, parts.get("autoencoder"), base.sampling)

    @classmethod
    def from_pretrained(cls, folder: str | Path = DEFAULT_MODEL, prediction: str | None = None) -> "Text2ImagePipeline":
        """A condiff model folder, or a Stable Diffusion diffusers folder / single file (prediction: the file's)."""
        return super().from_pretrained(folder, prediction)

    @property
    def defaults(self) -> SamplingOptions:
        """The base stage's sampler settings saved with the model."""
        return self.spec.stage("base").sampling

    @property
    def resolution(self) -> int:
        """Side of the images it makes (the latent side times the autoencoder's factor)."""
        return self.unet.cfg.resolution * (self.autoencoder.cfg.factor if self.autoencoder is not None else 1)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the sampler denoises: pixels, or latents."""
        side = self.unet.cfg.resolution
        return (self.unet.cfg.in_channels, side, side)

    @property
    def inpainting(self) -> bool:
        """A fine-tuned inpainting model (GLIDE): its UNet also reads mask= and masked_image=."""
        return self.unet.cfg.extra_in_channels == self.unet.cfg.in_channels + 1

    def inpaint_conditioning(self, images: torch.Tensor | None, masks: torch.Tensor | None, n: int = 1) -> dict:
        """mask= and masked_image= for an inpainting model; none given: the whole image masked, which is plain
        text-to-image (the model trains on it, with inpaint.p_full)."""
        if images is None:
            side = self.resolution
            images, masks = torch.zeros(n, 3, side, side), torch.ones(n, 1, side, side)
        encode = self.autoencoder.encode if self.autoencoder is not None else None
        with torch.no_grad():
            return inpaint_inputs(images.to(self.device), masks.to(self.device), encode)

    def check(self, prompts: list[str], opts: SamplingOptions, *other_steps: int) -> None:
        """ValueError, before any work, for a prompt the text encoder cannot read or options the model cannot use.

        other_steps: further step counts the run will use on this model's schedule (a CLIP x_T chain).
        """
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ValueError("prompt: must be a non-empty string (the empty caption is the unconditional model)")
        for p in dict.fromkeys(list(prompts) + [opts.negative_prompt]):
            self.text_encoder.tokenizer.encode(p)
        for steps in (opts.steps, *other_steps):
            self.schedule.timesteps(steps)
        if self.autoencoder is not None and opts.threshold is not Threshold.NONE:
            raise ValueError(f"threshold: {opts.threshold.value} clips x0_hat to the pixel range [-1, 1], but this "
                             "latent model denoises latents; use --threshold none (its default)")
        if opts.ddpm_variance is Variance.LEARNED and not self.cfg.learn_sigma:
            raise ValueError("ddpm_variance: learned variance needs a model trained with learn_sigma")

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.text_encoder.encode(prompts, self.device)

    def guided_model(self, prompts: list[str], opts: SamplingOptions, cond_only: dict | None = None,
                     uncond_only: dict | None = None, **cond):
        """The eps model the sampler sees: classifier-free guidance (scale 1: the plain conditional model).

        Extra keyword conditioning (low_res=, mask=, ...) goes to both branches unchanged; cond_only / uncond_only
        to one branch each (grounding boxes, and their null version).
        """
        with torch.no_grad():
            c, u = self.encode(prompts), self.encode([opts.negative_prompt] * len(prompts))
        c, u = c | cond | (cond_only or {}), u | cond | (uncond_only or {})
        return ClassifierFreeGuidance(self.denoiser, opts.guidance_scale, c, u, opts.guidance_rescale)

    def grounding(self, boxes: list[list[dict]], in_uncond: bool = False) -> tuple[dict, dict]:
        """GLIGEN keywords (cond branch, uncond branch): the boxes, and in the uncond branch the same boxes or none."""
        if not self.unet.cfg.grounding_dim:
            raise ValueError("boxes: this model has no grounding layers (train it with a \"grounding\" config)")
        slots = self.unet.cfg.grounding_max_boxes
        if max(len(b) for b in boxes) > slots:
            raise ValueError(f"boxes: this model takes at most {slots} boxes an image, got {max(len(b) for b in boxes)}")
        g = grounding_inputs(self.encode, boxes, slots, self.device)
        return g, g if in_uncond else g | {"box_mask": torch.zeros_like(g["box_mask"])}

    def grounding_keywords(self, boxes: list[list[dict]] | None, n: int, in_uncond: bool = False) -> tuple[dict, dict]:
        """`grounding`'s keywords, or none for a plain model given no boxes; a grounded model given no boxes sees
        null tokens, as it was trained to."""
        if boxes is None and self.unet.cfg.grounding_dim:
            boxes = [[] for _ in range(n)]
        return self.grounding(boxes, in_uncond) if boxes is not None else ({}, {})

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """What the sampler made -> image in [-1, 1]-ish: the autoencoder's decoder for latents, else itself."""
        return self.autoencoder.decode(x) if self.autoencoder is not None else x

    @torch.no_grad()
    def denoise(self, prompts: list[str], seeds: list[int], opts: SamplingOptions, callback=None,
                guide: Guide | None = None, init: Callable | None = None, x: torch.Tensor | None = None,
                start: int = 0, replace: Replace | None = None, boxes: list[list[dict]] | None = None,
                boxes_in_uncond: bool = False, resample: Resample | None = None, cond_only: dict | None = None,
                uncond_only: dict | None = None, noise: PerSampleNoise | None = None, **cond) -> torch.Tensor:
        """The sampler's output before decoding. x (default: noise from the seeds) is the sample at step `start`;
        noise: the seeds' generators, already drawn from (default: fresh ones).

        boxes: per image a list of {"phrase", "box": [x0, y0, x1, y1]} (grounding); the unconditional branch of CFG
        sees none of them unless boxes_in_uncond. A grounded model given no boxes sees only null tokens.

        guide(model, schedule, prompts) -> (model, cond_fn) wraps the model further (classifier or CLIP guidance).
        init(model, schedule, x_T, prompts) -> x_T replaces the initial noise (CLIP-optimised x_T), given the CFG model.
        """
        assert len(prompts) == len(seeds)
        if self.inpainting and "mask" not in cond:
            cond |= self.inpaint_conditioning(None, None, len(prompts))
        g_cond, g_uncond = self.grounding_keywords(boxes, len(prompts), boxes_in_uncond)
        g_cond, g_uncond = g_cond | (cond_only or {}), g_uncond | (uncond_only or {})  # e.g. unCLIP's embedding
        model, cond_fn = self.guided_model(prompts, opts, g_cond, g_uncond, **cond), None
        noise = noise if noise is not None else PerSampleNoise(seeds)
        if x is None:
            x = noise((len(seeds), *self.sample_shape), self.device)
        latent = {"decode": self.autoencoder.decode} if self.autoencoder is not None else {}  # judges read pixels
        if init is not None:
            x = init(model, self.schedule, x, prompts, **latent)
        if guide is not None:
            model, cond_fn = guide(model, self.schedule, prompts, **latent)
        return sample(model, self.schedule, x, noise, opts, callback, cond_fn, start=start, replace=replace,
                      resample=resample)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], opts: SamplingOptions | None = None,
                 callback: Callable[[dict], None] | None = None, guide: Guide | None = None,
                 init: Callable | None = None, x: torch.Tensor | None = None, **grounding) -> torch.Tensor:
        """One image per (prompt, seed): (B, 3, H, W) in [-1, 1]. Image i depends only on prompts[i], seeds[i]
        (and its boxes=, boxes_in_uncond=, for a grounded model). x: the initial noise instead of the seeds'."""
        opts = opts or self.defaults
        return self.decode(self.denoise(prompts, seeds, opts, callback, guide, init, x=x, **grounding))

    def generate(self, prompts: list[str], seeds: list[int], opts: SamplingOptions | None = None,
                 batch_size: int = 64, progress: bool = False, guide: Guide | None = None,
                 init: Callable | None = None, boxes: list[list[dict]] | None = None,
                 boxes_in_uncond: bool = False, x: torch.Tensor | None = None) -> torch.Tensor:
        """Like __call__, in batches; (B, 3, H, W) on the CPU. x: (B, C, h, w) initial noise (e.g. DDIM-inverted)."""
        from tqdm.auto import tqdm

        out = []
        for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="generating", unit="batch"):
            g = {} if boxes is None else {"boxes": boxes[i:i + batch_size], "boxes_in_uncond": boxes_in_uncond}
            if x is not None:
                g["x"] = x[i:i + batch_size].to(self.device)
            out.append(self(prompts[i:i + batch_size], seeds[i:i + batch_size], opts, guide=guide, init=init, **g).cpu())
        return torch.cat(out)
