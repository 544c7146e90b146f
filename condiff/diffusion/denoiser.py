"""The one denoiser contract: denoiser(x_t, t, **cond) -> eps_hat, whatever the network predicts."""
from __future__ import annotations

import enum

import torch
from torch import nn

from .schedule import NoiseSchedule, _gather


class Prediction(str, enum.Enum):
    EPSILON = "epsilon"
    V = "v"  # Salimans & Ho 2022: v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0


def x0_from_eps(schedule: NoiseSchedule, x_t, t, eps):
    """x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    ab = _gather(schedule.alpha_bar, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(schedule: NoiseSchedule, x_t, t, x0):
    """eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)."""
    ab = _gather(schedule.alpha_bar, t, x_t)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def eps_from_v(schedule: NoiseSchedule, x_t, t, v):
    """eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v."""
    ab = _gather(schedule.alpha_bar, t, x_t)
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


def v_target(schedule: NoiseSchedule, x0, t, eps):
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
    ab = _gather(schedule.alpha_bar, t, x0)
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def split_learned_range(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, ...) network output -> prediction (B, C, ...) and v = (raw + 1) / 2 (improved DDPM eq. 15)."""
    pred, raw = out.chunk(2, dim=1)
    return pred, (raw + 1) / 2


class Denoiser(nn.Module):
    """Wraps a network net(x_t, t, **cond) so samplers always see an epsilon prediction.

    With learn_sigma the network also outputs v of the learned-range variance; return_variance=True gives (eps, v).
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, prediction: Prediction = Prediction.EPSILON,
                 learn_sigma: bool = False):
        super().__init__()
        self.net, self.schedule, self.prediction = net, schedule, Prediction(prediction)
        self.learn_sigma = learn_sigma

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, return_variance: bool = False, **cond):
        out = self.net(x_t, t, **cond)
        v = None
        if self.learn_sigma:
            out, v = split_learned_range(out)
        elif return_variance:
            raise ValueError("learned variance needs a model trained with learn_sigma")
        eps = eps_from_v(self.schedule, x_t, t, out) if self.prediction is Prediction.V else out
        return (eps, v) if return_variance else eps
