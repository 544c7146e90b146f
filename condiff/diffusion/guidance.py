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
    """

    def __init__(self, denoiser, scale: float, cond: dict, uncond: dict):
        self.denoiser, self.scale, self.cond, self.uncond = denoiser, scale, cond, uncond

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
        return (guided, v.chunk(2)[0]) if return_variance else guided


class Conditioned:
    """The plain conditional model (no guidance) as a sampler callable."""

    def __init__(self, denoiser, cond: dict):
        self.denoiser, self.cond = denoiser, cond

    def __call__(self, x: torch.Tensor, t: torch.Tensor, return_variance: bool = False):
        extra = {"return_variance": True} if return_variance else {}
        return self.denoiser(x, t, **extra, **self.cond)
