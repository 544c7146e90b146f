"""Training unCLIP's diffusion prior (nets/embedding_prior.py): from a caption's frozen CLIP text states to the CLIP
image embedding of its image, on world scenes or a captioned folder (any data with captions)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...config import ConfigError, load_json
from ...data import DataConfig
from ...diffusion.denoiser import DiffusionConfig, Prediction
from ...diffusion.schedule import NoiseSchedule
from ...io import replace_dir, save_component
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
class EmbeddingPriorTrainConfig(RunSettings):
    model: str = "embedding_prior"
    seed: int = 0
    data: DataConfig = defaults(DataConfig, resolution=64)
    clip: str = "condiff/weights/clip64"  # the frozen CLIP the prior maps between (in the package)
    prior: EmbeddingPriorConfig = field(default_factory=EmbeddingPriorConfig)
    diffusion: DiffusionConfig = field(default_factory=prior_diffusion)  # DALL-E 2 predicts x0 (the clean z_i)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=3000, batch_size=128, lr=3e-4,
                                                                  warmup_steps=200, ema_decay=0.999, p_uncond=0.1))


class EmbeddingPriorTask(TaskDefaults):
    name, config_cls = "embedding_prior", EmbeddingPriorTrainConfig

    def build(self, cfg: EmbeddingPriorTrainConfig, data, resume: bool) -> nn.Module:
        if not (Path(cfg.clip) / "config.json").is_file():
            raise ConfigError(f"clip: '{cfg.clip}' is not a condiff CLIP folder (no config.json)")
        if Prediction(cfg.diffusion.prediction) is not Prediction.X0 or cfg.diffusion.learn_sigma:
            raise ConfigError("diffusion: the embedding prior predicts x0 (the clean embedding) and no variance")
        clip_cfg = load_json(CLIPConfig, Path(cfg.clip) / "config.json")
        if clip_cfg.image.noise_aware:
            raise ConfigError(f"clip: '{cfg.clip}' is noise-aware; the prior maps between a clean CLIP's embeddings")
        cfg.prior.embed_dim, cfg.prior.text_width = clip_cfg.embed_dim, clip_cfg.text.width
        cfg.prior.max_text = clip_cfg.max_text_length
        return EmbeddingPrior(cfg.prior)

    def prepare(self, run) -> None:
        run.state["clip"] = load_clip(run.cfg.clip).to(run.device).eval().requires_grad_(False)
        run.state["schedule"] = NoiseSchedule.from_config(run.cfg.diffusion.schedule)

    def loss(self, run, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        clip = run.state["clip"]
        with torch.no_grad(), torch.autocast(run.device.type, enabled=False):
            text = clip_text(clip, captions)
        z_image = image_embeddings(clip, images)
        return run.model.loss(z_image, text, run.state["schedule"], run.generator, run.cfg.optim.p_uncond)

    def export(self, run, folder: Path) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        save_component(run.ema.model, run.cfg.prior, tmp)
        replace_dir(tmp, folder)
