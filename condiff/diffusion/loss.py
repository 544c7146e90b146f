"""Training loss, kept apart from the noise-level sampling and the sampling schedule (EDM style)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .denoiser import Prediction, eps_from_prediction, split_learned_range, target, x0_from_eps
from .schedule import NoiseSchedule, _gather


def sample_timesteps(batch: int, T: int, generator: torch.Generator, device) -> torch.Tensor:
    """t ~ Uniform{0, ..., T-1}."""
    return torch.randint(0, T, (batch,), generator=generator).to(device)


def snr(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021), float64, shape of t."""
    alpha_bar = schedule.alpha_bar.to(t.device)[t]
    return alpha_bar / (1 - alpha_bar)


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, prediction: Prediction, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): w_t = min(SNR_t, gamma) / SNR_t for eps, / (SNR_t + 1) for v."""
    s = snr(schedule, t)
    prediction = Prediction(prediction)
    if prediction is Prediction.X0:  # x0-MSE = SNR eps-MSE, so min(SNR, gamma) / SNR in eps terms is min(SNR, gamma) here
        return s.clamp(max=gamma).float()
    denom = s if prediction is Prediction.EPSILON else s + 1
    return (s.clamp(max=gamma) / denom).float()


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """mean_i w_i ||pred_i - target_i||^2 / d; plain MSE when weight is None."""
    if weight is None:
        return F.mse_loss(pred, target)
    return (weight * (pred - target).pow(2).flatten(1).mean(1)).mean()


def diffusion_loss(net, schedule: NoiseSchedule, prediction: Prediction, x0: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor, weight: torch.Tensor | None = None, **cond) -> torch.Tensor:
    """L_simple (Ho et al. eq. 14): || target - net(x_t, t) ||^2, target eps, v or x0; optionally weighted per sample."""
    x_t = schedule.q_sample(x0, t, eps)
    return _weighted_mse(net(x_t, t, **cond).float(), target(schedule, prediction, x0, t, eps).float(), weight)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """log P(x) of x in [-1, 1] quantised to 256 bins of width 2/255 under N(mean, e^(2 log_scale)) (Ho et al. 3.3)."""
    cdf = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    inv_std = torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv_std * (x - mean + 1 / 255)), cdf(inv_std * (x - mean - 1 / 255))
    log = lambda p: torch.log(p.clamp(min=1e-12))
    return torch.where(x < -0.999, log(cdf_plus), torch.where(x > 0.999, log(1 - cdf_min), log(cdf_plus - cdf_min)))


def model_log_variance(schedule: NoiseSchedule, t, v, like) -> torch.Tensor:
    """Improved DDPM eq. 15: log Sigma = v log beta_t + (1 - v) log beta_tilde_t."""
    log_beta = _gather(schedule.betas.log(), t, like)
    return v * log_beta + (1 - v) * _gather(schedule.posterior_log_variance_clipped, t, like)


def vlb_terms(schedule: NoiseSchedule, x0, x_t, t, eps_hat, v) -> torch.Tensor:
    """L_t per sample in bits/dim: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, -log p(x0|x1) at t = 0."""
    true_mean, _ = schedule.posterior_mean_variance(x0, x_t, t)
    true_logvar = _gather(schedule.posterior_log_variance_clipped, t, x0)
    model_mean, _ = schedule.posterior_mean_variance(x0_from_eps(schedule, x_t, t, eps_hat), x_t, t)
    logvar = model_log_variance(schedule, t, v, x0)
    kl = normal_kl(true_mean, true_logvar, model_mean, logvar).flatten(1).mean(1) / math.log(2)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * logvar).flatten(1).mean(1) / math.log(2)
    return torch.where(t == 0, nll, kl)


def hybrid_loss(net, schedule: NoiseSchedule, prediction: Prediction, x0: torch.Tensor, t: torch.Tensor,
                eps: torch.Tensor, weight: torch.Tensor | None = None, **cond) -> torch.Tensor:
    """Improved DDPM L_hybrid = L_simple + lambda L_vlb, lambda = 0.001; the mean gets no gradient from L_vlb."""
    x_t = schedule.q_sample(x0, t, eps)
    pred, v = split_learned_range(net(x_t, t, **cond).float())
    eps_hat = eps_from_prediction(schedule, prediction, x_t, t, pred.detach())
    vb = vlb_terms(schedule, x0.float(), x_t.float(), t, eps_hat, v).mean()
    return _weighted_mse(pred, target(schedule, prediction, x0, t, eps).float(), weight) + vb * schedule.T / 1000  # = 0.001 * T * E_t[L_t]
