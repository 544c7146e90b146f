"""The models that judge and guide: condiff CLIP (clean or noised) and the noise-aware classifier.

Configs name their kind ("model": "clip" | "classifier"); the trained model lands in <out>/model
(config.json + model.safetensors).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ... import components
from ...data import DataConfig
from ...diffusion.loss import sample_timesteps
from ...diffusion.schedule import NoiseSchedule, ScheduleConfig
from ...nets.classifier import ClassifierConfig, NoisyClassifier, batch_labels
from ...nets.clip import CLIP, CLIPConfig, contrastive_loss
from ...world.distractors import distractor_captions
from ...world.grammar import PromptError
from ..config import defaults, OptimConfig, RunSettings
from ..task import TaskDefaults


class AuxModel(str, enum.Enum):
    CLIP = "clip"
    CLASSIFIER = "classifier"



@dataclass
class AuxTrainConfig(RunSettings):
    model: AuxModel = AuxModel.CLIP
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # noise levels seen by a noise-aware tower
    optim: OptimConfig = defaults(OptimConfig, steps=3000, batch_size=256, lr=1e-3, warmup_steps=200,
                                  weight_decay=0.01, ema_decay=0.999, p_uncond=0.0)
    hard_negatives: bool = True  # CLIP: add one distractor caption per image as an extra negative (NegCLIP)


def hard_negatives(captions: list[str], generator: torch.Generator) -> list[str]:
    """One distractor per world caption (a changed colour, shape, count or relation); other captions get none."""
    out = []
    for c in captions:
        try:
            ds = distractor_captions(c)
        except PromptError:
            continue
        if ds:
            out.append(ds[int(torch.randint(len(ds), (1,), generator=generator))])
    return out


class JudgeTask(TaskDefaults):
    """CLIP: symmetric InfoNCE (+ hard negatives); classifier: -log p(y | x_t). Noise-aware models see x_t."""

    config_cls = AuxTrainConfig

    def __init__(self, kind: str):
        self.name, self.kind = kind, AuxModel(kind)
        self.batch_coupled = self.kind is AuxModel.CLIP  # InfoNCE's negatives are the rest of the batch

    def build(self, cfg: AuxTrainConfig, data, resume: bool) -> nn.Module:
        if self.kind is AuxModel.CLIP:
            if cfg.clip.pretrained_text is None and not cfg.clip.text.vocab:
                cfg.clip.text.vocab = list(getattr(data, "vocab", []))
            cfg.clip.image.resolution = cfg.data.resolution
            return CLIP(cfg.clip)
        cfg.classifier.image.resolution = cfg.data.resolution
        return NoisyClassifier(cfg.classifier)

    def prepare(self, run) -> None:
        run.state["schedule"] = NoiseSchedule.from_config(run.cfg.schedule)

    def noise_aware(self, cfg: AuxTrainConfig) -> bool:
        return self.kind is AuxModel.CLASSIFIER or cfg.clip.image.noise_aware

    def loss(self, run, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        cfg, model, schedule, generator = run.cfg, run.model, run.state["schedule"], run.generator
        t = None
        if self.noise_aware(cfg):
            t = sample_timesteps(len(captions), schedule.T, generator, images.device)
            eps = torch.randn(images.shape, generator=generator).to(images.device)
            images = schedule.q_sample(images, t, eps)
        if self.kind is AuxModel.CLIP:
            texts = captions + (hard_negatives(captions, generator) if cfg.hard_negatives else [])
            return contrastive_loss(model.logits(model.encode_image(images, t), model.encode_text(texts)), captions)
        present, count = batch_labels(captions, images.device)
        return -model.log_prob(images, t, present, count).mean()

    def export(self, run, folder: Path) -> None:
        components.save(run.ema.model, folder)  # its cfg: the run's clip or classifier config, filled in by build
