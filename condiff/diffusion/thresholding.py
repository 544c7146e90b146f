"""What a sampler may do to x0_hat before using it: static clipping or Imagen's dynamic thresholding."""
from __future__ import annotations

import enum
from typing import Callable

import torch

X0Fn = Callable[[torch.Tensor], torch.Tensor]


class Threshold(str, enum.Enum):
    NONE = "none"
    STATIC = "static"
    DYNAMIC = "dynamic"


def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Clip x0_hat to the data range [-1, 1] (Ho et al. 2020)."""
    return x0.clamp(-1, 1)


def dynamic_threshold(percentile: float = 0.995) -> X0Fn:
    """Imagen (Saharia et al. 2022, sec. 2.3): s = max(1, p-th percentile of |x0_hat|) per image; x0 <- clip(x0, -s, s) / s."""
    def fn(x0: torch.Tensor) -> torch.Tensor:
        s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0).to(x0.dtype)  # (B,)
        s = s.view(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s
    return fn


def x0_fn_for(mode: Threshold, percentile: float = 0.995) -> X0Fn | None:
    mode = Threshold(mode)
    if mode is Threshold.NONE:
        return None
    return static_threshold if mode is Threshold.STATIC else dynamic_threshold(percentile)
