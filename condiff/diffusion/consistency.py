"""Consistency distillation of a guided teacher (Song et al. 2023, "Consistency models"; Luo et al. 2023, "Latent
consistency models", LCM), and the multistep consistency sampler.

The student stays an eps-model under the one denoiser contract; its consistency function is
f_theta(x_t, t) = x0_hat(x_t, t) = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t). LCM's boundary
scalings (c_skip, c_out with sigma_data 0.5 and timestep scale 10) give c_skip < 1e-5 at every grid step but t = 0,
where x0_hat(x_0, 0) already differs from x_0 by sqrt(1 - alpha_bar_0) eps (0.006 on the cosine schedule): they are
left out, so img2img, inversion and every sampler still read the distilled model as a plain one.

The grid is the teacher's DDIM grid of GRID_STEPS leading timesteps (0, 20, ..., 980 on T = 1000; the cosine
schedule's t = 999 has sqrt(alpha_bar) = 5e-5, so x0_hat there is noise); one teacher DDIM step joins neighbours
(LCM's skipping step k = T / GRID_STEPS).
"""
from __future__ import annotations

import torch

from .denoiser import x0_from_eps
from .samplers import step_hook
from .schedule import NoiseSchedule, Spacing, _gather

GRID_STEPS = 50  # LCM's N (original_inference_steps): the teacher's DDIM grid the student is distilled on


def consistency_grid(schedule: NoiseSchedule) -> list[int]:
    """The distillation grid t_0 = 0 < t_1 < ... < t_{N-1}, ascending."""
    return sorted(schedule.timesteps(GRID_STEPS, Spacing.LEADING))


def lcm_timesteps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """`steps` descending grid timesteps for multistep sampling, evenly spaced from the grid's top (diffusers'
    LCMScheduler: the reversed grid taken every N // steps)."""
    grid = consistency_grid(schedule)[::-1]
    if not 1 <= steps <= len(grid):
        raise ValueError(f"steps: the lcm sampler takes 1 to {len(grid)} steps (its distillation grid), got {steps}")
    skip = len(grid) // steps
    return grid[::skip][:steps]


def ddim_solver_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                     eps: torch.Tensor) -> torch.Tensor:
    """Psi(x_t, t, s): one deterministic DDIM step (Song et al. 2021, eq. 12 at eta = 0) from t down to s (B,)."""
    x0_hat = x0_from_eps(schedule, x_t, t, eps)
    ab_s = _gather(schedule.alpha_bar, s, x_t)
    return ab_s.sqrt() * x0_hat + (1 - ab_s).sqrt() * eps


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """mean(sqrt((a - b)^2 + c^2) - c), elementwise (Song & Dhariwal 2023; LCM's huber_c = 0.001): L2 near 0, L1 far.
    Written d^2 / (sqrt(d^2 + c^2) + c), the same value without float32's cancellation at d << c."""
    d2 = (a.float() - b.float()) ** 2
    return (d2 / ((d2 + c ** 2).sqrt() + c)).mean()


def sample_lcm(model, x: torch.Tensor, schedule: NoiseSchedule, timesteps, noise, x0_fn=None, callback=None,
               t_end: int | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1; LCM Alg. 3): x0_hat = f(x, tau_n), then fresh noise
    to the next level, sqrt(alpha_bar) x0_hat + sqrt(1 - alpha_bar) z; the last x0_hat is the sample (or, with t_end,
    noised to t_end's level: a chain stopped part-way)."""
    ab = schedule.alpha_bar
    for i, t in enumerate(timesteps):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0_hat = x0_from_eps(schedule, x, tt, model(x, tt))
        if x0_fn is not None:  # thresholding of a pixel model
            x0_hat = x0_fn(x0_hat)
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else t_end
        if nxt is None:
            x = x0_hat
        else:
            ab_next = ab[nxt].item()
            x = ab_next ** 0.5 * x0_hat + (1 - ab_next) ** 0.5 * noise(x.shape, x.device, x.dtype)
        x = step_hook(callback, {"i": i, "t": t, "x": x, "x0_hat": x0_hat})
    return x
