"""Training a text-conditional diffusion upsampler (GLIDE / Imagen super-resolution) with conditioning augmentation.

A batch is the data's images at the output size; the low-res input is the same images box-filtered down by `scale`
(for the world: the scene rendered at the low size), corrupted by noise-conditioning augmentation at a random level
aug_t (told to the network) and, with probability p_blur, by a Gaussian blur (CDM), then upsampled and concatenated
to x_t. The network is fully convolutional (pooled text in the embedding, no attention), so it trains on random
crops of the pair and samples whole images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...config import ConfigError
from ...data import DataConfig
from ...diffusion.augment import downsample, gaussian_blur, upsample
from ...diffusion.denoiser import DiffusionConfig, Prediction
from ...diffusion.loss import diffusion_loss, min_snr_weight, sample_timesteps
from ...diffusion.schedule import NoiseSchedule
from ...eval.grid import save_judged_grid
from ...nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder
from ...nets.unet import UNet, UNetConfig
from ...pipelines.upsample import UpsamplePipeline
from ..config import defaults, LossConfig, LossWeighting, OptimConfig, RunSettings
from ..task import TaskDefaults
from .text2image import SAMPLE_PROMPTS, FrozenTextCache

SCALES = (2, 4)


@dataclass
class AugmentConfig:
    """Conditioning augmentation of the low-res input in training (Ho et al. 2022; Saharia et al. 2022)."""
    max_level: int = 250  # aug_t ~ Uniform{0, ..., max_level - 1} timesteps of the schedule; 0: no noise augmentation
    p_blur: float = 0.5  # probability of blurring the low-res input
    blur_sigma: tuple[float, float] = (0.4, 0.6)  # blur sigma ~ Uniform(lo, hi), in low-res pixels


def upsampler_unet() -> UNetConfig:
    return UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(),
                      middle_attention=False, noise_level_embed=True)



@dataclass
class UpsamplerTrainConfig(RunSettings):
    model: str = "upsampler"
    seed: int = 0
    data: DataConfig = defaults(DataConfig, resolution=128)  # the output size
    scale: int = 2  # output / input side
    crop: int = 64  # train on random crops this wide of the (output-size) pair; 0: whole images
    pretrained_text: PretrainedTextConfig = field(default_factory=PretrainedTextConfig)
    unet: UNetConfig = field(default_factory=upsampler_unet)
    pipeline: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(prediction=Prediction.V))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = defaults(OptimConfig, steps=2000, batch_size=16, lr=2e-4, warmup_steps=100,
                                  ema_decay=0.999, p_uncond=0.1)
    loss: LossConfig = field(default_factory=LossConfig)
    sample_every: int = 1000  # 0: never


class UpsamplerTask(TaskDefaults):
    name, config_cls = "upsampler", UpsamplerTrainConfig

    def build(self, cfg: UpsamplerTrainConfig, data, resume: bool) -> UNet:
        res = cfg.data.resolution
        if cfg.scale not in SCALES or res % cfg.scale:
            raise ConfigError(f"scale: must be one of {SCALES} and divide data.resolution {res}, got {cfg.scale}")
        if cfg.crop and (cfg.crop > res or cfg.crop % (cfg.scale * 2 ** (len(cfg.unet.channel_mult) - 1))):
            raise ConfigError(f"crop: {cfg.crop} must be at most data.resolution {res} and a multiple of scale times "
                              "the UNet's total downsampling")
        if cfg.unet.attention_resolutions or cfg.unet.middle_attention:
            raise ConfigError("unet: an upsampler trained on crops must be fully convolutional "
                              "(attention_resolutions [] and middle_attention false)")
        if not 0 <= cfg.augment.max_level <= cfg.pipeline.schedule.num_timesteps:
            raise ConfigError(f"augment.max_level: must be in 0..{cfg.pipeline.schedule.num_timesteps}")
        cfg.unet.resolution, cfg.unet.in_channels, cfg.unet.extra_in_channels = cfg.crop or res, 3, 3
        cfg.unet.out_channels, cfg.unet.context_dim, cfg.unet.noise_level_embed = 3, cfg.pretrained_text.width, True
        return UNet(cfg.unet)

    def prepare(self, run) -> None:
        run.state["schedule"] = NoiseSchedule.from_config(run.cfg.pipeline.schedule)
        run.state["text"] = FrozenTextCache(PretrainedTextEncoder(run.cfg.pretrained_text).to(run.device))

    def low_res(self, run, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented low-res input at the output size, aug_t) for a batch of output-size images."""
        cfg, g, B = run.cfg, run.generator, len(images)
        low = downsample(images, cfg.scale)
        a = cfg.augment
        blur = torch.rand(B, generator=g) < a.p_blur
        sigma = torch.where(blur, a.blur_sigma[0] + (a.blur_sigma[1] - a.blur_sigma[0]) * torch.rand(B, generator=g), 0.0)
        if blur.any():
            low = gaussian_blur(low, sigma.to(low.device))
        level = torch.randint(0, max(1, a.max_level), (B,), generator=g).to(images.device)
        if a.max_level:
            low = run.state["schedule"].q_sample(low, level, torch.randn(low.shape, generator=g).to(low.device))
        return upsample(low, images.shape[-1]), level

    def crop(self, run, *images: torch.Tensor) -> list[torch.Tensor]:
        """The same random crop (one per image) of each tensor."""
        c, B, size = run.cfg.crop, len(images[0]), images[0].shape[-1]
        if not c or c == size:
            return list(images)
        ij = torch.randint(0, size - c + 1, (B, 2), generator=run.generator).tolist()
        return [torch.stack([x[b, :, i:i + c, j:j + c] for b, (i, j) in enumerate(ij)]) for x in images]

    def loss(self, run, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        cfg, schedule, g = run.cfg, run.state["schedule"], run.generator
        B, device = len(captions), images.device
        drop = torch.rand(B, generator=g) < cfg.optim.p_uncond
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        low, level = self.low_res(run, images)
        x0, low = self.crop(run, images, low)
        t = sample_timesteps(B, schedule.T, g, device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        cond = run.state["text"].encode(captions, device)
        weight = None
        if LossWeighting(cfg.loss.weighting) is LossWeighting.MIN_SNR:
            weight = min_snr_weight(schedule, t, cfg.pipeline.prediction, cfg.loss.min_snr_gamma)
        return diffusion_loss(run.model, schedule, cfg.pipeline.prediction, x0, t, eps, weight=weight,
                              low_res=low, noise_level=level, **cond)

    def pipeline(self, run):
        return UpsamplePipeline(run.state["text"].encoder, run.ema.model, run.cfg.pipeline, run.cfg.scale)

    def export(self, run, folder: Path) -> None:
        self.pipeline(run).save_pretrained(folder)

    def sample(self, run, prompts: list[str] = SAMPLE_PROMPTS, steps: int = 20) -> Path:
        """Fixed scenes of the data, box-filtered down and upsampled by the EMA model, framed by the oracle."""
        images, captions = run.data.batch(run.cfg.seed + 1, 0, 8)
        low = downsample(images, run.cfg.scale)
        out = self.pipeline(run).upscale(low, captions, list(range(len(captions))), steps=steps).cpu()
        return save_judged_grid(out, captions, run.folder / "samples" / f"step_{run.step:08d}.png")
