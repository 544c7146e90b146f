"""Noise-aware classifier p(y | x_t, t) over the world's labels (ADM's classifier, Dhariwal & Nichol 2021).

Labels of a caption: which (colour, shape) pairs are present (multi-label, Bernoulli per pair) and how many
objects there are (categorical). Relations are beyond such labels: CLIP guidance covers them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..io import load_component
from ..world.grammar import COLOURS, SHAPES, PromptSpec, parse_caption
from .encoder import ImageEncoder, ImageEncoderConfig

PAIRS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
MAX_COUNT = 4


@dataclass
class ClassifierConfig:
    image: ImageEncoderConfig = field(default_factory=lambda: ImageEncoderConfig(noise_aware=True))


def labels_of(spec: PromptSpec) -> tuple[torch.Tensor, int]:
    """Presence of each pair in PAIRS (float) and the object count."""
    present = torch.zeros(len(PAIRS))
    for o in spec.objects:
        present[PAIRS.index(f"{o.colour} {o.shape}")] = 1.0
    return present, len(spec.objects)


def batch_labels(captions: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, len(PAIRS)) presence and (B,) count index (count - 1) of world captions."""
    labels = [labels_of(parse_caption(c)) for c in captions]
    present = torch.stack([p for p, _ in labels]).to(device)
    count = torch.tensor([n - 1 for _, n in labels], device=device)
    return present, count


class NoisyClassifier(nn.Module):
    """logits(x_t, t): (B, len(PAIRS) + MAX_COUNT); log p(y | x_t) sums the pair Bernoullis and the count term."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        cfg.image.out_dim = len(PAIRS) + MAX_COUNT
        self.encoder = ImageEncoder(cfg.image)

    @property
    def resolution(self) -> int:
        """The image side it reads."""
        return self.cfg.image.resolution

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(x, t)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | None, present: torch.Tensor, count: torch.Tensor):
        """log p(y | x_t) = sum_k log Bernoulli(present_k; sigmoid(l_k)) + log softmax(l_count)[count], per image."""
        logits = self(x, t)
        pair_logits, count_logits = logits[:, : len(PAIRS)], logits[:, len(PAIRS):]
        bern = -F.binary_cross_entropy_with_logits(pair_logits, present, reduction="none").sum(1)
        return bern + count_logits.log_softmax(1).gather(1, count[:, None])[:, 0]


def load_classifier(folder) -> NoisyClassifier:
    return load_component(NoisyClassifier, ClassifierConfig, folder)
