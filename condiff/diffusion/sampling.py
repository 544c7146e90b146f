"""Sampling by name: the sampler registry, step placement and dispatch over the eps-model contract."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from .samplers import PerSampleNoise, Variance, sample_ddim, sample_ddpm
from .schedule import NoiseSchedule, Spacing
from .sigma_samplers import (SigmaDenoiser, exponential_sigmas, karras_sigmas, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_euler,
                             sample_euler_ancestral, sample_heun, sigmas_at)
from .thresholding import Threshold, x0_fn_for


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
    """How sampling steps are placed: a timestep respacing (schedule.Spacing), or sigmas for the sigma samplers."""

    UNIFORM = "uniform"
    LEADING = "leading"
    TRAILING = "trailing"
    KARRAS = "karras"  # Karras et al. eq. 5, rho = 7: dense at small sigma
    EXPONENTIAL = "exponential"  # uniform in log sigma, i.e. in logSNR (DPM-Solver's "logSNR" step placement)


SIGMA_SCHEDULES = {SigmaSchedule.KARRAS: karras_sigmas, SigmaSchedule.EXPONENTIAL: exponential_sigmas}


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
    guidance_rescale: float = 0.0  # phi of Lin et al. (0: plain CFG)


SIGMA_MAX = 80.0  # EDM's sigma_max: the cosine schedule's last sigma (~2e4) wrecks 2nd-order steps (see README)


def sampling_sigmas(schedule: NoiseSchedule, opts: "SamplingOptions") -> torch.Tensor:
    """Descending sigmas ending in 0 for the sigma samplers, the largest capped at SIGMA_MAX."""
    if (placement := SIGMA_SCHEDULES.get(SigmaSchedule(opts.schedule))) is not None:
        spaced = sigmas_at(schedule, schedule.timesteps(opts.steps, Spacing.UNIFORM))
        return placement(spaced[-2].item(), min(spaced[0].item(), SIGMA_MAX), opts.steps)
    return sigmas_at(schedule, schedule.timesteps(opts.steps, Spacing(opts.schedule.value))).clamp(max=SIGMA_MAX)


def run_sampler(model, schedule: NoiseSchedule, z: torch.Tensor, noise: PerSampleNoise, opts: "SamplingOptions",
                callback=None, cond_fn=None) -> torch.Tensor:
    """Dispatch on the sampler name; z ~ N(0, I) is the initial noise, scaled as each sampler's space needs.

    cond_fn (DDPM only) shifts each posterior mean by Sigma cond_fn(x_t, t): guided-diffusion's condition_mean.
    """
    sampler, x0_fn = Sampler(opts.sampler), x0_fn_for(opts.threshold, opts.percentile)
    if cond_fn is not None and sampler is not Sampler.DDPM:
        raise ValueError("the mean form of gradient guidance needs the ddpm sampler; use the score form otherwise")
    if sampler in SIGMA_SAMPLERS:
        sigmas = sampling_sigmas(schedule, opts)
        x = z * math.sqrt(sigmas[0].item() ** 2 + 1)  # x_T = x0 + sigma_max eps has variance sigma_max^2 + 1
        return SIGMA_SAMPLERS[sampler](SigmaDenoiser(model, schedule, x0_fn), x, sigmas, noise, callback)
    if SigmaSchedule(opts.schedule) in SIGMA_SCHEDULES:
        raise ValueError(f"the {SigmaSchedule(opts.schedule).value} schedule needs a sigma sampler ({', '.join(s.value for s in SIGMA_SAMPLERS)})")
    timesteps = schedule.timesteps(opts.steps, Spacing(opts.schedule.value))
    if sampler is Sampler.DDPM:
        return sample_ddpm(model, z, schedule, timesteps, noise, x0_fn, callback, opts.ddpm_variance, cond_fn)
    return sample_ddim(model, z, schedule, timesteps, opts.eta, noise, x0_fn, callback=callback)
