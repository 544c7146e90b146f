"""Training a ControlNet on a frozen text-to-image model (Zhang et al. 2023): the copy of the base UNet's encoder and
middle, the control stem and the zero convolutions train; the base model (text encoder, UNet, autoencoder) is frozen.

Each batch's control maps are made from its own images (the edge detector of nets/controlnet.py, as the paper runs
Canny on its training images); captions are dropped with p_drop_caption (the paper: 50%), so that the map alone must
carry the layout. A grounded base model sees no boxes: under a ControlNet the map decides where things go.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ... import components
from ...config import ConfigError
from ...data import DataConfig
from ...diffusion.loss import diffusion_loss, min_snr_weight, sample_timesteps
from ...nets.controlnet import ControlKind, ControlledUNet, ControlNet, ControlNetConfig
from ...nets.pretrained_text import FrozenTextCache
from ...pipelines.controlnet import control_maps
from ...pipelines.text2image import Text2ImagePipeline
from ..config import LossConfig, LossWeighting, OptimConfig, RunSettings, defaults
from ..task import TaskDefaults, base_model
from .text2image import LatentCache


@dataclass
class ControlSettings:
    kind: ControlKind = ControlKind.EDGES
    hint_channels: tuple[int, ...] = (16, 32)


@dataclass
class ControlNetTrainConfig(RunSettings):
    model: str = "controlnet"
    seed: int = 0
    base: str = "condiff/weights/layout64"  # the frozen text-to-image model the ControlNet controls
    control: ControlSettings = field(default_factory=ControlSettings)
    data: DataConfig = defaults(DataConfig, resolution=64)
    p_drop_caption: float = 0.5
    optim: OptimConfig = defaults(OptimConfig, steps=3000, batch_size=32, lr=1e-4, warmup_steps=100, ema_decay=0.999)
    loss: LossConfig = field(default_factory=LossConfig)


class ControlNetTask(TaskDefaults):
    name, config_cls = "controlnet", ControlNetTrainConfig

    def build(self, cfg: ControlNetTrainConfig, data, resume: bool) -> nn.Module:
        if not 0 <= cfg.p_drop_caption <= 1:
            raise ConfigError(f"p_drop_caption must be in [0, 1], got {cfg.p_drop_caption}")
        base = base_model(cfg.base, "base", cfg.data.resolution)
        net_cfg = ControlNetConfig(ControlKind(cfg.control.kind), tuple(cfg.control.hint_channels), base.resolution,
                                   base.unet.cfg)
        try:
            return ControlNet.from_unet(base.unet, net_cfg)  # resume: the checkpoint overwrites these weights
        except ValueError as e:
            raise ConfigError(f"control: {e}") from None

    def prepare(self, run) -> None:
        base = Text2ImagePipeline.from_pretrained(run.cfg.base).to(run.device)
        for part in base.parts.values():
            part.requires_grad_(False)
        run.state["base"] = base
        run.state["text"] = FrozenTextCache(base.text_encoder) if getattr(base.text_encoder, "frozen", False) else None
        if base.autoencoder is not None:
            run.state["latents"] = LatentCache(base.autoencoder.encode)

    def loss(self, run, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        cfg, base, generator = run.cfg, run.state["base"], run.generator
        B, device = len(captions), images.device
        maps = control_maps(images, ControlKind(cfg.control.kind))
        drop = torch.rand(B, generator=generator) < cfg.p_drop_caption
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.no_grad():
            x0 = run.state["latents"](images) if "latents" in run.state else images
            text = run.state["text"] or base.text_encoder
            cond = text.encode(captions, device)
            if base.unet.cfg.grounding_dim:  # no boxes: null grounding tokens, as the base trained on
                cond |= base.grounding_keywords(None, B)[0]
        t = sample_timesteps(B, base.schedule.T, generator, device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        weight = None
        if LossWeighting(cfg.loss.weighting) is LossWeighting.MIN_SNR:
            weight = min_snr_weight(base.schedule, t, base.cfg.prediction, cfg.loss.min_snr_gamma)
        net = ControlledUNet(base.unet, run.model)
        return diffusion_loss(net, base.schedule, base.cfg.prediction, x0, t, eps, weight=weight, control_map=maps, **cond)

    def export(self, run, folder: Path) -> None:
        components.save(run.ema.model, folder)
