"""First-stage autoencoders of latent diffusion (Rombach et al. 2022): KL-regularised and vector-quantised (VQ).

encode(x) -> z (B, C_z, H/f, W/f), already multiplied by the measured scale factor, so diffusion sees unit-variance
latents; decode(z) inverts it. f = 2^(len(channel_mult) - 1).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .unet import norm


class AutoencoderKind(str, enum.Enum):
    KL = "kl"  # diagonal Gaussian posterior, small KL to N(0, I) (LDM's AutoencoderKL)
    VQ = "vq"  # nearest codebook entry, EMA codebook updates, commitment loss (van den Oord et al. 2017)


@dataclass
class AutoencoderConfig:
    kind: AutoencoderKind = AutoencoderKind.KL
    resolution: int = 64
    in_channels: int = 3
    latent_channels: int = 4
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)  # f4
    num_res_blocks: int = 1
    codebook_size: int = 512  # VQ only
    codebook_decay: float = 0.99  # VQ: EMA decay of the codebook statistics
    scale_factor: float = 1.0  # 1 / std of the latents on the training data, measured after training (LDM's 0.18215)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class ResBlock(nn.Module):
    """GN, SiLU, conv, GN, SiLU, conv + skip (no timestep embedding)."""

    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.body = nn.Sequential(norm(ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1),
                                  norm(ch_out), nn.SiLU(), nn.Conv2d(ch_out, ch_out, 3, padding=1))
        self.skip = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


def encoder(cfg: AutoencoderConfig, out_channels: int) -> nn.Sequential:
    ch = cfg.channels * cfg.channel_mult[0]
    layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 3, padding=1)]
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers.append(ResBlock(ch, cfg.channels * mult))
            ch = cfg.channels * mult
        if level != len(cfg.channel_mult) - 1:
            layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
    layers += [ResBlock(ch, ch), norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def decoder(cfg: AutoencoderConfig) -> nn.Sequential:
    ch = cfg.channels * cfg.channel_mult[-1]
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1), ResBlock(ch, ch)]
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for _ in range(cfg.num_res_blocks + 1):
            layers.append(ResBlock(ch, cfg.channels * mult))
            ch = cfg.channels * mult
        if level:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
    layers += [norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^logvar) || N(0, I)) summed over latent elements, per sample: 0.5 sum(mean^2 + var - 1 - logvar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


class VectorQuantizer(nn.Module):
    """z -> nearest of K codes; EMA codebook (van den Oord et al. 2017, App. A.1), dead codes restarted from z."""

    def __init__(self, size: int, dim: int, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("codebook", torch.randn(size, dim) * 0.1)  # (K, D)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", self.codebook.clone())

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> nearest code index (B, H, W) by squared distance, in float32 (bf16 autocast would round
        the distances and pick wrong codes)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (N, D)
        with torch.autocast(z.device.type, enabled=False):
            d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.pow(2).sum(1)[None]
        return d.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return self.codebook[idx].permute(0, 3, 1, 2)  # (B, D, H, W)

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def ema_update(self, z: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> None:
        """N_k <- d N_k + (1-d) n_k; m_k <- d m_k + (1-d) sum z; e_k = m_k / N_k; codes with N_k < 1e-3 restart."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        onehot = F.one_hot(idx.flatten(), len(self.codebook)).float()  # (N, K)
        self.cluster_size.lerp_(onehot.sum(0), 1 - self.decay)
        self.embed_sum.lerp_(onehot.T @ flat, 1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + len(self.codebook) * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < 1e-3
        if dead.any():
            pick = torch.randint(len(flat), (int(dead.sum()),), generator=generator).to(flat.device)
            self.codebook[dead] = flat[pick]
            self.embed_sum[dead] = flat[pick]
            self.cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor):
        """Straight-through quantisation: (z_q with the gradient of z, indices)."""
        idx = self.indices(z)
        z_q = self.lookup(idx).to(z.dtype)
        return z + (z_q - z).detach(), idx


def perplexity(idx: torch.Tensor, size: int) -> float:
    """exp(H(p)) of the code usage p over a batch: K when all codes are used evenly, 1 when one is."""
    p = torch.bincount(idx.flatten(), minlength=size).float()
    p = p / p.sum()
    return math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        kl = AutoencoderKind(cfg.kind) is AutoencoderKind.KL
        self.encoder = encoder(cfg, 2 * cfg.latent_channels if kl else cfg.latent_channels)
        self.decoder = decoder(cfg)
        self.quantizer = None if kl else VectorQuantizer(cfg.codebook_size, cfg.latent_channels, cfg.codebook_decay)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """KL: posterior mean and log-variance (clamped to [-30, 20] as LDM does); VQ: the pre-quantisation z, None."""
        h = self.encoder(x)
        if self.quantizer is not None:
            return h, None
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x in [-1, 1] (B, 3, H, W) -> scaled latent (B, C_z, H/f, W/f): the posterior mean (a sample with a generator)."""
        mean, logvar = self.moments(x)
        if self.quantizer is not None:
            z = self.quantizer(mean)[0]
        elif generator is not None:
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator).to(mean)
        else:
            z = mean
        return z * self.cfg.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image in about [-1, 1]; a VQ latent is snapped to its nearest codes first."""
        z = z / self.cfg.scale_factor
        if self.quantizer is not None:
            z = self.quantizer(z)[0]
        return self.decoder(z)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        side = resolution // self.cfg.factor
        return (self.cfg.latent_channels, side, side)
