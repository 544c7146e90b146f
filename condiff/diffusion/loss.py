"""Training loss, kept apart from the noise-level sampling and the sampling schedule (EDM style)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .denoiser import Prediction, v_target
from .schedule import NoiseSchedule


def sample_timesteps(batch: int, T: int, generator: torch.Generator, device) -> torch.Tensor:
    """t ~ Uniform{0, ..., T-1}."""
    return torch.randint(0, T, (batch,), generator=generator).to(device)


def diffusion_loss(net, schedule: NoiseSchedule, prediction: Prediction, x0: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor, **cond) -> torch.Tensor:
    """L_simple (Ho et al. eq. 14): || target - net(x_t, t) ||^2, target eps or v."""
    x_t = schedule.q_sample(x0, t, eps)
    target = eps if Prediction(prediction) is Prediction.EPSILON else v_target(schedule, x0, t, eps)
    return F.mse_loss(net(x_t, t, **cond).float(), target.float())
