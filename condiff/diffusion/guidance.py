"""Guidance wraps the model; it never lives inside it."""
from __future__ import annotations

import torch


def _cat(a, b):
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    return a


class ClassifierFreeGuidance:
    """Ho & Salimans 2022: eps = eps(x, null) + s (eps(x, c) - eps(x, null)); one batched call for both.

    `uncond` is the null condition, or a negative prompt's condition (A1111 / diffusers convention).

    With rescale phi > 0 the guided eps is pulled back towards the conditional eps's standard deviation
    (Lin et al. 2024, eq. 15-16; diffusers' guidance_rescale), which curbs over-exposure at large scales.
    """

    def __init__(self, denoiser, scale: float, cond: dict, uncond: dict, rescale: float = 0.0):
        self.denoiser, self.scale, self.cond, self.uncond, self.rescale = denoiser, scale, cond, uncond, rescale

    def __call__(self, x: torch.Tensor, t: torch.Tensor, return_variance: bool = False):
        """Guided eps; with return_variance, also the conditional branch's learned-variance v (guided-diffusion)."""
        extra = {"return_variance": True} if return_variance else {}  # plain eps models need not know the flag
        if self.scale == 1.0:
            return self.denoiser(x, t, **extra, **self.cond)
        both = {k: _cat(self.cond[k], self.uncond[k]) for k in self.cond}
        out = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), **extra, **both)
        eps, v = out if return_variance else (out, None)
        eps_c, eps_u = eps.chunk(2)
        guided = eps_u + self.scale * (eps_c - eps_u)
        if self.rescale > 0:
            guided = rescale_guidance(guided, eps_c, self.rescale)
        return (guided, v.chunk(2)[0]) if return_variance else guided


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. eq. 15-16: x = phi * guided * std(cond) / std(guided) + (1 - phi) * guided, std per image."""
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


class GradientGuidance:
    """Guidance by the gradient of a log-probability (classifier, CLIP), as a wrapper of the eps model.

    Score form (Dhariwal & Nichol 2021, Alg. 2; usable by every sampler):
        eps' = eps - sqrt(1 - alpha_bar_t) * s * grad_x log p(y | x_t).
    `grad(x, t)` alone is s * grad_x log p(y | x_t), for the DDPM mean form mu + Sigma s grad (Alg. 1).

    log_prob(x, t) -> (B,) is evaluated on x_t (noise-aware models); with through_x0 it is evaluated as
    log_prob(x0_hat(x_t), None) on the model's prediction of x_0, and the gradient flows back through the model.
    """

    def __init__(self, model, schedule, log_prob, scale: float, through_x0: bool = False):
        self.model, self.schedule, self.log_prob, self.scale, self.through_x0 = model, schedule, log_prob, scale, through_x0

    def _eps_and_grad(self, x: torch.Tensor, t: torch.Tensor, extra: dict):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            if self.through_x0:
                out = self.model(x_in, t, **extra)
                eps = out[0] if isinstance(out, tuple) else out
                ab = self.schedule.alpha_bar_at(t).to(x).view(-1, *([1] * (x.ndim - 1)))
                x0_hat = (x_in - (1 - ab).sqrt() * eps) / ab.sqrt()
                objective = self.log_prob(x0_hat, None)
            else:
                out = None
                objective = self.log_prob(x_in, t)
            (g,) = torch.autograd.grad(objective.sum(), x_in)
        if out is None:
            out = self.model(x, t, **extra)
        out = tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
        return out, self.scale * g

    def grad(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s * grad_x log p(y | x_t)."""
        return self._eps_and_grad(x, t, {})[1]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, return_variance: bool = False):
        extra = {"return_variance": True} if return_variance else {}
        if self.scale == 0:
            return self.model(x, t, **extra)
        out, g = self._eps_and_grad(x, t, extra)
        eps, v = out if return_variance else (out, None)
        ab = self.schedule.alpha_bar_at(t).to(x).view(-1, *([1] * (x.ndim - 1)))
        eps = eps - (1 - ab).sqrt() * g
        return (eps, v) if return_variance else eps


class Conditioned:
    """The plain conditional model (no guidance) as a sampler callable."""

    def __init__(self, denoiser, cond: dict):
        self.denoiser, self.cond = denoiser, cond

    def __call__(self, x: torch.Tensor, t: torch.Tensor, return_variance: bool = False):
        extra = {"return_variance": True} if return_variance else {}
        return self.denoiser(x, t, **extra, **self.cond)
