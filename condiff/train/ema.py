"""Exponential moving average of weights, with the usual warm-up of the decay."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    def decay_at(self, step: int) -> float:
        """min(decay, (1 + n) / (10 + n))."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta, for all parameters in one fused call; buffers are copied.

        Buffers are state the model updates itself (a VQ codebook's EMA statistics), not weights to average.
        """
        d = self.decay_at(step)
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - d)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)
