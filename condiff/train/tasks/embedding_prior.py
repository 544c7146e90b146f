"""Training unCLIP's priors, diffusion (nets/embedding_prior.py) and autoregressive (nets/ar_prior.py): from a caption's
frozen CLIP text states to the CLIP image embedding of its image, on world scenes or a captioned folder (any data with
captions)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ... import components
from ...config import ConfigError, load_json
from ...data import DataConfig
from ...diffusion.denoiser import DiffusionConfig, Prediction
from ...diffusion.schedule import NoiseSchedule
from ...nets.ar_prior import ARPrior, ARPriorConfig, fit_codec
from ...nets.clip import CLIPConfig, image_embeddings, load_clip
from ...nets.embedding_prior import (
    EmbeddingPrior,
    EmbeddingPriorConfig,
    clip_text,
    prior_diffusion,
)
from ..config import defaults, OptimConfig, RunSettings
from ..task import TaskDefaults


@dataclass
class PriorTrainSettings(RunSettings):
    """What both unCLIP priors' training configs share."""
    seed: int = 0
    data: DataConfig = defaults(DataConfig, resolution=64)
    clip: str = "condiff/weights/clip64"  # the frozen CLIP the prior maps between (in the package)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=3000, batch_size=128, lr=3e-4,
                                                                  warmup_steps=200, ema_decay=0.999, p_uncond=0.1))


@dataclass
class EmbeddingPriorTrainConfig(PriorTrainSettings):
    model: str = "embedding_prior"
    prior: EmbeddingPriorConfig = field(default_factory=EmbeddingPriorConfig)
    diffusion: DiffusionConfig = field(default_factory=prior_diffusion)  # DALL-E 2 predicts x0 (the clean z_i)


def read_clip(cfg) -> CLIPConfig:
    """The config of the prior's CLIP, checked (a clean condiff CLIP), its sizes copied into cfg.prior."""
    if not (Path(cfg.clip) / "config.json").is_file():
        raise ConfigError(f"clip: '{cfg.clip}' is not a condiff CLIP folder (no config.json)")
    clip_cfg = load_json(CLIPConfig, Path(cfg.clip) / "config.json")
    if clip_cfg.image.noise_aware:
        raise ConfigError(f"clip: '{cfg.clip}' is noise-aware; the prior maps between a clean CLIP's embeddings")
    cfg.prior.embed_dim, cfg.prior.text_width = clip_cfg.embed_dim, clip_cfg.text.width
    cfg.prior.max_text = clip_cfg.max_text_length
    return clip_cfg


def frozen_clip(folder: str, device):
    return load_clip(folder).to(device).eval().requires_grad_(False)


def embeddings(clip, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, dict]:
    """The unit image embeddings of images and what the prior reads of their captions (clip_text)."""
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        text = clip_text(clip, captions)
    return image_embeddings(clip, images), text


class PriorTask(TaskDefaults):
    """What both priors' tasks share: the frozen CLIP in run.state, and the EMA prior exported as a component."""

    def prepare(self, run) -> None:
        run.state["clip"] = self.take(("clip", run.cfg.clip), lambda: frozen_clip(run.cfg.clip, "cpu")).to(run.device)

    def export(self, run, folder: Path) -> None:
        components.save(run.ema.model, folder)


class EmbeddingPriorTask(PriorTask):
    name, config_cls = "embedding_prior", EmbeddingPriorTrainConfig

    def build(self, cfg: EmbeddingPriorTrainConfig, data, resume: bool) -> nn.Module:
        if Prediction(cfg.diffusion.prediction) is not Prediction.X0 or cfg.diffusion.learn_sigma:
            raise ConfigError("diffusion: the embedding prior predicts x0 (the clean embedding) and no variance")
        read_clip(cfg)
        return EmbeddingPrior(cfg.prior)

    def prepare(self, run) -> None:
        super().prepare(run)
        run.state["schedule"] = NoiseSchedule.from_config(run.cfg.diffusion.schedule)

    def loss(self, run, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        z_image, text = embeddings(run.state["clip"], images, captions)
        return run.model.loss(z_image, text, run.state["schedule"], run.generator, run.cfg.optim.p_uncond)


@dataclass
class ARPriorTrainConfig(PriorTrainSettings):
    model: str = "ar_prior"
    prior: ARPriorConfig = field(default_factory=ARPriorConfig)
    codec_images: int = 4096  # images whose embeddings fit the PCA, the ranges and the dot-product quantiles


CODEC_SEED = 104729  # the codec's images are drawn from the data with seed + this, apart from the training batches


class ARPriorTask(PriorTask):
    """DALL-E 2's autoregressive prior: the PCA codec is fitted on codec_images embeddings before step 0 (kept in
    the run's config as `components` and in the weights as buffers, so --resume refits nothing)."""
    name, config_cls = "ar_prior", ARPriorTrainConfig

    def build(self, cfg: ARPriorTrainConfig, data, resume: bool) -> nn.Module:
        read_clip(cfg)
        if cfg.codec_images < 2 * cfg.prior.embed_dim:
            raise ConfigError(f"codec_images: {cfg.codec_images} embeddings cannot fit a PCA of "
                              f"{cfg.prior.embed_dim} dimensions; give at least {2 * cfg.prior.embed_dim}")
        if cfg.prior.components and resume:
            return ARPrior(cfg.prior)  # the checkpoint holds the fitted codec
        codec = fit_codec(*self.codec_embeddings(cfg, data), cfg.prior.variance_kept, cfg.prior.quantiles)
        cfg.prior.components = len(codec.basis)
        prior = ARPrior(cfg.prior)
        prior.set_codec(codec)
        return prior

    def codec_embeddings(self, cfg: ARPriorTrainConfig, data) -> tuple[torch.Tensor, torch.Tensor]:
        clip, chunk, z_image, z_text = frozen_clip(cfg.clip, "cpu"), 256, [], []
        self.hand_on(("clip", cfg.clip), clip)  # prepare takes it: loaded once
        for i in range(0, cfg.codec_images, chunk):
            images, captions = data.materialize(data.raw(cfg.seed + CODEC_SEED, i // chunk,
                                                         min(chunk, cfg.codec_images - i)), torch.device("cpu"))
            zi, text = embeddings(clip, images, captions)
            z_image.append(zi)
            z_text.append(text["embed"])
        return torch.cat(z_image), torch.cat(z_text)

    def loss(self, run, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        z_image, text = embeddings(run.state["clip"], images, captions)
        return run.model.loss(z_image, text, run.generator, run.cfg.optim.p_uncond)
