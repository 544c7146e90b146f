"""Conditioning augmentation for cascades (Ho et al. 2022, "Cascaded Diffusion Models"; Imagen, Saharia et al. 2022).

An upsampler sees its low-resolution input corrupted, so that at sampling time a base model's own artefacts look
like something it was trained on:
  - noise-conditioning augmentation: z = sqrt(alpha_bar_s) x_low + sqrt(1 - alpha_bar_s) eps (schedule.q_sample)
    at a timestep s of the diffusion's own schedule that the network is told (UNet noise_level=); training draws s,
    sampling fixes it;
  - Gaussian blur of the low-res input (CDM's truncated-conditioning variant for pixel cascades).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F



def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Box-filter downsampling: the world's renders are box-filtered supersamples, so this equals rendering the
    scene at the lower size (with `factor` times the supersampling)."""
    return F.avg_pool2d(images, factor) if factor > 1 else images


def at_resolution(images: torch.Tensor, res: int) -> torch.Tensor:
    """Images at a judge's side (res): box-filtered down by a whole factor (as the world renders), else resized bilinearly."""
    side = images.shape[-1]
    if side >= res and side % res == 0:
        return downsample(images, side // res)
    return F.interpolate(images, size=(res, res), mode="bilinear", align_corners=False, antialias=side > res)


def upsample(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """The low-res image at the output size, as concatenated to x_t (guided-diffusion's SuperResModel: bilinear)."""
    if low_res.shape[-1] == size:
        return low_res
    return F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Per-image Gaussian blur, sigma (B,) in pixels (0: unchanged), kernel `size` wide, reflect-padded."""
    B, C, H, W = images.shape
    r = torch.arange(size, device=images.device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-r[None] ** 2 / (2 * sigma.float().clamp(min=1e-6)[:, None] ** 2))
    g = torch.where(sigma[:, None] > 0, g, (r[None] == 0).float())
    g = g / g.sum(1, keepdim=True)  # (B, size)
    k = (g[:, :, None] * g[:, None, :]).to(images.dtype)  # (B, size, size), separable
    x = F.pad(images.reshape(1, B * C, H, W), [(size - 1) // 2] * 4, mode="reflect")
    weight = k[:, None].repeat_interleave(C, 0)  # (B C, 1, size, size)
    return F.conv2d(x, weight, groups=B * C).view(B, C, H, W)
