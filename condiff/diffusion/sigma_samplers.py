"""Samplers in the sigma parameterisation of Karras et al. 2022 (x = x0 + sigma eps), over a discrete eps model.

Each sampler is sample_X(denoise, x, sigmas, noise=None, callback=None) -> x0, with denoise(x, sigma) -> x0_hat
and sigmas descending to 0 (k-diffusion's contract); a tensor the callback returns replaces x (samplers.step_hook). SigmaDenoiser adapts the one eps-model contract to it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .samplers import step_hook
from .schedule import NoiseSchedule
from .thresholding import X0Fn

SigmaModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def schedule_sigmas(schedule: NoiseSchedule) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), t = 0..T-1."""
    return ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()


def sigmas_at(schedule: NoiseSchedule, timesteps: Sequence[float]) -> torch.Tensor:
    """Sigmas at (possibly fractional) timesteps, linearly interpolated as diffusers does, then a final 0."""
    table = schedule_sigmas(schedule)
    t = torch.as_tensor(list(timesteps), dtype=torch.float64)
    lo = t.floor().long().clamp(0, len(table) - 1)
    hi = (lo + 1).clamp(max=len(table) - 1)
    w = t - lo
    return torch.cat([(1 - w) * table[lo] + w * table[hi], torch.zeros(1, dtype=torch.float64)])


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    """k-diffusion's get_sigmas_exponential: log sigma_i = linspace(log sigma_max, log sigma_min), then 0 (uniform logSNR)."""
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    return torch.cat([log_sigmas.exp(), torch.zeros(1, dtype=torch.float64)])


class SigmaDenoiser:
    """D(x, sigma) = x - sigma eps(x / sqrt(sigma^2 + 1), t(sigma)); k-diffusion's DiscreteEpsDDPMDenoiser.

    x0_fn (e.g. static clipping, which the DDIM/DDPM samplers use by default) acts on D: at large sigma an
    unclipped x0_hat carries the model's error times sigma.
    """

    def __init__(self, eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
                 x0_fn: X0Fn | None = None):
        self.eps_model, self.x0_fn = eps_model, x0_fn
        self.log_sigmas = schedule_sigmas(schedule).log()

    def t_of(self, sigma: float) -> float:
        """Timestep of a sigma by interpolation in log sigma (exact on the schedule's own sigmas)."""
        log_s = math.log(sigma)
        idx = int(torch.searchsorted(self.log_sigmas, torch.tensor(log_s, dtype=torch.float64)).clamp(1, len(self.log_sigmas) - 1))
        lo, hi = self.log_sigmas[idx - 1].item(), self.log_sigmas[idx].item()
        w = min(max((log_s - lo) / (hi - lo), 0.0), 1.0)
        return idx - 1 + w

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), self.t_of(sigma), dtype=torch.float64, device=x.device)
        eps = self.eps_model(x / math.sqrt(sigma ** 2 + 1), t)
        x0 = x - sigma * eps
        return self.x0_fn(x0) if self.x0_fn is not None else x0


def _d(x, denoised, sigma):
    """Karras eq. 4 ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def sigma_loop(denoise: SigmaModel, x, sigmas, callback, step) -> torch.Tensor:
    """The loop every sigma sampler shares: D(x, sigma_i), then `step` to sigma_{i+1}; at sigma = 0, x is D itself.

    step(x, denoised, s, s_next, memory) -> x; memory holds the previous step's D ("old") and sigma ("s_prev").
    """
    memory: dict = {}
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        denoised = denoise(x, s)
        x = denoised if s_next == 0 else step(x, denoised, s, s_next, memory)
        memory.update(old=denoised, s_prev=s)
        x = step_hook(callback, {"i": i, "sigma": s, "x": x, "x0_hat": denoised})
    return x


def sample_euler(denoise: SigmaModel, x, sigmas, noise=None, callback=None):
    """Euler's method on the probability-flow ODE (Karras Alg. 1 without the Heun correction)."""
    return sigma_loop(denoise, x, sigmas, callback, lambda x, d0, s, s_next, m: x + _d(x, d0, s) * (s_next - s))


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """sigma_down, sigma_up with sigma_down^2 + sigma_up^2 = sigma_to^2 (k-diffusion get_ancestral_step)."""
    up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - up ** 2) ** 0.5, up


def sample_euler_ancestral(denoise: SigmaModel, x, sigmas, noise=None, callback=None):
    """Euler step down to sigma_down, then fresh noise of std sigma_up."""
    def step(x, denoised, s, s_next, memory):
        down, up = ancestral_step(s, s_next)
        return x + _d(x, denoised, s) * (down - s) + noise(x.shape, x.device, x.dtype) * up
    return sigma_loop(denoise, x, sigmas, callback, step)


def sample_heun(denoise: SigmaModel, x, sigmas, noise=None, callback=None):
    """Karras Alg. 1 (deterministic Heun, 2nd order); the last step to sigma = 0 is an Euler step."""
    def step(x, denoised, s, s_next, memory):
        d = _d(x, denoised, s)
        x_euler = x + d * (s_next - s)
        d_next = _d(x_euler, denoise(x_euler, s_next), s_next)
        return x + (d + d_next) / 2 * (s_next - s)
    return sigma_loop(denoise, x, sigmas, callback, step)


def sample_dpmpp_2m(denoise: SigmaModel, x, sigmas, noise=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) with lambda = -log sigma; first order at the ends."""
    def step(x, denoised, s, s_next, memory):
        h = math.log(s) - math.log(s_next)
        d = denoised
        if "old" in memory:
            r = (math.log(memory["s_prev"]) - math.log(s)) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * memory["old"]
        return (s_next / s) * x - math.expm1(-h) * d
    return sigma_loop(denoise, x, sigmas, callback, step)


def sample_dpmpp_2m_sde(denoise: SigmaModel, x, sigmas, noise=None, callback=None):
    """DPM-Solver++(2M) SDE, eta = 1, midpoint form (diffusers 'sde-dpmsolver++', k-diffusion sample_dpmpp_2m_sde)."""
    def step(x, denoised, s, s_next, memory):
        h = math.log(s) - math.log(s_next)
        x = (s_next / s) * math.exp(-h) * x - math.expm1(-2 * h) * denoised
        if "old" in memory:  # second-order correction, r = h_last / h
            x = x - 0.5 * math.expm1(-2 * h) * (h / memory["h_last"]) * (denoised - memory["old"])
        memory["h_last"] = h
        return x + noise(x.shape, x.device, x.dtype) * s_next * (-math.expm1(-2 * h)) ** 0.5
    return sigma_loop(denoise, x, sigmas, callback, step)
