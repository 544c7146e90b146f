"""Word tokenizer over a closed vocabulary and a learned text transformer (GLIDE-style text encoder)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)


class VocabularyError(ValueError):
    """A word the model's vocabulary does not contain."""


def words_of(text: str) -> list[str]:
    return text.strip().lower().replace(",", " ").replace(".", " ").split()


@dataclass
class TextEncoderConfig:
    vocab: list[str] = field(default_factory=list)  # words, specials excluded
    max_length: int = 16
    width: int = 128
    layers: int = 3
    heads: int = 4
    causal_layers: int = 0  # CLIP-style causal layers after the bidirectional ones: word order without positions


class Tokenizer:
    """Whole-word tokenizer: '<bos> w1 ... wn <eos> <pad>...'; the empty caption is the null condition."""

    def __init__(self, vocab: list[str], max_length: int):
        self.itos = list(SPECIALS) + list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_length = max_length

    def encode(self, text: str) -> list[int]:
        ids = [self.stoi[BOS]]
        for w in words_of(text):
            if w not in self.stoi:
                raise VocabularyError(f"unknown word '{w}' (not in the model's vocabulary of {len(self.itos) - 3} words)")
            ids.append(self.stoi[w])
        ids.append(self.stoi[EOS])
        if len(ids) > self.max_length:
            raise VocabularyError(f"prompt '{text}' has {len(ids) - 2} words; the model takes at most {self.max_length - 2}")
        return ids

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and attention mask (B, L), True on real tokens."""
        return pad_ids([self.encode(t) for t in texts], self.max_length)


def pad_ids(encoded: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ids (B, length) padded with 0, and the mask (B, length), True on real tokens."""
    ids = torch.zeros(len(encoded), length, dtype=torch.long)
    mask = torch.zeros(len(encoded), length, dtype=torch.bool)
    for i, enc in enumerate(encoded):
        ids[i, : len(enc)] = torch.tensor(enc, dtype=torch.long)
        mask[i, : len(enc)] = True
    return ids, mask


class TextEncoder(nn.Module):
    """Transformer over word tokens -> per-token context (B, L, D), mask (B, L) and pooled <eos> state (B, D)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = Tokenizer(cfg.vocab, cfg.max_length)
        self.embed = nn.Embedding(len(self.tokenizer.itos), cfg.width)
        # CLIP's init: tokens N(0, 0.02^2), positions N(0, 0.01^2). With torch's default N(0, 1) tokens the positions
        # were 1% of the signal and stayed so: the encoder became a bag of words ("a red circle left of a blue
        # square" and "a blue circle left of a red square" had text-embedding cosine 1.0000).
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(cfg.max_length, cfg.width) * 0.01)
        def layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                              batch_first=True, norm_first=True)

        self.blocks = nn.TransformerEncoder(layer(), cfg.layers, enable_nested_tensor=False)
        # Under a causal mask token k sees only tokens <= k, so "blue" after "left of" differs from "blue" before it
        # whatever the position embeddings are. Each layer's residual branches start at zero (adaLN-zero, ControlNet),
        # so adding causal layers to a trained encoder leaves its output unchanged until training moves them.
        self.causal = nn.ModuleList(layer() for _ in range(cfg.causal_layers))
        for block in self.causal:
            for branch_out in (block.self_attn.out_proj, block.linear2):
                nn.init.zeros_(branch_out.weight)
                nn.init.zeros_(branch_out.bias)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, L, D)
        if self.cfg.layers:
            h = self.blocks(h, src_key_padding_mask=~mask)
        if len(self.causal):
            future = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).triu(1)
            for block in self.causal:  # padding comes after <eos>, so the causal mask already hides it from real tokens
                h = block(h, src_mask=future)
        h = self.norm(h)
        eos = mask.sum(1) - 1  # index of <eos>
        pooled = h[torch.arange(len(ids), device=ids.device), eos]  # (B, D)
        return {"context": h, "context_mask": mask, "pooled": pooled}

    def encode(self, texts: list[str], device=None) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenizer(texts)
        return self(ids.to(device), mask.to(device))
