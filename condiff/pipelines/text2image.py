"""Text -> image: text encoder, UNet and a sampler, composed; no diffusion logic of its own."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import load_json, save_json
from ..diffusion.denoiser import Denoiser, Prediction
from ..diffusion.guidance import ClassifierFreeGuidance
from ..diffusion.samplers import PerSampleNoise
from ..diffusion.sampling import SamplingOptions, run_sampler
from ..diffusion.schedule import NoiseSchedule, ScheduleConfig
from ..io import load_component, replace_dir, save_component
from ..nets.text import TextEncoder, TextEncoderConfig
from ..nets.unet import UNet, UNetConfig

Guide = Callable[..., tuple]
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "weights" / "base32"


@dataclass
class PipelineConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: Prediction = Prediction.EPSILON
    learn_sigma: bool = False  # the UNet also outputs the learned-range variance (improved DDPM)


class Text2ImagePipeline:
    def __init__(self, text_encoder: TextEncoder, unet: UNet, cfg: PipelineConfig):
        self.text_encoder, self.unet, self.cfg = text_encoder, unet, cfg
        self.schedule = NoiseSchedule.from_config(cfg.schedule)
        self.denoiser = Denoiser(unet, self.schedule, cfg.prediction, cfg.learn_sigma)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def resolution(self) -> int:
        return self.unet.cfg.resolution

    def to(self, device) -> "Text2ImagePipeline":
        self.text_encoder.to(device)
        self.unet.to(device)
        return self

    @classmethod
    def from_pretrained(cls, folder: str | Path = DEFAULT_MODEL) -> "Text2ImagePipeline":
        folder = Path(folder)
        cfg = load_json(PipelineConfig, folder / "pipeline.json")
        text = load_component(TextEncoder, TextEncoderConfig, folder / "text_encoder")
        unet = load_component(UNet, UNetConfig, folder / "unet")
        return cls(text, unet, cfg)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write all components to a temporary folder, then swap it into place."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        save_json(self.cfg, tmp / "pipeline.json")
        save_component(self.text_encoder, self.text_encoder.cfg, tmp / "text_encoder", dtype)
        save_component(self.unet, self.unet.cfg, tmp / "unet", dtype)
        replace_dir(tmp, folder)

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.text_encoder.encode(prompts, self.device)

    def guided_model(self, prompts: list[str], opts: SamplingOptions):
        """The eps model the sampler sees: classifier-free guidance (scale 1: the plain conditional model)."""
        with torch.no_grad():
            cond, uncond = self.encode(prompts), self.encode([opts.negative_prompt] * len(prompts))
        return ClassifierFreeGuidance(self.denoiser, opts.guidance_scale, cond, uncond, opts.guidance_rescale)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], opts: SamplingOptions = SamplingOptions(),
                 callback: Callable[[dict], None] | None = None, guide: Guide | None = None,
                 init: Callable | None = None) -> torch.Tensor:
        """One image per (prompt, seed): (B, 3, H, W) in [-1, 1]. Image i depends only on prompts[i], seeds[i].

        guide(model, schedule, prompts) -> (model, cond_fn) wraps the model further (classifier or CLIP guidance).
        init(model, schedule, x_T, prompts) -> x_T replaces the initial noise (CLIP-optimised x_T), given the
        unguided-by-judges (CFG) model.
        """
        assert len(prompts) == len(seeds)
        model, cond_fn = self.guided_model(prompts, opts), None
        noise = PerSampleNoise(seeds)
        z = noise((len(seeds), 3, self.resolution, self.resolution), self.device)
        if init is not None:
            z = init(model, self.schedule, z, prompts)
        if guide is not None:
            model, cond_fn = guide(model, self.schedule, prompts)
        return run_sampler(model, self.schedule, z, noise, opts, callback, cond_fn)

    def generate(self, prompts: list[str], seeds: list[int], opts: SamplingOptions = SamplingOptions(),
                 batch_size: int = 64, progress: bool = False, guide: Guide | None = None,
                 init: Callable | None = None) -> torch.Tensor:
        """Like __call__, in batches; (B, 3, H, W) on the CPU."""
        from tqdm.auto import tqdm

        out = []
        for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="generating", unit="batch"):
            out.append(self(prompts[i:i + batch_size], seeds[i:i + batch_size], opts, guide=guide, init=init).cpu())
        return torch.cat(out)
