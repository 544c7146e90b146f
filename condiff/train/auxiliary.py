"""Training the models that judge and guide: condiff CLIP (clean or noised) and the noise-aware classifier.

Same habits as the diffusion trainer: one JSON config, seeded data stream, EMA, atomic safetensors checkpoints,
exact --resume. The trained model lands in <out>/model (config.json + model.safetensors).
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, load_json, save_json
from ..data import DataConfig, make_dataset
from ..diffusion.loss import sample_timesteps
from ..diffusion.schedule import NoiseSchedule, ScheduleConfig
from ..io import replace_dir, save_component
from ..nets.classifier import ClassifierConfig, NoisyClassifier, batch_labels
from ..nets.clip import CLIP, CLIPConfig, contrastive_loss
from ..world.distractors import distractor_captions
from ..world.grammar import PromptError
from .ema import EMA
from .state import latest_checkpoint, load_state, save_state


class AuxModel(str, enum.Enum):
    CLIP = "clip"
    CLASSIFIER = "classifier"


@dataclass
class AuxOptimConfig:
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class AuxTrainConfig:
    model: AuxModel = AuxModel.CLIP
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # noise levels seen by a noise-aware tower
    optim: AuxOptimConfig = field(default_factory=AuxOptimConfig)
    hard_negatives: bool = True  # CLIP: add one distractor caption per image as an extra negative (NegCLIP)
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2


def build(cfg: AuxTrainConfig, vocab: list[str]) -> nn.Module:
    if AuxModel(cfg.model) is AuxModel.CLIP:
        if not cfg.clip.text.vocab:
            cfg.clip.text.vocab = list(vocab)
        cfg.clip.image.resolution = cfg.data.resolution
        return CLIP(cfg.clip)
    cfg.classifier.image.resolution = cfg.data.resolution
    return NoisyClassifier(cfg.classifier)


def noise_aware(cfg: AuxTrainConfig) -> bool:
    return AuxModel(cfg.model) is AuxModel.CLASSIFIER or cfg.clip.image.noise_aware


def aux_loss(cfg: AuxTrainConfig, model: nn.Module, schedule: NoiseSchedule, images, captions, generator):
    """CLIP: symmetric InfoNCE; classifier: -log p(y | x_t). Noise-aware models see x_t at t ~ U{0..T-1}."""
    t = None
    if noise_aware(cfg):
        t = sample_timesteps(len(captions), schedule.T, generator, images.device)
        eps = torch.randn(images.shape, generator=generator).to(images.device)
        images = schedule.q_sample(images, t, eps)
    if AuxModel(cfg.model) is AuxModel.CLIP:
        texts = captions + (hard_negatives(captions, generator) if cfg.hard_negatives else [])
        return contrastive_loss(model.logits(model.encode_image(images, t), model.encode_text(texts)), captions)
    present, count = batch_labels(captions, images.device)
    return -model.log_prob(images, t, present, count).mean()


def hard_negatives(captions: list[str], generator: torch.Generator) -> list[str]:
    """One distractor per world caption (flipped relation, swapped binding, other count...); none for other text.

    Without them the in-batch negatives almost never differ from a caption by its relation alone, and CLIP learns
    a bag of words (Yuksekgonul et al. 2023): on position scenes it picks the flipped caption as often as the true one.
    """
    out = []
    for c in captions:
        try:
            ds = distractor_captions(c)
        except PromptError:
            continue
        if ds:
            out.append(ds[int(torch.randint(len(ds), (1,), generator=generator))])
    return out


def model_config(cfg: AuxTrainConfig):
    return cfg.clip if AuxModel(cfg.model) is AuxModel.CLIP else cfg.classifier


def train_aux(cfg: AuxTrainConfig, folder: Path, resume: bool = False, device: str | None = None) -> nn.Module:
    """Train; returns the EMA model (eval mode)."""
    from tqdm.auto import tqdm

    from .trainer import lr_at

    folder = Path(folder)
    if not resume and (folder / "checkpoints" / "latest").exists():
        raise ConfigError(f"'{folder}' already holds a training run: pass --resume, or choose another --out")
    if resume:
        steps = cfg.optim.steps
        cfg = load_json(AuxTrainConfig, folder / "config.json")
        cfg.optim.steps = max(steps, cfg.optim.steps)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    data = make_dataset(cfg.data)
    model = build(cfg, data.vocab if hasattr(data, "vocab") else []).to(device)
    ema = EMA(model, cfg.optim.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    schedule = NoiseSchedule.from_config(cfg.schedule)
    step = load_state(latest_checkpoint(folder), model, ema.model, opt, generator) if resume else 0
    if not resume:
        save_json(cfg, folder / "config.json")
    bar = tqdm(total=cfg.optim.steps, initial=step, desc=f"training {AuxModel(cfg.model).value}", unit="step",
               dynamic_ncols=True)
    start, start_step, loss_avg = time.time(), step, None
    while step < cfg.optim.steps:
        images, captions = data.batch(cfg.seed, step, cfg.optim.batch_size, device)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss = aux_loss(cfg, model, schedule, images, captions, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        step += 1
        ema.update(model, step)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.optim.steps:
            rate = (step - start_step) / (time.time() - start)
            bar.set_postfix(loss=f"{loss_avg:.4f}", img_s=f"{rate * cfg.optim.batch_size:.0f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.optim.steps:
            save_state(folder, step, model, ema.model, opt, generator, cfg.keep_checkpoints)
            tmp = folder / "model.tmp"
            save_component(ema.model, model_config(cfg), tmp)
            replace_dir(tmp, folder / "model")
    bar.close()
    return ema.model.eval()
