"""Super-resolution: a text-conditional diffusion upsampler (GLIDE, Imagen), and the cascade of a base model and
upsamplers (`condiff generate --size 256`).

The upsampler is a pixel UNet that sees low_res= (the input, noise-augmented to the stage's level aug_t and told
it by noise_level=) concatenated to x_t; its text comes from the same frozen encoder as the base model's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..catalogue import UPSAMPLERS
from ..components import ComponentType
from ..diffusion.augment import upsample
from ..diffusion.denoiser import Denoiser, DiffusionConfig
from ..diffusion.guidance import ClassifierFreeGuidance
from ..diffusion.samplers import PerSampleNoise
from ..diffusion.sampling import SamplingOptions, sample
from .base import ComponentSpec, Pipeline, PipelineSpec, StageSpec, UpscaleSettings

UPSCALE_INPUT = 64  # `condiff upscale` and /api/upscale resize a square input to this, the shipped chain's first input
STAGE_SEED = 7919  # stage k's noise uses seed + k * STAGE_SEED: independent of the base model's noise


def upsampler_sampling() -> SamplingOptions:
    return SamplingOptions(steps=20, guidance_scale=1.0, threshold="static")


class UpsamplePipeline(Pipeline):
    kind = "upsample"

    def __init__(self, text_encoder: nn.Module, unet: nn.Module, cfg: DiffusionConfig, scale: int,
                 sampling: SamplingOptions | None = None, noise_level: int = 0):
        parts = {"text_encoder": text_encoder, "unet": unet}
        kind = ComponentType.PRETRAINED_TEXT_ENCODER if getattr(text_encoder, "frozen", False) else ComponentType.TEXT_ENCODER
        spec = PipelineSpec(self.kind, [ComponentSpec("text_encoder", kind), ComponentSpec("unet", ComponentType.UNET)],
                            [StageSpec("sr", "unet", cfg, sampling or upsampler_sampling(), UpscaleSettings(scale, noise_level))])
        super().__init__(parts, spec)
        if not unet.cfg.extra_in_channels or not unet.cfg.noise_level_embed:
            raise ValueError("upsample needs a UNet with low_res input channels and a noise-level embedding")
        self.text_encoder, self.unet, self.cfg = text_encoder, unet, cfg
        self.denoiser = Denoiser.from_config(unet, cfg)
        self.schedule = self.denoiser.schedule

    @classmethod
    def from_parts(cls, parts: dict[str, nn.Module], spec: PipelineSpec) -> "UpsamplePipeline":
        st = spec.stage("sr")
        up = st.upscale or UpscaleSettings()
        return cls(parts["text_encoder"], parts[st.unet], st.diffusion, up.scale, st.sampling, up.noise_level)

    @property
    def defaults(self) -> SamplingOptions:
        return self.spec.stage("sr").sampling

    @property
    def scale(self) -> int:
        return self.spec.stage("sr").upscale.scale

    @property
    def noise_level(self) -> int:
        return self.spec.stage("sr").upscale.noise_level

    def check(self, prompts: list[str], opts: SamplingOptions, noise_level: int | None = None) -> None:
        """ValueError, before any work, for a caption the encoder cannot read or options the stage cannot use."""
        for p in dict.fromkeys(list(prompts) + [opts.negative_prompt]):
            if p.strip():
                self.text_encoder.tokenizer.encode(p)
        self.schedule.timesteps(opts.steps)
        if noise_level is not None and (isinstance(noise_level, bool) or not isinstance(noise_level, int)
                                        or not 0 <= noise_level < self.schedule.T):
            raise ValueError(f"noise_level: must be an integer between 0 and {self.schedule.T - 1}, got {noise_level!r}")

    @torch.no_grad()
    def upscale(self, low_res: torch.Tensor, prompts: list[str], seeds: list[int], opts: SamplingOptions | None = None,
                noise_level: int | None = None, callback: Callable | None = None, steps: int | None = None) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] -> (B, 3, h scale, w scale). Image i depends on its input, prompt and seed alone:
        its generator draws the augmentation noise of the input, then x_T. An empty prompt is the unconditional model."""
        opts = opts or self.defaults
        if steps is not None:
            opts = opts.replace(steps=steps)
        level = self.noise_level if noise_level is None else noise_level
        self.check(prompts, opts, level)
        device, B = self.device, len(prompts)
        noise = PerSampleNoise(seeds)
        low = low_res.to(device).float()
        tt = torch.full((B,), level, device=device, dtype=torch.long)
        low = self.schedule.q_sample(low, tt, noise(low.shape, device))
        size = low.shape[-1] * self.scale
        cond = {"low_res": upsample(low, size), "noise_level": tt}
        c, u = self.text_encoder.encode(prompts, device), self.text_encoder.encode([opts.negative_prompt] * B, device)
        model = ClassifierFreeGuidance(self.denoiser, opts.guidance_scale, c | cond, u | cond, opts.guidance_rescale)
        x = noise((B, 3, size, size), device)
        return sample(model, self.schedule, x, noise, opts, callback)


@dataclass
class StageRun:
    """How one upsampler of a cascade samples (None: the stage's saved defaults)."""
    opts: SamplingOptions | None = None
    noise_level: int | None = None


def shipped_upsamplers(base_size: int, size: int) -> list[Path]:
    """The folders of the shipped upsampler stages that take base_size to size, one per doubling; ValueError if none."""
    if size < base_size or size & (size - 1) or base_size & (base_size - 1):
        raise ValueError(f"size: must be the model's {base_size} or a power of two above it, got {size}")
    sides = [base_size * 2 ** (k + 1) for k in range(int(math.log2(size // base_size)))]
    missing = [s for s in sides if s not in UPSAMPLERS]
    if missing:
        raise ValueError(f"size: no shipped upsampler makes {missing[0]} px (shipped: {', '.join(map(str, UPSAMPLERS))}); "
                         "give --sr-model folders")
    return [UPSAMPLERS[s] for s in sides]


def upsampler_chain(base_size: int, size: int, folders: list[str | Path] | None = None) -> list[UpsamplePipeline]:
    """The upsamplers that take base_size to size: the given folders, else the shipped stage for each doubling."""
    stages = [UpsamplePipeline.from_pretrained(f) for f in folders or shipped_upsamplers(base_size, size)]
    side = base_size
    for st in stages:
        side *= st.scale
    if side != size:
        raise ValueError(f"size: the upsamplers take {base_size} px to {side} px, not {size}")
    return stages


def cascade(images: torch.Tensor, prompts: list[str], seeds: list[int], stages: list[UpsamplePipeline],
            runs: list[StageRun] | None = None, batch_size: int = 8, progress: bool = False,
            callback: Callable | None = None) -> torch.Tensor:
    """Base images (B, 3, h, w) in [-1, 1] through every upsampler in turn; stage k uses seeds + k STAGE_SEED.
    callback: every sampler step of every stage (progress, cancellation)."""
    from tqdm.auto import tqdm

    runs = runs or [StageRun() for _ in stages]
    for k, (stage, run) in enumerate(zip(stages, runs), start=1):
        out = []
        for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc=f"upsampling x{stage.scale}", unit="batch"):
            s = [seed + k * STAGE_SEED for seed in seeds[i:i + batch_size]]
            out.append(stage.upscale(images[i:i + batch_size], prompts[i:i + batch_size], s, run.opts, run.noise_level,
                                     callback).cpu())
        images = torch.cat(out).clamp(-1, 1)
    return images
