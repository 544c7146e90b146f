"""unCLIP's diffusion prior (Ramesh et al. 2022, sec. 2.1): caption -> CLIP image embedding.

A decoder-only (causal) transformer denoises the image embedding z_i, predicting the clean z_i directly (the
paper's choice over eps). Its sequence, in order:

    CLIP text tower's token states (projected) | CLIP text embedding z_t | timestep | noised z_i^(t) | query

and the query's output is z_i's prediction. Each token attends to itself and those before it. For classifier-free
guidance the text (its tokens and z_t) is replaced by learned null tokens with p_uncond in training; `drop=` (B,)
selects the null text at sampling. The embedding is diffused at unit variance per coordinate: x_0 = sqrt(D) z_i
(a unit vector's coordinates have variance 1/D; DALLE2-pytorch's image_embed_scale).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.denoiser import DiffusionConfig, Prediction
from ..diffusion.schedule import ScheduleConfig
from .unet import timestep_embedding


@dataclass
class EmbeddingPriorConfig:
    embed_dim: int = 128  # the CLIP's embedding size (set from the CLIP when training starts)
    text_width: int = 128  # the CLIP text tower's width
    max_text: int = 16  # the CLIP text tower's token count
    width: int = 256
    layers: int = 4
    heads: int = 4


def causal_transformer(width: int, heads: int, layers: int) -> nn.TransformerEncoder:
    """Both priors' decoder-only stack: pre-norm GELU layers without dropout; the causal mask is given per call."""
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class EmbeddingPrior(nn.Module):
    """net(x_t, t, text_tokens=, text_mask=, text_embed=, drop=) -> x0_hat, for the Denoiser contract (prediction x0)."""

    def __init__(self, cfg: EmbeddingPriorConfig):
        super().__init__()
        self.cfg = cfg
        w, n = cfg.width, cfg.max_text + 4
        self.token_proj = nn.Linear(cfg.text_width, w)
        self.text_embed_proj = nn.Linear(cfg.embed_dim, w)
        self.x_proj = nn.Linear(cfg.embed_dim, w)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.null_tokens = nn.Parameter(torch.randn(cfg.max_text + 1, w) * 0.02)  # the null text: tokens and z_t
        self.query = nn.Parameter(torch.randn(w) * 0.02)
        self.position = nn.Parameter(torch.randn(n, w) * 0.02)
        self.transformer = causal_transformer(w, cfg.heads, cfg.layers)
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg.embed_dim))
        self.register_buffer("causal", torch.triu(torch.ones(n, n, dtype=torch.bool), 1), persistent=False)

    @property
    def scale(self) -> float:
        """x_0 = scale * z_i for a unit embedding z_i: unit variance per coordinate."""
        return math.sqrt(self.cfg.embed_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                text_embed: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, D), t (B,), text_tokens (B, L, text_width), text_mask (B, L) true where a token is, text_embed
        (B, D) unit; drop (B,) bool: the null text instead of the caption. -> x0_hat (B, D)."""
        B, L = text_mask.shape
        if L > self.cfg.max_text:
            raise ValueError(f"text_tokens: {L} tokens, the prior was built for at most {self.cfg.max_text}")
        text = torch.cat([self.token_proj(text_tokens), self.text_embed_proj(text_embed)[:, None]], 1)  # (B, L+1, w)
        present = torch.cat([text_mask.bool(), text_mask.new_ones(B, 1, dtype=torch.bool)], 1)
        if drop is not None:
            d = drop.bool().view(B, 1, 1)
            text = torch.where(d, self.null_tokens[: L + 1].to(text.dtype), text)
            present = present | d.view(B, 1)  # the null text is all present
        time = self.time_embed(timestep_embedding(t, self.cfg.width).to(text.dtype))
        seq = torch.cat([text, time[:, None], self.x_proj(x_t)[:, None], self.query.expand(B, 1, -1)], 1)
        n = seq.shape[1]
        seq = seq + self.position[:n]
        pad = torch.cat([~present, present.new_zeros(B, 3)], 1)  # padding keys of the caption are masked out
        h = self.transformer(seq, mask=self.causal[:n, :n], src_key_padding_mask=pad)
        return self.out(h[:, -1])

    def loss(self, z_image: torch.Tensor, text: dict, schedule, generator: torch.Generator,
             p_uncond: float = 0.1) -> torch.Tensor:
        """MSE between the clean (scaled) image embedding and its prediction from x_t at t ~ U{0..T-1}; the text
        is dropped to the null tokens with p_uncond."""
        B, device = len(z_image), z_image.device
        x0 = z_image * self.scale
        t = torch.randint(0, schedule.T, (B,), generator=generator).to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        drop = (torch.rand(B, generator=generator) < p_uncond).to(device)
        x0_hat = self(schedule.q_sample(x0, t, eps), t, text["tokens"], text["mask"], text["embed"], drop)
        return F.mse_loss(x0_hat.float(), x0.float())


def clip_text(clip, prompts: list[str]) -> dict:
    """What the prior reads of a caption: the frozen CLIP text tower's token states and mask, and its unit
    embedding z_t."""
    enc = clip.text_encoder.encode(prompts, clip.device)  # one pass of the tower gives both
    return {"tokens": enc["context"], "mask": enc["context_mask"], "embed": clip.text_embedding(enc["pooled"])}


def prior_diffusion() -> DiffusionConfig:
    """The prior's diffusion: cosine schedule, predicting the clean embedding x0 (DALL-E 2, sec. 2.1)."""
    return DiffusionConfig(ScheduleConfig(num_timesteps=1000, beta_schedule="cosine"), Prediction.X0)
