"""Image towers: ADM's encoder half-UNet with an attention pool, optionally noise-aware (takes x_t and t)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .unet import AttentionBlock, Downsample, EmbedSequential, InputConv, ResBlock, norm, timestep_embedding


@dataclass
class ImageEncoderConfig:
    resolution: int = 32
    in_channels: int = 3
    patch_size: int = 2  # a strided stem: the first level runs at resolution / patch_size (4x cheaper at 2)
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (2, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8,)
    head_channels: int = 32
    out_dim: int = 128
    pool: str = "flatten"  # "flatten": a linear map of the whole last feature map; "attention": CLIP's attention pool
    noise_aware: bool = False  # GLIDE's noised CLIP / ADM's classifier: f(x_t, t) instead of f(x)


class AttentionPool2d(nn.Module):
    """CLIP's attention pool: the mean token, with learned positions, attends over all positions.

    Its output is linear in (feature + position) apart from the attention weights, so it binds colour to place only
    weakly: with it, condiff CLIP read "A left of B" no better than "B left of A" (hence the flatten pool default).
    """

    def __init__(self, side: int, ch: int, heads: int, out_dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(side * side + 1, ch) / ch ** 0.5)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)
        self.proj = nn.Linear(ch, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + self.pos
        pooled, _ = self.attn(tokens[:, :1], tokens, tokens, need_weights=False)
        return self.proj(pooled[:, 0])


class Stem(nn.Conv2d):
    """Non-overlapping p x p patches -> channels (ViT's patch embedding as a strided convolution)."""

    def __init__(self, ch_in: int, ch_out: int, p: int):
        super().__init__(ch_in, ch_out, p, stride=p)

    def forward(self, x, emb=None, **_):
        return super().forward(x)


class ImageEncoder(nn.Module):
    """f(x[, t]) -> (B, out_dim): residual blocks with AdaGN on the timestep embedding, downsampling, attention pool."""

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.model_channels
        emb_dim = 4 * ch
        if cfg.noise_aware:
            self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        else:  # AdaGN still needs an embedding: a learned constant
            self.const_embed = nn.Parameter(torch.zeros(emb_dim))
        p = cfg.patch_size
        blocks = [InputConv(cfg.in_channels, ch) if p == 1 else Stem(cfg.in_channels, ch, p)]
        res = cfg.resolution // p
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, cfg.model_channels * mult, emb_dim, 0.0)]
                ch = cfg.model_channels * mult
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.head_channels, 0))
                blocks.append(EmbedSequential(*layers))
            if level + 1 < len(cfg.channel_mult):
                blocks.append(Downsample(ch))
                res //= 2
        self.blocks = EmbedSequential(*blocks)
        self.out = nn.Sequential(norm(ch), nn.SiLU())
        if cfg.pool == "attention":
            self.pool = AttentionPool2d(res, ch, max(1, ch // cfg.head_channels), cfg.out_dim)
        elif cfg.pool == "flatten":  # every (position, feature) pair has its own weight: "red on the left" is linear
            self.pool = nn.Sequential(nn.Flatten(), nn.Linear(res * res * ch, cfg.out_dim))
        else:
            raise ValueError(f"image encoder pool must be 'flatten' or 'attention', got '{cfg.pool}'")

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.noise_aware:
            if t is None:
                raise ValueError("a noise-aware image encoder needs the timestep t")
            emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))
        else:
            emb = self.const_embed.expand(x.shape[0], -1)
        return self.pool(self.out(self.blocks(x, emb)))
