"""Progressive distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling of diffusion models",
Alg. 2): a student learns to take in one deterministic DDIM step what its teacher takes in two; the student then
teaches the next round, halving the steps each time.

On the progressive grid (schedule.Spacing.PROGRESSIVE) of a student of N steps, d = top / (2N) apart, level k is
timestep k d and level 0 is clean data (alpha_bar = 1). From z_t at t = 2i d the teacher's two DDIM steps reach
z_t'' at t'' = (2i - 2) d, and the student's one DDIM step lands there exactly when its x0_hat is

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar) (their eq. 8). The loss is the paper's truncated-SNR
weighting, max(alpha_t^2 / sigma_t^2, 1) |x0_hat - x~|^2. The student stays an eps-model under the one denoiser
contract; the grid tops out below T (PROGRESSIVE_TOP) because an eps-model's x0_hat at T - 1 is noise.
"""
from __future__ import annotations

import torch

from .schedule import PROGRESSIVE_TOP, NoiseSchedule


def grid_spacing(schedule: NoiseSchedule, teacher_steps: int) -> int:
    """d: the timesteps between two teacher steps; ValueError when the teacher's steps do not split the grid evenly."""
    top = round(PROGRESSIVE_TOP * schedule.T)
    if teacher_steps < 2 or teacher_steps % 2 or top % teacher_steps:
        raise ValueError(f"teacher_steps: an even number that divides {top} (2, 4, 8, 16, ...), got {teacher_steps}")
    return top // teacher_steps


def alpha_bar_at(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar at timesteps t (B,), level 0 being clean data (1.0), shaped to broadcast against `like`."""
    ab = schedule.alpha_bar.to(like.device)[t.clamp(min=0).long()].to(like.dtype)
    ab = torch.where(t.to(like.device) > 0, ab, torch.ones_like(ab))
    return ab.view(-1, *([1] * (like.ndim - 1)))


def ddim_to(schedule: NoiseSchedule, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
            eps: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step from grid level t down to s (B,); s = 0 gives the clean x0_hat."""
    ab_t, ab_s = alpha_bar_at(schedule, t, z), alpha_bar_at(schedule, s, z)
    x0_hat = (z - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_s.sqrt() * x0_hat + (1 - ab_s).sqrt() * eps


def distillation_target(schedule: NoiseSchedule, z_t: torch.Tensor, t: torch.Tensor, z_s: torch.Tensor,
                        s: torch.Tensor) -> torch.Tensor:
    """x~: the x0_hat whose single DDIM step from (z_t, t) lands on (z_s, s) (eq. 8)."""
    ab_t, ab_s = alpha_bar_at(schedule, t, z_t), alpha_bar_at(schedule, s, z_t)
    ratio = (1 - ab_s).sqrt() / (1 - ab_t).sqrt()
    return (z_s - ratio * z_t) / (ab_s.sqrt() - ratio * ab_t.sqrt())


def truncated_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """max(SNR_t, 1): the x-space loss weight of the paper ('truncated SNR')."""
    ab = alpha_bar_at(schedule, t, like)
    return (ab / (1 - ab)).clamp(min=1.0)

