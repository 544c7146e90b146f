"""unCLIP's autoregressive prior (Ramesh et al. 2022, sec. 2.1): caption -> CLIP image embedding as discrete codes.

The image embedding z_i is reduced by PCA to the leading components that hold `variance_kept` of its variance (the
paper keeps 319 of 1024 dimensions for 99 %), and each component is quantised uniformly into `buckets` bins over its
range on the fitting set (1024 in the paper). A decoder-only (causal) transformer predicts the codes one by one after
a prefix:

    CLIP text tower's token states (projected) | z_t | dot-product token | code_1 ... code_{k-1}

whose outputs at the dot-product token and the codes predict code_1 ... code_k. The dot-product token is z_i . z_t
quantised into `buckets` bins over [-1, 1]: conditioning on a high one asks for an image embedding that its caption
describes well, and sampling draws it from the top half of the training distribution (the paper's choice; the
distribution's quantiles are stored with the weights). For classifier-free guidance the text (tokens, z_t and the
dot-product token) is replaced by learned null tokens with p_uncond in training; `drop=` (B,) selects them.
The PCA basis, the ranges and the quantiles are buffers, saved beside the weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .embedding_prior import causal_transformer


@dataclass
class ARPriorConfig:
    embed_dim: int = 128  # the CLIP's embedding size (set from the CLIP when training starts)
    text_width: int = 128  # the CLIP text tower's width
    max_text: int = 16  # the CLIP text tower's token count
    components: int = 0  # PCA components kept (0: fitted when training starts, the fewest holding variance_kept)
    variance_kept: float = 0.99
    buckets: int = 1024  # quantisation bins per component, and for the dot product
    width: int = 256
    layers: int = 4
    heads: int = 4
    quantiles: int = 129  # stored quantiles of z_i . z_t on the fitting set (the dot products sampling draws from)


@dataclass
class Codec:
    """What PCA and quantisation fitted on a set of embeddings: the mean (D,), the basis (k, D) of the leading
    principal directions, each component's range lo, hi (k,), and the sorted quantiles of z_i . z_t (Q,)."""
    mean: torch.Tensor
    basis: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    dots: torch.Tensor


def fit_codec(z_image: torch.Tensor, z_text: torch.Tensor, variance_kept: float, quantiles: int) -> Codec:
    """PCA of unit image embeddings (N, D): the fewest leading components whose variance is >= variance_kept of
    the total, their ranges on this set, and the quantiles of the embeddings' dot products with their captions'."""
    z = z_image.double()
    mean = z.mean(0)
    _, s, vh = torch.linalg.svd(z - mean, full_matrices=False)
    explained = (s ** 2).cumsum(0) / (s ** 2).sum()
    k = min(int((explained < variance_kept).sum()) + 1, len(s))
    c = (z - mean) @ vh[:k].T  # (N, k)
    dots = (z_image * z_text).sum(-1).double()
    q = torch.quantile(dots, torch.linspace(0, 1, quantiles, dtype=torch.float64))
    return Codec(mean.float(), vh[:k].float(), c.min(0).values.float(), c.max(0).values.float(), q.float())


class ARPrior(nn.Module):
    """net(codes, text_tokens=, text_mask=, text_embed=, dot=, drop=) -> logits (B, j + 1, buckets) of codes 1..j+1
    given codes 0..j-1 (codes (B, j), j < k)."""

    full_precision = ("mean", "basis", "lo", "hi", "dots")  # the codec stays float32 in an fp16 export: 1024 bins
    # over a range, and dot-product bins 0.002 wide near 1, are finer than fp16 resolves there

    def __init__(self, cfg: ARPriorConfig):
        super().__init__()
        if cfg.components < 1:
            raise ValueError("components: the prior's PCA is fitted when training starts (fit_codec); got 0")
        self.cfg = cfg
        w, k, D = cfg.width, cfg.components, cfg.embed_dim
        self.token_proj = nn.Linear(cfg.text_width, w)
        self.text_embed_proj = nn.Linear(D, w)
        self.dot_embed = nn.Embedding(cfg.buckets, w)
        self.code_embed = nn.Embedding(cfg.buckets, w)
        self.null_tokens = nn.Parameter(torch.randn(cfg.max_text + 2, w) * 0.02)  # null text: tokens, z_t, dot
        n = cfg.max_text + 1 + k
        self.position = nn.Parameter(torch.randn(n, w) * 0.02)
        self.transformer = causal_transformer(w, cfg.heads, cfg.layers)
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg.buckets))
        self.register_buffer("causal", torch.triu(torch.ones(n, n, dtype=torch.bool), 1), persistent=False)
        for name, shape in (("mean", (D,)), ("basis", (k, D)), ("lo", (k,)), ("hi", (k,)), ("dots", (cfg.quantiles,))):
            self.register_buffer(name, torch.zeros(shape))

    def set_codec(self, codec: Codec) -> None:
        for name in ("mean", "basis", "lo", "hi", "dots"):
            getattr(self, name).copy_(getattr(codec, name))

    def encode(self, z_image: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, D) -> codes (B, k): PCA components, each binned uniformly over its range."""
        c = (z_image.float() - self.mean) @ self.basis.T
        b = torch.floor((c - self.lo) / (self.hi - self.lo).clamp_min(1e-8) * self.cfg.buckets)
        return b.clamp(0, self.cfg.buckets - 1).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, k) -> unit embeddings (B, D): each bin's centre, back through the PCA basis."""
        c = self.lo + (codes.float() + 0.5) * (self.hi - self.lo) / self.cfg.buckets
        return F.normalize(self.mean + c @ self.basis, dim=-1)

    def dot_bucket(self, dot: torch.Tensor) -> torch.Tensor:
        """z_i . z_t in [-1, 1] -> its bin (B,)."""
        return torch.floor((dot.float() + 1) / 2 * self.cfg.buckets).clamp(0, self.cfg.buckets - 1).long()

    def dot_at(self, u: torch.Tensor) -> torch.Tensor:
        """The dot product at quantile u in [0, 1] (B,) of the fitting set's, linearly between stored quantiles."""
        pos = u.float().clamp(0, 1) * (self.cfg.quantiles - 1)
        i = pos.floor().long().clamp(max=self.cfg.quantiles - 2)
        return torch.lerp(self.dots[i], self.dots[i + 1], pos - i)

    def forward(self, codes: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                text_embed: torch.Tensor, dot: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        B, L = text_mask.shape
        if L > self.cfg.max_text:
            raise ValueError(f"text_tokens: {L} tokens, the prior was built for at most {self.cfg.max_text}")
        pad = self.cfg.max_text - L  # the text always fills max_text positions, so a code's position is fixed
        tokens = F.pad(self.token_proj(text_tokens), (0, 0, 0, pad))
        present = F.pad(text_mask.bool(), (0, pad))
        text = torch.cat([tokens, self.text_embed_proj(text_embed)[:, None], self.dot_embed(dot)[:, None]], 1)
        present = torch.cat([present, present.new_ones(B, 2)], 1)  # (B, max_text + 2)
        if drop is not None:
            d = drop.bool().view(B, 1, 1)
            text = torch.where(d, self.null_tokens.to(text.dtype), text)
            present = present | d.view(B, 1)
        seq = torch.cat([text, self.code_embed(codes)], 1)
        n = seq.shape[1]
        h = self.transformer(seq + self.position[:n], mask=self.causal[:n, :n],
                             src_key_padding_mask=F.pad(~present, (0, codes.shape[1])))
        return self.out(h[:, self.cfg.max_text + 1:])  # the dot token's and the codes' outputs

    def loss(self, z_image: torch.Tensor, text: dict, generator: torch.Generator, p_uncond: float = 0.1) -> torch.Tensor:
        """Cross-entropy of the codes of the image embeddings given the caption and the quantised z_i . z_t; the
        text is dropped to the null tokens with p_uncond."""
        B = len(z_image)
        codes = self.encode(z_image)
        dot = self.dot_bucket((z_image * text["embed"]).sum(-1))
        drop = (torch.rand(B, generator=generator) < p_uncond).to(z_image.device)
        logits = self(codes[:, :-1], text["tokens"], text["mask"], text["embed"], dot, drop)
        return F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())
