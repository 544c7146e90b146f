"""ADM/GLIDE-style UNet: timestep AdaGN, self-attention with cross-attention to text tokens, pooled text in the
embedding, and optionally GLIGEN's gated self-attention over box grounding tokens."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .grounding import GatedSelfAttention, GroundingTokens, LayoutMap


@dataclass
class UNetConfig:
    resolution: int = 32
    in_channels: int = 3
    extra_in_channels: int = 0  # concatenated conditioning images (low_res=, mask=) for later pipelines
    out_channels: int = 3
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    head_channels: int = 32
    dropout: float = 0.0
    context_dim: int = 128  # text width; 0 for an unconditional model
    grounding_dim: int = 0  # phrase-embedding width of box grounding (GLIGEN); 0: no grounding layers
    grounding_token_dim: int = 256
    grounding_max_boxes: int = 4  # grounding token slots; unused ones hold the learned null token
    grounding_positions: bool = True  # the gated attention also sees each pixel's own cell, Fourier-embedded
    grounding_map_channels: int = 0  # > 0: the boxes also painted as a layout map (this many + 1 channels) at the input
    noise_level_embed: bool = False  # upsamplers: the low-res input's augmentation level aug_t, embedded like t (Imagen)
    middle_attention: bool = True  # False: no attention at all (fully convolutional; trains on crops, samples whole)
    image_embed_dim: int = 0  # unCLIP's decoder: a CLIP image embedding, added to the timestep embedding and given as
    image_embed_tokens: int = 4  # this many extra context tokens (DALL-E 2); 0 dims: no such input


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017) of timesteps t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels; the group count divides ch (any width works)."""
    groups = min(32, max(1, ch // 4))
    while ch % groups:
        groups -= 1
    return nn.GroupNorm(groups, ch)


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with adaptive group norm: GN(h) (1 + scale(emb)) + shift(emb)."""

    def __init__(self, ch_in: int, ch_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(norm(ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * ch_out))
        self.out_norm = norm(ch_out)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero(nn.Conv2d(ch_out, ch_out, 3, padding=1)))
        self.skip = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x, emb, **_):
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[..., None, None].chunk(2, dim=1)
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over pixels whose keys/values also include the text tokens (GLIDE's encoder_kv)."""

    def __init__(self, ch: int, head_channels: int, context_dim: int, grounding_token_dim: int = 0,
                 grounding_positions: bool = True):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.gated = (GatedSelfAttention(ch, grounding_token_dim, head_channels, grounding_positions)
                      if grounding_token_dim else None)
        self.norm = norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.context_kv = nn.Linear(context_dim, 2 * ch) if context_dim else None
        self.proj = zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x, emb, context=None, context_mask=None, grounding=None, **_):
        if self.gated is not None and grounding is not None:  # GLIGEN: gated self-attention before the text
            x = self.gated(x, grounding)
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x).view(B, C, H * W)).chunk(3, dim=1)  # (B, C, HW) each
        mask = None
        if self.context_kv is not None and context is not None:
            ck, cv = self.context_kv(context).transpose(1, 2).chunk(2, dim=1)  # (B, C, L)
            k, v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
            if context_mask is not None:  # None: every context token kept (trimmed_context), attention unmasked
                keep = torch.ones(B, H * W, dtype=torch.bool, device=x.device)
                mask = torch.cat([context_mask, keep], 1)[:, None, None, :]  # (B, 1, 1, L + HW)
        split = lambda a: a.reshape(B, self.heads, C // self.heads, -1).transpose(2, 3)  # (B, h, N, c)
        h = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        h = h.transpose(2, 3).reshape(B, C, H * W)
        return x + self.proj(h).view(B, C, H, W)


def trimmed_context(context, context_mask):
    """The context cut after the batch's last kept token, and its mask, or None when every token left is kept: the
    same attention over fewer keys, and unmasked, on the fused kernel (a boolean mask sends PyTorch's CPU attention
    down its slow path: 20% of a sampling forward at batch 16)."""
    if context is None or context_mask is None:
        return context, context_mask
    kept = context_mask.any(0).nonzero()
    n = int(kept.max()) + 1 if len(kept) else 0
    context, context_mask = context[:, :n], context_mask[:, :n]
    return context, (None if bool(context_mask.all()) else context_mask)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, emb, **_):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, emb, **_):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class InputConv(nn.Conv2d):
    def __init__(self, ch_in: int, ch_out: int):
        super().__init__(ch_in, ch_out, 3, padding=1)

    def forward(self, x, emb=None, **_):
        return super().forward(x)


class EmbedSequential(nn.Sequential):
    """Sequential whose layers take (x, emb, **cond): guided-diffusion's TimestepEmbedSequential."""

    def forward(self, x, emb, **cond):
        for layer in self:
            x = layer(x, emb, **cond)
        return x


class UNet(nn.Module):
    """eps_theta(x_t, t, context, context_mask, pooled, **images): (B, C, H, W) -> (B, C_out, H, W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.pooled_proj = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_dim else None
        self.noise_level_embed = (nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                                  if cfg.noise_level_embed else None)
        if cfg.image_embed_dim:  # zero-initialised, so a decoder fine-tuned from a text-to-image UNet starts near it
            self.image_embed_proj = zero(nn.Linear(cfg.image_embed_dim, emb_dim))
            self.image_embed_context = zero(nn.Linear(cfg.image_embed_dim, cfg.image_embed_tokens * cfg.context_dim))
        block = lambda a, b: ResBlock(a, b, emb_dim, cfg.dropout)
        token_dim = cfg.grounding_token_dim if cfg.grounding_dim else 0
        attn = lambda ch: AttentionBlock(ch, cfg.head_channels, cfg.context_dim, token_dim, cfg.grounding_positions)
        self.grounding = GroundingTokens(cfg.grounding_dim, token_dim) if cfg.grounding_dim else None
        map_ch = cfg.grounding_map_channels + 1 if cfg.grounding_dim and cfg.grounding_map_channels else 0
        self.layout_map = LayoutMap(cfg.grounding_dim, cfg.grounding_map_channels) if map_ch else None
        self.inputs = nn.ModuleList([EmbedSequential(InputConv(cfg.in_channels + cfg.extra_in_channels + map_ch, mc))])
        skips, ch, res = [mc], mc, cfg.resolution
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [block(ch, mult * mc)]
                ch = mult * mc
                if res in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.inputs.append(EmbedSequential(*layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.inputs.append(EmbedSequential(Downsample(ch)))
                skips.append(ch)
                res //= 2
        self.middle = EmbedSequential(block(ch, ch), *([attn(ch)] if cfg.middle_attention else []), block(ch, ch))
        self.outputs = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [block(ch + skips.pop(), mult * mc)]
                ch = mult * mc
                if res in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    res *= 2
                self.outputs.append(EmbedSequential(*layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def forward(self, x, t, context=None, context_mask=None, pooled=None, box_phrases=None, boxes=None, box_mask=None,
                noise_level=None, image_embed=None, control=None, **images):
        """box_phrases (B, N, grounding_dim), boxes (B, N, 4) in [0, 1], box_mask (B, N): GLIGEN's grounding input.
        noise_level (B,): the augmentation timestep of a low_res= input (an upsampler's; absent: 0, clean).
        image_embed (B, D): unCLIP's CLIP image embedding (a decoder's; absent: zeros, the dropped embedding).
        control: a ControlNet's residuals (one per skip connection, then the middle's), added where they belong."""
        x, emb, cond = self.prepare(x, t, context, context_mask, pooled, box_phrases, boxes, box_mask, noise_level,
                                    image_embed, **images)
        hs, x = self.encode(x, emb, cond)
        if control is not None:
            *skips, mid = control
            hs, x = [h + c for h, c in zip(hs, skips)], x + mid
        for module in self.outputs:
            x = module(torch.cat([x, hs.pop()], dim=1), emb, **cond)
        return self.out(x)

    def prepare(self, x, t, context=None, context_mask=None, pooled=None, box_phrases=None, boxes=None, box_mask=None,
                noise_level=None, image_embed=None, **images):
        """The network's input, its timestep (+ pooled, noise-level, image) embedding and the attention's conditions."""
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))  # (B, 4 mc)
        if self.pooled_proj is not None and pooled is not None:
            emb = emb + self.pooled_proj(pooled)
        if self.noise_level_embed is not None:
            level = noise_level if noise_level is not None else torch.zeros_like(t)
            emb = emb + self.noise_level_embed(timestep_embedding(level.expand(len(x)), self.cfg.model_channels).to(x.dtype))
        if self.cfg.image_embed_dim:
            e = image_embed.to(x.dtype) if image_embed is not None else x.new_zeros(len(x), self.cfg.image_embed_dim)
            e = e * self.cfg.image_embed_dim ** 0.5  # a unit embedding at unit variance per coordinate: without it the
            # zero-initialised projections learned too slowly (400 fine-tuning steps: variations ignored the image)
            emb = emb + self.image_embed_proj(e)
            tokens = self.image_embed_context(e).view(len(x), self.cfg.image_embed_tokens, self.cfg.context_dim)
            context = tokens if context is None else torch.cat([tokens, context.to(tokens.dtype)], 1)
            keep = torch.ones(len(x), self.cfg.image_embed_tokens, dtype=torch.bool, device=x.device)
            context_mask = keep if context_mask is None else torch.cat([keep, context_mask], 1)
        if images:  # explicit conditioning images, concatenated in name order
            x = torch.cat([x] + [images[k] for k in sorted(images)], dim=1)
        context, context_mask = trimmed_context(context, context_mask)
        cond = {"context": context, "context_mask": context_mask}
        if self.grounding is not None and boxes is not None:
            cond["grounding"] = self.grounding(box_phrases.to(x.dtype), boxes, box_mask)
        if self.layout_map is not None:  # no boxes: an empty map (what a scene with all boxes dropped trains on)
            B, _, H, W = x.shape
            x = torch.cat([x, self.layout_map(box_phrases.to(x.dtype), boxes, box_mask, H, W) if boxes is not None
                           else x.new_zeros(B, self.cfg.grounding_map_channels + 1, H, W)], dim=1)
        return x, emb, cond

    def encode(self, x, emb, cond: dict, hint: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The encoder's outputs (the skip connections) and the middle block's; hint is added after the first
        convolution (ControlNet's way in for its control map)."""
        hs = []
        for i, module in enumerate(self.inputs):
            x = module(x, emb, **cond)
            if i == 0 and hint is not None:
                x = x + hint
            hs.append(x)
        return hs, self.middle(x, emb, **cond)
