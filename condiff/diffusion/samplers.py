"""Samplers as pure functions over the denoiser contract eps_hat = model(x_t, t)."""
from __future__ import annotations

import enum
import math
from typing import Callable, Sequence

import torch

from .denoiser import eps_from_x0, x0_from_eps
from .schedule import NoiseSchedule
from .thresholding import X0Fn, static_threshold

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None]
CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def step_hook(callback: Callback | None, info: dict) -> torch.Tensor:
    """Call the per-step callback with info (which holds the new x); a tensor it returns replaces x (RePaint's hook)."""
    out = callback(info) if callback is not None else None
    return info["x"] if out is None else out


class PerSampleNoise:
    """Gaussian noise drawn from one generator per image, so an image depends on its seed alone."""

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, shape: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        """Noise of shape (B, ...) with B = number of seeds, in dtype (default: torch's default dtype)."""
        assert shape[0] == len(self.generators), "one seed per image"
        dtype = dtype or torch.get_default_dtype()
        z = torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in self.generators])
        return z.to(device=device)


def _predict(model: Model, schedule: NoiseSchedule, x, t: int, x0_fn: X0Fn | None, learned_variance: bool = False):
    """eps_hat, x0_hat (and v of a learned variance) at t; x0_fn acts on x0_hat and eps_hat is made consistent."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps, v = model(x, tt, return_variance=True) if learned_variance else (model(x, tt), None)
    x0 = x0_from_eps(schedule, x, tt, eps)
    if x0_fn is not None:
        x0 = x0_fn(x0)
        eps = eps_from_x0(schedule, x, tt, x0)
    return eps, x0, v


def _alpha_bar_after(ab: torch.Tensor, timesteps: Sequence[int], i: int, t_end: int | None,
                     final: float = 1.0) -> float:
    """alpha_bar of the level step i goes to: the next timestep, else t_end's, else `final` (1: clean)."""
    if i + 1 < len(timesteps):
        return ab[timesteps[i + 1]].item()
    return ab[t_end].item() if t_end is not None else final


def sample_ddim(model: Model, x: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int],
                eta: float = 0.0, noise: PerSampleNoise | None = None, x0_fn: X0Fn | None = static_threshold,
                callback: Callback | None = None, t_end: int | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) over descending timesteps; eta=1 is DDPM's posterior variance.

    t_end: the timestep the last step goes to (None: t = -1, the clean image, at the schedule's final_alpha_bar: 1, or
    alpha_bar_0 for Stable Diffusion's set_alpha_to_one=False), for a chain stopped part-way."""
    ab = schedule.alpha_bar
    for i, t in enumerate(timesteps):
        eps, x0, _ = _predict(model, schedule, x, t, x0_fn)
        ab_t = ab[t].item()
        ab_prev = _alpha_bar_after(ab, timesteps, i, t_end, schedule.final_alpha_bar)
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
        x = ab_prev ** 0.5 * x0 + (1 - ab_prev - sigma ** 2) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise(x.shape, x.device, x.dtype)
        x = step_hook(callback, {"i": i, "t": t, "x": x, "x0_hat": x0})
    return x


class Variance(str, enum.Enum):
    SMALL = "small"  # beta_tilde_t, the posterior variance (Ho et al. sigma_t^2 = beta_tilde_t)
    LARGE = "large"  # beta_t (Ho et al. sigma_t^2 = beta_t)
    LEARNED = "learned"  # exp(v log beta_t + (1 - v) log beta_tilde_t), v from the model (improved DDPM)


def sample_ddpm(model: Model, x: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int],
                noise: PerSampleNoise, x0_fn: X0Fn | None = static_threshold, callback: Callback | None = None,
                variance: Variance = Variance.SMALL, cond_fn: CondFn | None = None,
                t_end: int | None = None) -> torch.Tensor:
    """Ancestral sampling (Ho et al. Alg. 2): mean of the respaced posterior q(x_s | x_t, x0_hat); fixed or learned variance.

    cond_fn(x_t, t) = s grad log p(y | x_t) shifts the mean by Sigma cond_fn (Dhariwal & Nichol Alg. 1, condition_mean).
    """
    ab, variance = schedule.alpha_bar, Variance(variance)
    for i, t in enumerate(timesteps):
        x_t = x
        eps, x0, v = _predict(model, schedule, x, t, x0_fn, variance is Variance.LEARNED)
        ab_t = ab[t].item()
        ab_prev = _alpha_bar_after(ab, timesteps, i, t_end)
        beta = 1 - ab_t / ab_prev  # respaced beta_t
        mean = (ab_prev ** 0.5 * beta / (1 - ab_t)) * x0 + ((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab_t)) * x
        x = mean
        if i + 1 < len(timesteps) or t_end is not None:
            beta_tilde = beta * (1 - ab_prev) / (1 - ab_t)
            if variance is Variance.LEARNED:  # improved DDPM eq. 15 with the respaced beta and beta_tilde
                std = torch.exp(0.5 * (v * math.log(beta) + (1 - v) * math.log(beta_tilde)))
            else:
                std = (beta if variance is Variance.LARGE else beta_tilde) ** 0.5
            if cond_fn is not None:
                x = x + std ** 2 * cond_fn(x_t, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
            x = x + std * noise(x.shape, x.device, x.dtype)
        x = step_hook(callback, {"i": i, "t": t, "x": x, "x0_hat": x0})
    return x


def ddim_invert(model: Model, x0: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int],
                fixed_point_iters: int = 0) -> torch.Tensor:
    """Deterministic DDIM run backwards, x_0 -> x_T (eq. 13 of Song et al. as an ODE step).

    The plain step reads eps at the point it starts from, (x_{t'}, t'), where the DDIM step back from x_t reads it at
    (x_t, t): the round trip is off by that lag. With fixed_point_iters = k > 0 each step instead solves
    x_t = sqrt(abar_t) x0_hat(x_{t'}, eps(x_t, t)) + sqrt(1 - abar_t) eps(x_t, t), the x_t whose DDIM step lands
    exactly on x_{t'}, by k fixed-point iterations from the plain step (Pan et al. 2023, "Effective real image editing
    with accelerated iterative diffusion inversion"; ReNoise, Garibi et al. 2024): k more model calls per step."""
    ab = schedule.alpha_bar
    ascending = list(timesteps)[::-1]
    x = x0
    for i, t in enumerate(ascending):
        ab_prev = ab[ascending[i - 1]].item() if i > 0 else 1.0
        ab_t = ab[t].item()
        t_eval = ascending[i - 1] if i > 0 else t  # eps is evaluated at the current point (x_prev, t_prev)

        def step(eps: torch.Tensor, x_prev: torch.Tensor = x) -> torch.Tensor:
            x0_hat = (x_prev - (1 - ab_prev) ** 0.5 * eps) / ab_prev ** 0.5
            return ab_t ** 0.5 * x0_hat + (1 - ab_t) ** 0.5 * eps

        x_t = step(_predict(model, schedule, x, t_eval, None)[0])
        for _ in range(fixed_point_iters):
            x_t = step(_predict(model, schedule, x_t, t, None)[0])
        x = x_t
    return x


EDICT_P = 0.93  # EDICT's mixing weight p (Wallace et al. 2023: 0.93 for Stable Diffusion)


def _edict_coefficients(schedule: NoiseSchedule, timesteps: Sequence[int], i: int) -> tuple[float, float]:
    """a_t, b_t of step i's DDIM step x_{t'} = a_t x_t + b_t eps(x_t, t), from alpha_bar_t to the next level's."""
    ab_t = schedule.alpha_bar[timesteps[i]].item()
    ab_prev = _alpha_bar_after(schedule.alpha_bar, timesteps, i, None, schedule.final_alpha_bar)
    return (ab_prev / ab_t) ** 0.5, (1 - ab_prev) ** 0.5 - (ab_prev * (1 - ab_t) / ab_t) ** 0.5


def edict_sample(model: Model, x: torch.Tensor, y: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int],
                 p: float = EDICT_P) -> tuple[torch.Tensor, torch.Tensor]:
    """EDICT's coupled DDIM chains (Wallace et al. 2023, "EDICT: exact diffusion inversion via coupled
    transformations", eqs. 14-15): each step moves x with the eps of y and y with the eps of the new x, then mixes
    them with weight p. Every operation has an algebraic inverse (`edict_invert`), so the round trip is exact up to
    float rounding. Two model calls a step; x and y end at (nearly) the same image."""
    eps = lambda z, t: _predict(model, schedule, z, t, None)[0]
    for i, t in enumerate(timesteps):
        a, b = _edict_coefficients(schedule, timesteps, i)
        x_inter = a * x + b * eps(y, t)
        y_inter = a * y + b * eps(x_inter, t)
        x = p * x_inter + (1 - p) * y_inter
        y = p * y_inter + (1 - p) * x
    return x, y


def edict_invert(model: Model, x0: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int],
                 p: float = EDICT_P) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair (x_T, y_T) from which `edict_sample` ends at x0: its steps undone in reverse order (eq. 16)."""
    if not 0 < p < 1:
        raise ValueError(f"EDICT: the mixing weight p must be in (0, 1), got {p}")
    eps = lambda z, t: _predict(model, schedule, z, t, None)[0]
    timesteps = list(timesteps)
    x, y = x0, x0
    for i in reversed(range(len(timesteps))):
        t = timesteps[i]
        a, b = _edict_coefficients(schedule, timesteps, i)
        y_inter = (y - (1 - p) * x) / p
        x_inter = (x - (1 - p) * y_inter) / p
        y = (y_inter - b * eps(x_inter, t)) / a
        x = (x_inter - b * eps(y, t)) / a
    return x, y
