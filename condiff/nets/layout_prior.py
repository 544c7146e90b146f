"""A learned layout prior: caption -> a set of (phrase, box), as an autoregressive transformer (Pix2Seq-style).

The caption's frozen token states are the memory of a small causal transformer decoder that writes, per object,
six tokens: the start and end of the object's phrase as caption-token indices, then x0, y0, x1, y1 quantised to
`bins` levels; then <eos>. Decoding is constrained to that grammar of token types, and sampling with a seeded
generator gives varied layouts. Phrases are read back as the caption's text between the span's character offsets,
so generation never parses the caption: the world's grammar only made the training targets (see targets()).

With `pointer` (Vinyals et al. 2015's pointer networks), a span index's logit is the match of the decoder's query
with that caption token's state, not a learned logit for the index: the prior points at the words it means wherever
they are, so a sentence form it never saw ("you can see a red circle ...") does not shift its spans onto other words.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FIELDS = 6  # span start, span end, x0, y0, x1, y1


@dataclass
class LayoutPriorConfig:
    context_dim: int = 384  # the frozen text encoder's width
    width: int = 128
    layers: int = 3
    heads: int = 4
    bins: int = 64  # box coordinates quantised to bins levels in [0, 1]
    max_text: int = 32  # caption tokens (the text encoder's max_length)
    max_objects: int = 4
    pointer: bool = False  # span indices by pointing at the caption's tokens (else: an output class per index)

    @property
    def vocab(self) -> int:
        return self.bins + self.max_text + 2  # coordinates, span indices, <eos>, <bos>

    @property
    def eos(self) -> int:
        return self.bins + self.max_text

    @property
    def bos(self) -> int:
        return self.eos + 1

    @property
    def length(self) -> int:
        return FIELDS * self.max_objects + 1


class LayoutPrior(nn.Module):
    def __init__(self, cfg: LayoutPriorConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.length + 1, cfg.width) * 0.02)
        self.memory = nn.Linear(cfg.context_dim, cfg.width)
        layer = nn.TransformerDecoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)
        self.out = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.vocab))
        if cfg.pointer:
            self.query, self.key = nn.Linear(cfg.width, cfg.width), nn.Linear(cfg.context_dim, cfg.width)

    def logits(self, tokens: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """(B, S) input tokens (starting with <bos>) -> (B, S, vocab) next-token logits."""
        S = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:S]
        causal = torch.ones(S, S, dtype=torch.bool, device=tokens.device).triu(1)
        heads = self.decoder.layers[0].multihead_attn.num_heads
        B, L = context_mask.shape  # padding as a per-head attention mask: the same sums as memory_key_padding_mask,
        # whose shape check imports sympy (0.5 s of a cold generate)
        pad = (~context_mask)[:, None, None, :].expand(B, heads, S, L).reshape(B * heads, S, L)
        h = self.decoder(h, self.memory(context), tgt_mask=causal, memory_mask=pad)
        logits = self.out(h)
        if self.cfg.pointer:
            logits = self.point(logits, self.out[0](h), context, context_mask)
        return logits

    def point(self, logits: torch.Tensor, h: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor):
        """logits with each span index's replaced by q(h) . k(token state) / sqrt(width); padding and indices past
        the caption get -1e4 (the decoding grammar never allows them)."""
        cfg, L = self.cfg, context.shape[1]
        match = self.query(h) @ self.key(context).transpose(1, 2) / cfg.width ** 0.5  # (B, S, L)
        match = match.masked_fill(~context_mask[:, None, :], -1e4)
        past = match.new_full((*match.shape[:2], cfg.max_text - L), -1e4)
        return torch.cat([logits[..., :cfg.bins], match.to(logits.dtype), past.to(logits.dtype),
                          logits[..., cfg.bins + cfg.max_text:]], dim=-1)

    def loss(self, targets: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of target sequences (B, S) (padding -100 after <eos>) under teacher forcing."""
        bos = torch.full((len(targets), 1), self.cfg.bos, dtype=torch.long, device=targets.device)
        inputs = torch.cat([bos, targets[:, :-1].clamp(min=0)], dim=1)
        return F.cross_entropy(self.logits(inputs, context, context_mask).flatten(0, 1).float(), targets.flatten(),
                               ignore_index=-100)

    def allowed(self, position: int, n_text: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
        """(B, vocab) mask of the token types that may come at a sequence position (the decoding grammar)."""
        cfg, B = self.cfg, len(n_text)
        field, obj = position % FIELDS, position // FIELDS
        ok = torch.zeros(B, cfg.vocab, dtype=torch.bool, device=n_text.device)
        idx = torch.arange(cfg.max_text, device=n_text.device)
        if field == 0:  # a span start (a real caption token, not [CLS] or [SEP]), or the end of the list
            ok[:, cfg.bins:cfg.bins + cfg.max_text] = (idx[None] >= 1) & (idx[None] < n_text[:, None] - 1)
            ok[:, cfg.eos] = obj > 0
            if obj == cfg.max_objects:
                ok[:] = False
                ok[:, cfg.eos] = True
        elif field == 1:  # a span end, at or after its start
            ok[:, cfg.bins:cfg.bins + cfg.max_text] = (idx[None] >= start[:, None]) & (idx[None] < n_text[:, None] - 1)
        else:
            ok[:, :cfg.bins] = True
        return ok

    @torch.no_grad()
    def sample(self, context: torch.Tensor, context_mask: torch.Tensor, generators: list[torch.Generator],
               temperature: float = 1.0) -> torch.Tensor:
        """(B, S) sampled sequences, row i drawn with generators[i] alone; after <eos> every token is <eos>."""
        cfg, B, device = self.cfg, len(context), context.device
        n_text = context_mask.sum(1)
        tokens = torch.full((B, 1), cfg.bos, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        start = None
        for position in range(cfg.length):
            logits = self.logits(tokens, context, context_mask)[:, -1].float() / max(temperature, 1e-6)
            ok = self.allowed(position, n_text, start)
            ok[done] = False
            ok[done, cfg.eos] = True  # a finished row only repeats <eos>
            logits = logits.masked_fill(~ok, float("-inf"))
            probs = logits.softmax(-1).cpu()
            nxt = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)]).to(device)
            if position % FIELDS == 0:
                start = (nxt - cfg.bins).clamp(min=0)
            done = done | (nxt == cfg.eos)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if done.all():
                break
        return tokens[:, 1:]


def quantise(v: float, bins: int) -> int:
    return min(bins - 1, max(0, int(v * bins)))


def dequantise(k: int, bins: int) -> float:
    return (k + 0.5) / bins


def decode_layout(cfg: LayoutPriorConfig, seq: list[int], caption: str, offsets: list[tuple[int, int]]) -> list[dict]:
    """A sampled sequence -> [{"phrase", "box"}]: the phrase is the caption text under the span's token offsets."""
    out = []
    for i in range(0, len(seq) - FIELDS + 1, FIELDS):
        chunk = seq[i:i + FIELDS]
        if chunk[0] == cfg.eos or any(t == cfg.eos for t in chunk):
            break
        s, e = chunk[0] - cfg.bins, chunk[1] - cfg.bins
        x0, y0, x1, y1 = (dequantise(k, cfg.bins) for k in chunk[2:])
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        phrase = caption[offsets[s][0]:offsets[e][1]]
        out.append({"phrase": phrase, "box": [x0, y0, max(x1, x0 + 1 / cfg.bins), max(y1, y0 + 1 / cfg.bins)]})
    return out


def target_sequence(cfg: LayoutPriorConfig, spans: list[tuple[int, int]], boxes: list[list[float]]) -> list[int]:
    """Training target for one caption: per object its span and quantised box, then <eos>, padded with -100."""
    seq = []
    for (s, e), box in list(zip(spans, boxes))[:cfg.max_objects]:
        seq += [cfg.bins + s, cfg.bins + e] + [quantise(v, cfg.bins) for v in box]
    seq.append(cfg.eos)
    return seq + [-100] * (cfg.length - len(seq))


def sample_layouts(prior: LayoutPrior, text_encoder, captions: list[str], seeds: list[int],
                   temperature: float = 1.0) -> list[list[dict]]:
    """Each caption's sampled [{"phrase", "box"}]; layout i depends on captions[i] and seeds[i] alone."""
    cond = text_encoder.encode(captions, next(prior.parameters()).device)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    seqs = prior.sample(cond["context"], cond["context_mask"], gens, temperature).tolist()
    tok = text_encoder.tokenizer.tok
    return [decode_layout(prior.cfg, seq, c, tok.encode(c).offsets) for seq, c in zip(seqs, captions)]
