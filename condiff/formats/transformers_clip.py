"""A transformers CLIP folder (config.json of model_type "clip", model.safetensors, a tokenizer) as a guidance judge
with condiff CLIP's contract, so CLIP guidance (clip_x0, CLIP-optimised x_T) can be judged by OpenAI's CLIP or any
CLIPModel a user holds:

    clip = TransformersCLIP.load(folder)
    clip.encode_image(x)         # x in [-1, 1] at any size -> unit image embeddings (B, D); differentiable
    clip.encode_text(texts)      # -> unit text embeddings (B, D)
    clip.logit_scale             # log of CLIP's temperature (exp(tau) < 100)

encode_image does in tensors what CLIPImageProcessor does to a square picture: resize to the vision tower's side
(bicubic, antialiased), then CLIP's per-channel mean and std (from preprocessor_config.json when the folder has one).
The tower is clean (not noise-aware): it judges x0_hat, never x_t.

Imports transformers (the `sd` extra): formats/__init__ imports this module only for such a folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTokenizer

from ..config import ConfigError
from .diffusers_sd import check_safetensors, quiet

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's image normalisation (CLIPImageProcessor's default)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR = "preprocessor_config.json"


class TransformersCLIP(nn.Module):
    """transformers' CLIPModel and its tokenizer behind condiff's CLIP judge contract."""

    noise_aware = False

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.resolution = model.config.vision_config.image_size
        self.max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the vision tower's input: CLIP's side, [0, 1], normalised per channel."""
        x = (x.float() + 1) / 2
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", antialias=True,
                              align_corners=False)
        return (x - self.mean) / self.std

    def encode_image(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if t is not None and bool((t != 0).any()):
            raise ValueError("a transformers CLIP is not noise-aware: it judges clean images (x0_hat), not x_t")
        pooled = self.model.vision_model(pixel_values=self.pixel_values(x)).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        return F.normalize(self.model.text_projection(pooled), dim=-1)

    @classmethod
    def load(cls, folder: str | Path) -> "TransformersCLIP":
        """The CLIP at folder, in float32 on the CPU; one-line ConfigError for a folder that is not whole."""
        folder = Path(folder)
        weights = sorted(folder.glob("model*.safetensors"))
        if not weights:
            raise ConfigError(f"{folder}: no model.safetensors (pickled .bin weights are never unpickled)")
        for f in weights:
            check_safetensors(f)
        if not (folder / "tokenizer.json").is_file() and not ((folder / "vocab.json").is_file()
                                                              and (folder / "merges.txt").is_file()):
            raise ConfigError(f"{folder}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
        quiet()
        try:
            model = CLIPModel.from_pretrained(folder, use_safetensors=True)
            tokenizer = CLIPTokenizer.from_pretrained(folder)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ConfigError(f"{folder}: cannot load the CLIP ({str(e).strip().splitlines()[0]})") from None
        mean, std = CLIP_MEAN, CLIP_STD
        if (folder / PREPROCESSOR).is_file():
            pre = json.loads((folder / PREPROCESSOR).read_text())
            mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
        return cls(model.float().eval(), tokenizer, mean, std)
