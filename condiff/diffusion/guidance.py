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

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return self.denoiser(x, t, **self.cond)
        both = {k: _cat(self.cond[k], self.uncond[k]) for k in self.cond}
        eps_c, eps_u = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        return eps_u + self.scale * (eps_c - eps_u)


class Conditioned:
    """The plain conditional model (no guidance) as a sampler callable."""

    def __init__(self, denoiser, cond: dict):
        self.denoiser, self.cond = denoiser, cond

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, t, **self.cond)
