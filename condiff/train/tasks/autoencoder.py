"""The first stage of latent diffusion: a KL or VQ autoencoder trained on reconstruction.

KL (Rombach et al. 2022, App. G): L = |x - D(z)|_1 (+ MSE) + beta KL(q(z|x) || N(0, I)), with beta small and the KL
summed over latent elements and divided by the image's element count (LDM's per-pixel-summed NLL, per pixel).
VQ (van den Oord et al. 2017): L = |x - D(z_q)|_1 + commitment |z_e - sg(z_q)|^2, codebook by EMA, dead codes
restarted from the batch; codebook perplexity and usage are logged.
At every export the latent scale factor 1 / std(z) is measured on the data and written into the config.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ...data import DataConfig
from ...eval.grid import save_grid
from ...io import load_component, replace_dir, save_component
from ...nets.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    AutoencoderKind,
    gaussian_kl,
    perplexity,
)
from ...world.grammar import PromptError
from ...world.render import to_uint8
from ..config import defaults, InitConfig, OptimConfig, RunSettings
from ..task import TaskDefaults


@dataclass
class AutoencoderLossConfig:
    l1: float = 1.0
    l2: float = 0.0
    kl_weight: float = 1e-6  # KL only
    commitment: float = 0.25  # VQ only: beta of van den Oord et al.



@dataclass
class AutoencoderTrainConfig(RunSettings):
    model: str = "autoencoder"
    seed: int = 0
    data: DataConfig = defaults(DataConfig, resolution=64)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    # LDM's base rate 4.5e-4 (it scales it with the batch; we do not); no condition dropout
    optim: OptimConfig = defaults(OptimConfig, steps=6000, batch_size=32, lr=4.5e-4, warmup_steps=200,
                                  ema_decay=0.999, p_uncond=0.0)
    scale_images: int = 256  # images encoded at each export to measure the latent scale factor
    sample_every: int = 1000  # reconstruction grids; 0: never
    init: InitConfig = field(default_factory=InitConfig)  # fine-tune a saved autoencoder of the same architecture


def reconstruction_loss(cfg: AutoencoderLossConfig, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    x, x_rec = x.float(), x_rec.float()
    loss = cfg.l1 * (x - x_rec).abs().mean()
    return loss + cfg.l2 * F.mse_loss(x_rec, x) if cfg.l2 else loss


def autoencoder_loss(model: Autoencoder, cfg: AutoencoderLossConfig, x: torch.Tensor, generator: torch.Generator):
    """(loss, logs) for one batch; a VQ model's codebook moves by EMA here (training mode only)."""
    mean, logvar = model.moments(x)
    if model.quantizer is None:
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator).to(mean)
        kl = gaussian_kl(mean.float(), logvar.float()) / x[0].numel()  # (B,)
        x_rec = model.decoder(z)
        return reconstruction_loss(cfg, x, x_rec) + cfg.kl_weight * kl.mean(), {}
    z_q, idx = model.quantizer(mean)
    if model.training:
        model.quantizer.ema_update(mean.detach(), idx, generator)
    commit = F.mse_loss(mean.float(), z_q.detach().float())
    x_rec = model.decoder(z_q)
    size = model.cfg.codebook_size
    logs = {"ppl": f"{perplexity(idx, size):.0f}", "used": f"{idx.unique().numel() / size:.2f}"}
    return reconstruction_loss(cfg, x, x_rec) + cfg.commitment * commit, logs


@torch.no_grad()
def measure_scale_factor(model: Autoencoder, images: torch.Tensor) -> float:
    """1 / std of the unscaled latents (posterior means, or the pre-quantisation z of VQ) of these images."""
    z = model.moments(images)[0]
    return float(1.0 / z.float().std())


def init_from_saved(model: Autoencoder, folder: Path) -> None:
    """Load a saved autoencoder's weights into model; every architecture field must match (not the resolution or the
    scale factor, which the run measures again)."""
    if not (folder / "config.json").is_file():
        raise ConfigError(f"init.from_model: '{folder}' is not a saved autoencoder (no config.json)")
    saved = load_component(Autoencoder, AutoencoderConfig, folder)
    same = lambda a, b: list(a) == list(b) if isinstance(a, (list, tuple)) else a == b  # noqa: E731  (JSON: lists)
    diff = [k for k in vars(model.cfg) if k not in ("resolution", "scale_factor")
            and not same(getattr(model.cfg, k), getattr(saved.cfg, k))]
    if diff:
        raise ConfigError(f"init.from_model: '{folder}' differs from the run's autoencoder in {', '.join(diff)}")
    model.load_state_dict({k: v.float() for k, v in saved.state_dict().items()})


class AutoencoderTask(TaskDefaults):
    name, config_cls = "autoencoder", AutoencoderTrainConfig

    def build(self, cfg: AutoencoderTrainConfig, data, resume: bool) -> nn.Module:
        ae = cfg.autoencoder
        ae.resolution = cfg.data.resolution
        if cfg.data.resolution % ae.factor:
            raise ConfigError(f"data.resolution {cfg.data.resolution} is not divisible by the autoencoder's factor {ae.factor}")
        if AutoencoderKind(ae.kind) is AutoencoderKind.VQ and ae.codebook_size < 2:
            raise ConfigError(f"autoencoder.codebook_size must be at least 2, got {ae.codebook_size}")
        model = Autoencoder(ae)
        if cfg.init.from_model and not resume:
            init_from_saved(model, Path(cfg.init.from_model))
        return model

    def prepare(self, run) -> None:
        pass

    def loss(self, run, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        loss, run.logs = autoencoder_loss(run.model, run.cfg.loss, images, run.generator)
        return loss

    def scale_images(self, run) -> torch.Tensor:
        """Fixed images (seed 10^6, never a training step's) for the scale factor and the reconstruction grid;
        rendered once per run, not at every export."""
        if "scale_images" not in run.state:
            run.state["scale_images"] = run.data.batch(run.cfg.seed + 10 ** 6, 0, run.cfg.scale_images, run.device)
        return run.state["scale_images"]

    def export(self, run, folder: Path) -> None:
        model = run.ema.model
        cfg = copy.deepcopy(model.cfg)
        cfg.scale_factor = measure_scale_factor(model, self.scale_images(run)[0])
        tmp = folder.with_name(folder.name + ".tmp")
        save_component(model, cfg, tmp)
        replace_dir(tmp, folder)

    def sample(self, run) -> Path:
        """Originals above their reconstructions, framed by the oracle's verdict on each reconstruction."""
        from ...world.oracle import judge
        images, captions = self.scale_images(run)
        images, captions = images[:8], captions[:8]
        with torch.no_grad():
            model = run.ema.model
            rec = model.decode(model.encode(images))
        try:
            verdicts = [None] * 8 + [judge(px, c) for px, c in zip(to_uint8(rec.cpu()).numpy(), captions)]
        except PromptError:
            verdicts = None
        grid = torch.cat([images.cpu(), rec.cpu().clamp(-1, 1)])
        path = run.folder / "samples" / f"step_{run.step:08d}.png"
        save_grid(grid, captions + ["reconstruction"] * 8, path, verdicts)
        return path
