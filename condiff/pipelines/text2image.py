"""Text -> image: text encoder, UNet and a sampler, composed; no diffusion logic of its own."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import load_json, save_json
from ..diffusion.denoiser import Denoiser, Prediction
from ..diffusion.guidance import ClassifierFreeGuidance
from ..diffusion.samplers import PerSampleNoise, Variance, sample_ddim, sample_ddpm
from ..diffusion.schedule import NoiseSchedule, ScheduleConfig, Spacing
from ..diffusion.thresholding import Threshold, x0_fn_for
from ..diffusion.sigma_samplers import (SigmaDenoiser, karras_sigmas, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_euler,
                                        sample_euler_ancestral, sample_heun, sigmas_at)
from ..io import load_component, replace_dir, save_component
from ..nets.text import TextEncoder, TextEncoderConfig
from ..nets.unet import UNet, UNetConfig

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "weights" / "base32"


class Sampler(str, enum.Enum):
    """Sampler names as in diffusers / A1111 (description: their name there)."""

    DDPM = "ddpm"
    DDIM = "ddim"
    EULER = "euler"
    EULER_A = "euler_a"
    HEUN = "heun"
    DPMPP_2M = "dpmpp_2m"
    DPMPP_2M_SDE = "dpmpp_2m_sde"


SAMPLER_INFO = {
    Sampler.DDPM: ("DDPM", "ancestral, posterior variance beta_tilde (Ho et al. 2020)"),
    Sampler.DDIM: ("DDIM", "deterministic at eta = 0 (Song et al. 2021)"),
    Sampler.EULER: ("Euler", "probability-flow ODE, 1st order (Karras et al. 2022)"),
    Sampler.EULER_A: ("Euler a", "Euler with ancestral noise"),
    Sampler.HEUN: ("Heun", "2nd order ODE, 2 model calls per step (Karras et al. Alg. 1)"),
    Sampler.DPMPP_2M: ("DPM++ 2M", "DPM-Solver++ multistep, 2nd order (Lu et al. 2022)"),
    Sampler.DPMPP_2M_SDE: ("DPM++ 2M SDE", "DPM-Solver++ 2M, stochastic (midpoint)"),
}
SIGMA_SAMPLERS = {
    Sampler.EULER: sample_euler, Sampler.EULER_A: sample_euler_ancestral, Sampler.HEUN: sample_heun,
    Sampler.DPMPP_2M: sample_dpmpp_2m, Sampler.DPMPP_2M_SDE: sample_dpmpp_2m_sde,
}


class SigmaSchedule(str, enum.Enum):
    """How sampling steps are placed: a timestep respacing (schedule.Spacing) or Karras et al.'s sigmas."""

    UNIFORM = "uniform"
    LEADING = "leading"
    TRAILING = "trailing"
    KARRAS = "karras"


@dataclass
class PipelineConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: Prediction = Prediction.EPSILON


@dataclass
class SamplingOptions:
    steps: int = 50
    guidance_scale: float = 3.0
    sampler: Sampler = Sampler.DDIM
    eta: float = 0.0
    schedule: SigmaSchedule = SigmaSchedule.UNIFORM
    threshold: Threshold = Threshold.STATIC
    percentile: float = 0.995  # dynamic thresholding's p
    ddpm_variance: Variance = Variance.SMALL
    negative_prompt: str = ""


SIGMA_MAX = 80.0  # EDM's sigma_max: the cosine schedule's last sigma (~2e4) wrecks 2nd-order steps (see README)


def sampling_sigmas(schedule: NoiseSchedule, opts: "SamplingOptions") -> torch.Tensor:
    """Descending sigmas ending in 0 for the sigma samplers, the largest capped at SIGMA_MAX."""
    if SigmaSchedule(opts.schedule) is SigmaSchedule.KARRAS:
        spaced = sigmas_at(schedule, schedule.timesteps(opts.steps, Spacing.UNIFORM))
        return karras_sigmas(spaced[-2].item(), min(spaced[0].item(), SIGMA_MAX), opts.steps)
    return sigmas_at(schedule, schedule.timesteps(opts.steps, Spacing(opts.schedule.value))).clamp(max=SIGMA_MAX)


def run_sampler(model, schedule: NoiseSchedule, z: torch.Tensor, noise: PerSampleNoise, opts: "SamplingOptions",
                callback=None) -> torch.Tensor:
    """Dispatch on the sampler name; z ~ N(0, I) is the initial noise, scaled as each sampler's space needs."""
    sampler, x0_fn = Sampler(opts.sampler), x0_fn_for(opts.threshold, opts.percentile)
    if sampler in SIGMA_SAMPLERS:
        sigmas = sampling_sigmas(schedule, opts)
        x = z * math.sqrt(sigmas[0].item() ** 2 + 1)  # x_T = x0 + sigma_max eps has variance sigma_max^2 + 1
        return SIGMA_SAMPLERS[sampler](SigmaDenoiser(model, schedule, x0_fn), x, sigmas, noise, callback)
    if SigmaSchedule(opts.schedule) is SigmaSchedule.KARRAS:
        raise ValueError(f"the karras schedule needs a sigma sampler ({', '.join(s.value for s in SIGMA_SAMPLERS)})")
    timesteps = schedule.timesteps(opts.steps, Spacing(opts.schedule.value))
    if sampler is Sampler.DDPM:
        return sample_ddpm(model, z, schedule, timesteps, noise, x0_fn, callback, opts.ddpm_variance)
    return sample_ddim(model, z, schedule, timesteps, opts.eta, noise, x0_fn, callback=callback)


class Text2ImagePipeline:
    def __init__(self, text_encoder: TextEncoder, unet: UNet, cfg: PipelineConfig):
        self.text_encoder, self.unet, self.cfg = text_encoder, unet, cfg
        self.schedule = NoiseSchedule.from_config(cfg.schedule)
        self.denoiser = Denoiser(unet, self.schedule, cfg.prediction)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def resolution(self) -> int:
        return self.unet.cfg.resolution

    def to(self, device) -> "Text2ImagePipeline":
        self.text_encoder.to(device), self.unet.to(device)
        return self

    @classmethod
    def from_pretrained(cls, folder: str | Path = DEFAULT_MODEL) -> "Text2ImagePipeline":
        folder = Path(folder)
        cfg = load_json(PipelineConfig, folder / "pipeline.json")
        text = load_component(TextEncoder, TextEncoderConfig, folder / "text_encoder")
        unet = load_component(UNet, UNetConfig, folder / "unet")
        return cls(text, unet, cfg)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write all components to a temporary folder, then swap it into place."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        save_json(self.cfg, tmp / "pipeline.json")
        save_component(self.text_encoder, self.text_encoder.cfg, tmp / "text_encoder", dtype)
        save_component(self.unet, self.unet.cfg, tmp / "unet", dtype)
        replace_dir(tmp, folder)

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.text_encoder.encode(prompts, self.device)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], opts: SamplingOptions = SamplingOptions(),
                 callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """One image per (prompt, seed): (B, 3, H, W) in [-1, 1]. Image i depends only on prompts[i], seeds[i]."""
        assert len(prompts) == len(seeds)
        cond = self.encode(prompts)
        model = ClassifierFreeGuidance(self.denoiser, opts.guidance_scale, cond,
                                       self.encode([opts.negative_prompt] * len(prompts)))
        noise = PerSampleNoise(seeds)
        z = noise((len(seeds), 3, self.resolution, self.resolution), self.device)
        return run_sampler(model, self.schedule, z, noise, opts, callback)

    def generate(self, prompts: list[str], seeds: list[int], opts: SamplingOptions = SamplingOptions(),
                 batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Like __call__, in batches; (B, 3, H, W) on the CPU."""
        from tqdm.auto import tqdm

        out = []
        for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="generating", unit="batch"):
            out.append(self(prompts[i:i + batch_size], seeds[i:i + batch_size], opts).cpu())
        return torch.cat(out)
