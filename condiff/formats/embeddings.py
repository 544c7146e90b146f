"""Textual-inversion embeddings (Gal et al. 2022) as files: diffusers' layout (condiff's own) and A1111's.

    diffusers   learned_embeds.safetensors: {token: (D,) or (n, D)}, as `load_textual_inversion` reads it
    A1111       NAME.safetensors: {"emb_params": (n, D)}, the token being the file's name (its .pt files are
                pickles: refused, never loaded)

apply() adds them to a pipeline's text encoder (condiff's frozen BERT, or a Stable Diffusion model's CLIP text model),
so a prompt that says the token reads the learned vectors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import ConfigError
from . import AdapterFile

WEIGHT_NAME = "learned_embeds.safetensors"  # diffusers' file name in a textual-inversion folder
MAX_FILE_BYTES = 64 * 2 ** 20
MAX_VECTORS = 75


@dataclass(frozen=True)
class EmbeddingSpec(AdapterFile):
    weight_name: ClassVar[str] = WEIGHT_NAME
    option: ClassVar[str] = "--embedding"
    kind: ClassVar[str] = "embedding"
    max_bytes: ClassVar[int] = MAX_FILE_BYTES


def read(path: str | Path) -> dict[str, torch.Tensor]:
    """{token: (n, D) float32}; one-line ConfigError for anything else."""
    spec = EmbeddingSpec(str(path))
    file = spec.checked_file()
    try:
        with safe_open(str(file), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"--embedding: '{file}' is not a readable safetensors file ({str(e)[:120]})") from None
    if set(tensors) == {"emb_params"}:  # A1111: the token is the file's name
        tensors = {spec.name: tensors["emb_params"]}
    if not tensors:
        raise ConfigError(f"--embedding: '{file}' holds no embedding")
    out = {}
    for token, v in tensors.items():
        v = v[None] if v.ndim == 1 else v
        if v.ndim != 2 or not 1 <= len(v) <= MAX_VECTORS or not v.is_floating_point() or not v.isfinite().all():
            raise ConfigError(f"--embedding: '{file}': '{token[:40]}' is {tuple(v.shape)} {v.dtype}, not 1 to "
                              f"{MAX_VECTORS} finite vectors")
        if not token.strip() or any(c.isspace() for c in token):
            raise ConfigError(f"--embedding: '{file}': the token {token[:40]!r} is empty or holds spaces")
        out[token] = v.float()
    return out


def write(path: str | Path, concepts: dict[str, torch.Tensor], extra: dict[str, str] | None = None) -> None:
    """diffusers' layout, written beside the target and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().float().contiguous() for k, v in concepts.items()}, str(tmp),
              metadata={"format": "pt"} | (extra or {}))
    tmp.replace(path)


def apply(parts: dict, specs: list[EmbeddingSpec]) -> None:
    """Every file read and checked, then each token added to the pipeline's text encoder."""
    read_all = [read(s.path) for s in specs]
    encoder = parts.get("text_encoder")
    if specs and not hasattr(encoder, "add_concepts"):
        raise ConfigError("--embedding: this model's text encoder takes no new tokens (a learned-vocabulary encoder "
                          "knows only its own words)")
    for spec, concepts in zip(specs, read_all):
        try:
            encoder.add_concepts(concepts)
        except ValueError as e:
            raise ConfigError(f"--embedding: '{spec.path}': {e}") from None
