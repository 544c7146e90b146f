"""condiff CLIP (Radford et al. 2021): an image tower and a text tower trained contrastively on captioned images.

With a noise-aware image tower it is GLIDE's noised CLIP: f(x_t, t) is trained against the caption of x_0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.augment import at_resolution
from ..io import load_component
from .encoder import ImageEncoder, ImageEncoderConfig
from .pretrained_text import PretrainedTextConfig, PretrainedTextTower
from .text import TextEncoder, TextEncoderConfig


@dataclass
class CLIPConfig:
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    embed_dim: int = 128
    init_temperature: float = 0.07
    # a frozen pretrained encoder as the text tower's base: `text` then gives the trainable layers on top (width,
    # layers, heads; its vocab and max_length are unused: the pretrained tokenizer and max_length apply)
    pretrained_text: PretrainedTextConfig | None = None

    @property
    def max_text_length(self) -> int:
        return self.text.max_length if self.pretrained_text is None else self.pretrained_text.max_length


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        cfg.image.out_dim = cfg.embed_dim
        self.image_encoder = ImageEncoder(cfg.image)
        if cfg.pretrained_text is None:
            self.text_encoder = TextEncoder(cfg.text)
        else:
            self.text_encoder = PretrainedTextTower(cfg.pretrained_text, cfg.text.width, cfg.text.layers, cfg.text.heads)
        self.text_proj = nn.Linear(cfg.text.width, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    @property
    def noise_aware(self) -> bool:
        return self.cfg.image.noise_aware

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def resolution(self) -> int:
        """The image side the image tower reads."""
        return self.cfg.image.resolution

    def encode_image(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-norm image embeddings (B, D); x in [-1, 1] (x_t with its t for a noise-aware tower)."""
        return F.normalize(self.image_encoder(x, t), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings (B, D) from the pooled <eos> state."""
        return self.text_embedding(self.text_encoder.encode(texts, self.device)["pooled"])

    def text_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        """The text tower's pooled state (B, width) -> unit-norm embedding (B, D)."""
        return F.normalize(self.text_proj(pooled), dim=-1)

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """exp(tau) <f(x), g(y)>: (B_images, B_texts)."""
        return self.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T


def contrastive_loss(logits: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE; identical captions in a batch are all positives (uniform soft targets), not negatives.

    logits may have extra text columns after the B captions: hard negatives (NegCLIP, Yuksekgonul et al. 2023),
    which only the image -> text direction sees, with target 0.
    """
    B = len(captions)
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions], device=logits.device)
    same = (key[:, None] == key[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    image_to_text = F.cross_entropy(logits, F.pad(targets, (0, logits.shape[1] - B)))
    return 0.5 * (image_to_text + F.cross_entropy(logits[:, :B].T, targets))


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """CLIPScore (Hessel et al. 2021) with w = 100: 100 max(cos(f(x), g(y)), 0), per pair."""
    return 100 * (image_emb * text_emb).sum(-1).clamp(min=0)


def load_clip(folder) -> CLIP:
    """A trained condiff CLIP from folder/{config.json, model.safetensors}."""
    return load_component(CLIP, CLIPConfig, folder)


def image_embeddings(clip: "CLIP", images: torch.Tensor) -> torch.Tensor:
    """The frozen CLIP's unit image embeddings of images in [-1, 1] at any size (resized to CLIP's)."""
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        return clip.encode_image(at_resolution(images.float().to(clip.device), clip.cfg.image.resolution))
