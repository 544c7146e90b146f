"""Discrete noise schedules (DDPM, improved DDPM) and the forward process q(x_t | x_0)."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch


class BetaSchedule(str, enum.Enum):
    LINEAR = "linear"
    COSINE = "cosine"
    SCALED_LINEAR = "scaled_linear"  # Stable Diffusion's: sqrt(beta) linear (diffusers' name)


class Spacing(str, enum.Enum):
    UNIFORM = "uniform"  # improved DDPM's respacing: evenly spaced, first and last step included
    LEADING = "leading"  # diffusers' 'leading': 0, k, 2k, ... (DDIM paper)
    TRAILING = "trailing"  # diffusers' 'trailing': T-1, T-1-k, ... (Lin et al. 2023)
    PROGRESSIVE = "progressive"  # progressive distillation's grid: top k / steps, k = 1..steps (top below T - 1)


PROGRESSIVE_TOP = 0.96  # the progressive grid's first step, a fraction of T: on the cosine schedule t = 999 has
# sqrt(alpha_bar) = 5e-5, where an eps-model's x0_hat (what a distilled step must be right about) is noise; at 960
# it is 0.06. 960 = 2^6 x 15, so the grids of 1, 2, 4, ..., 64 steps nest on T = 1000.


def linear_betas(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: beta_t linear from beta_1 to beta_T (scaled to T as in improved DDPM)."""
    scale = 1000 / T
    return torch.linspace(scale * beta_1, scale * beta_T, T, dtype=torch.float64)


def scaled_linear_betas(T: int, beta_1: float = 0.00085, beta_T: float = 0.012) -> torch.Tensor:
    """Latent diffusion / Stable Diffusion: sqrt(beta_t) linear from sqrt(beta_1) to sqrt(beta_T), computed in float32
    as diffusers' schedulers do (so its betas are theirs to the bit)."""
    return (torch.linspace(beta_1 ** 0.5, beta_T ** 0.5, T, dtype=torch.float32) ** 2).double()


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2)."""
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    return torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(T)], dtype=torch.float64)


@dataclass
class ScheduleConfig:
    num_timesteps: int = 1000
    beta_schedule: BetaSchedule = BetaSchedule.COSINE
    beta_start: float | None = None  # linear / scaled_linear: beta_1 and beta_T (None: the family's defaults)
    beta_end: float | None = None
    steps_offset: int = 0  # added to 'leading' timesteps (Stable Diffusion's configs: 1)
    set_alpha_to_one: bool = True  # DDIM's last step goes to alpha_bar = 1; False: to alpha_bar_0 (SD's configs)


class NoiseSchedule:
    """Precomputed alpha_bar and posterior coefficients for t = 0..T-1 (float64)."""

    def __init__(self, betas: torch.Tensor, steps_offset: int = 0, set_alpha_to_one: bool = True):
        self.betas = betas.double()
        self.steps_offset = steps_offset
        self.T = len(betas)
        self.alphas = 1 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.posterior_variance = self.betas * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)  # beta_tilde
        # log beta_tilde with beta_tilde_0 = 0 replaced by beta_tilde_1 (improved DDPM)
        self.posterior_log_variance_clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]).log()
        self.final_alpha_bar = 1.0 if set_alpha_to_one else self.alpha_bar[0].item()  # where DDIM's last step goes

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> "NoiseSchedule":
        kind = BetaSchedule(cfg.beta_schedule)
        ends = (cfg.beta_start, cfg.beta_end) if None not in (cfg.beta_start, cfg.beta_end) else ()
        if kind is BetaSchedule.COSINE:
            betas = cosine_betas(cfg.num_timesteps)
        elif kind is BetaSchedule.SCALED_LINEAR:
            betas = scaled_linear_betas(cfg.num_timesteps, *ends)
        elif ends:  # diffusers' 'linear' with explicit ends: no rescaling by 1000 / T
            betas = torch.linspace(*ends, cfg.num_timesteps, dtype=torch.float32).double()
        else:
            betas = linear_betas(cfg.num_timesteps)
        return cls(betas, cfg.steps_offset, cfg.set_alpha_to_one)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Eq. 4 of Ho et al.: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        ab = _gather(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Eq. 7 of Ho et al.: mean and variance beta_tilde_t of q(x_{t-1} | x_t, x_0)."""
        ab, ab_prev, beta = (_gather(a, t, x0) for a in (self.alpha_bar, self.alpha_bar_prev, self.betas))
        mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * x_t
        return mean, _gather(self.posterior_variance, t, x0)

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at (possibly fractional) t: 1 / (1 + sigma(t)^2), log sigma interpolated linearly.

        Exact at integer t; at fractional t it is the noise level the sigma samplers show the model.
        """
        log_sigma = 0.5 * ((1 - self.alpha_bar) / self.alpha_bar).log()
        t = t.double().cpu().clamp(0, self.T - 1)
        lo = t.floor().long().clamp(max=self.T - 2)
        w = t - lo
        sigma = ((1 - w) * log_sigma[lo] + w * log_sigma[lo + 1]).exp()
        return 1 / (1 + sigma ** 2)

    def timesteps(self, steps: int, spacing: Spacing = Spacing.UNIFORM) -> list[int]:
        """Descending sampling timesteps, a subset of 0..T-1 of length `steps` (respacing)."""
        T, spacing = self.T, Spacing(spacing)
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be between 1 and {T}, got {steps}")
        if spacing is Spacing.UNIFORM:
            ts = [round(i * (T - 1) / max(steps - 1, 1)) for i in range(steps)]
        elif spacing is Spacing.LEADING:
            ts = [min(i * (T // steps) + self.steps_offset, T - 1) for i in range(steps)]
        elif spacing is Spacing.PROGRESSIVE:
            ts = [round(k * round(PROGRESSIVE_TOP * T) / steps) for k in range(1, steps + 1)]
        else:
            ts = [round(T - i * T / steps) - 1 for i in range(steps)][::-1]
        return sorted(set(ts), reverse=True)


def _gather(a: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """a[t] reshaped to broadcast against `like` (B, ...)."""
    out = a.to(like.device)[t.long()].to(like.dtype)
    return out.view(-1, *([1] * (like.ndim - 1)))
