"""The one denoiser contract: denoiser(x_t, t, **cond) -> eps_hat, whatever the network predicts.

t may be fractional (the sigma samplers' t(sigma)); alpha_bar is then read at t by log-sigma interpolation, the same
noise level the network is shown, so converting an x0- or v-prediction to eps never truncates t.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import nn

from .schedule import NoiseSchedule, ScheduleConfig, _gather


class Prediction(str, enum.Enum):
    EPSILON = "epsilon"
    V = "v"  # Salimans & Ho 2022: v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
    X0 = "x0"  # the clean sample itself (DDPM's "predict x_0" ablation; Imagen's upsamplers)


@dataclass
class DiffusionConfig:
    """How a denoiser is trained and read: its noise schedule and what its network predicts (pipeline.json)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: Prediction = Prediction.EPSILON
    learn_sigma: bool = False  # the network also outputs the learned-range variance (improved DDPM)


def _alpha_bar(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar at t (B,), exact at integer t and interpolated at fractional t, shaped to broadcast on `like`."""
    if t.dtype.is_floating_point and not torch.equal(t, t.round()):
        return schedule.alpha_bar_at(t).to(like).view(-1, *([1] * (like.ndim - 1)))
    return _gather(schedule.alpha_bar, t, like)


def x0_from_eps(schedule: NoiseSchedule, x_t, t, eps):
    """x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    ab = _alpha_bar(schedule, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(schedule: NoiseSchedule, x_t, t, x0):
    """eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)."""
    ab = _alpha_bar(schedule, t, x_t)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def eps_from_v(schedule: NoiseSchedule, x_t, t, v):
    """eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v."""
    ab = _alpha_bar(schedule, t, x_t)
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


def v_target(schedule: NoiseSchedule, x0, t, eps):
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
    ab = _gather(schedule.alpha_bar, t, x0)
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def split_learned_range(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, ...) network output -> prediction (B, C, ...) and v = (raw + 1) / 2 (improved DDPM eq. 15)."""
    pred, raw = out.chunk(2, dim=1)
    return pred, (raw + 1) / 2


def target(schedule: NoiseSchedule, prediction: Prediction, x0, t, eps):
    """What the network is trained to output for x_t = q_sample(x0, t, eps)."""
    prediction = Prediction(prediction)
    if prediction is Prediction.EPSILON:
        return eps
    return v_target(schedule, x0, t, eps) if prediction is Prediction.V else x0


def eps_from_prediction(schedule: NoiseSchedule, prediction: Prediction, x_t, t, out):
    """The network's output read as eps, whatever it predicts."""
    prediction = Prediction(prediction)
    if prediction is Prediction.EPSILON:
        return out
    return eps_from_v(schedule, x_t, t, out) if prediction is Prediction.V else eps_from_x0(schedule, x_t, t, out)


class Denoiser(nn.Module):
    """Wraps a network net(x_t, t, **cond) so samplers always see an epsilon prediction.

    Keyword conditioning (context=, low_res=, mask=, boxes=, ...) passes through to the network untouched.
    With learn_sigma the network also outputs v of the learned-range variance; return_variance=True gives (eps, v).
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, prediction: Prediction = Prediction.EPSILON,
                 learn_sigma: bool = False):
        super().__init__()
        self.net, self.schedule, self.prediction = net, schedule, Prediction(prediction)
        self.learn_sigma = learn_sigma

    @classmethod
    def from_config(cls, net: nn.Module, cfg: DiffusionConfig) -> "Denoiser":
        return cls(net, NoiseSchedule.from_config(cfg.schedule), cfg.prediction, cfg.learn_sigma)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, return_variance: bool = False, **cond):
        out = self.net(x_t, t, **cond)
        v = None
        if self.learn_sigma:
            out, v = split_learned_range(out)
        elif return_variance:
            raise ValueError("learned variance needs a model trained with learn_sigma")
        eps = eps_from_prediction(self.schedule, self.prediction, x_t, t, out)
        return (eps, v) if return_variance else eps
