"""Training, split into setup, step, sample and save (nanoGPT style)."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, load_json, save_json
from ..data import make_dataset
from ..diffusion.loss import diffusion_loss, hybrid_loss, min_snr_weight, sample_timesteps
from ..diffusion.sampling import SamplingOptions
from ..diffusion.schedule import NoiseSchedule
from ..nets.text import TextEncoder
from ..nets.unet import UNet
from ..pipelines.text2image import Text2ImagePipeline
from .config import LossWeighting, Precision, TrainConfig
from .ema import EMA
from .state import latest_checkpoint, load_state, save_state

SAMPLE_PROMPTS = [
    "a red circle", "a small blue square", "a large yellow triangle", "three green circles",
    "a white square and an orange circle", "a red circle to the left of a blue square",
    "a cyan triangle above a purple square", "a purple triangle",
]


class TextToImageModel(nn.Module):
    """The trained components, held together for one optimizer and one EMA."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.text_encoder = TextEncoder(cfg.text)
        self.unet = UNet(cfg.unet)

    def loss(self, cfg: TrainConfig, schedule, images, captions, generator) -> torch.Tensor:
        B, device = len(captions), images.device
        drop = torch.rand(B, generator=generator) < cfg.optim.p_uncond  # condition dropout (CFG)
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        t = sample_timesteps(B, schedule.T, generator, device)
        eps = torch.randn(images.shape, generator=generator).to(device)
        cond = self.text_encoder.encode(captions, device)
        loss_fn = hybrid_loss if cfg.pipeline.learn_sigma else diffusion_loss
        weight = None
        if LossWeighting(cfg.loss.weighting) is LossWeighting.MIN_SNR:
            weight = min_snr_weight(schedule, t, cfg.pipeline.prediction, cfg.loss.min_snr_gamma)
        return loss_fn(self.unet, schedule, cfg.pipeline.prediction, images, t, eps, weight=weight, **cond)


@dataclass
class Run:
    cfg: TrainConfig
    folder: Path
    data: object
    model: TextToImageModel
    ema: EMA
    opt: torch.optim.Optimizer
    generator: torch.Generator
    device: torch.device
    schedule: NoiseSchedule
    step: int = 0

    def pipeline(self) -> Text2ImagePipeline:
        m = self.ema.model
        return Text2ImagePipeline(m.text_encoder, m.unet, self.cfg.pipeline)

    def autocast(self):
        if Precision(self.cfg.precision) is Precision.BF16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def setup(cfg: TrainConfig, folder: Path, resume: bool = False, device: str | None = None) -> Run:
    """Build data, model, EMA and optimizer; with resume, restore the latest checkpoint exactly."""
    folder = Path(folder)
    if not resume and (folder / "checkpoints" / "latest").exists():
        raise ConfigError(f"'{folder}' already holds a training run: pass --resume, or choose another --out")
    if resume:  # the run's own config wins; only the step budget may be extended
        steps = cfg.optim.steps
        cfg = load_json(TrainConfig, folder / "config.json")
        cfg.optim.steps = max(steps, cfg.optim.steps)
    if cfg.loss.min_snr_gamma <= 0:
        raise ConfigError(f"loss.min_snr_gamma must be positive, got {cfg.loss.min_snr_gamma}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    data = make_dataset(cfg.data)
    if not cfg.text.vocab:
        cfg.text.vocab = list(data.vocab)
    cfg.unet.resolution, cfg.unet.context_dim = cfg.data.resolution, cfg.text.width
    cfg.unet.out_channels = cfg.unet.in_channels * (2 if cfg.pipeline.learn_sigma else 1)
    model = TextToImageModel(cfg)
    if cfg.init.from_model and not resume:
        init_from_pretrained(model, cfg)
    model = model.to(device)
    ema = EMA(model, cfg.optim.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    run = Run(cfg, folder, data, model, ema, opt, generator, device, NoiseSchedule.from_config(cfg.pipeline.schedule))
    if resume:
        run.step = load_state(latest_checkpoint(folder), model, ema.model, opt, generator)
    else:
        save_json(cfg, folder / "config.json")
    return run


def init_from_pretrained(model: TextToImageModel, cfg: TrainConfig) -> None:
    """Load a saved pipeline's text encoder and UNet into the fresh model; their configs must match the run's."""
    folder = Path(cfg.init.from_model)
    if not (folder / "pipeline.json").exists():
        raise ConfigError(f"init.from_model: '{folder}' is not a saved pipeline (no pipeline.json)")
    pretrained = Text2ImagePipeline.from_pretrained(folder)
    for name, mine, theirs in (("text_encoder", model.text_encoder, pretrained.text_encoder),
                               ("unet", model.unet, pretrained.unet)):
        diff = [k for k in vars(mine.cfg) if getattr(mine.cfg, k) != getattr(theirs.cfg, k)]
        if diff == ["causal_layers"] and mine.cfg.causal_layers > theirs.cfg.causal_layers:
            diff = []  # new causal layers start as the identity (zero residual branches): the output is unchanged
        if diff:
            raise ConfigError(f"init.from_model: {name} of '{folder}' differs from the config in {', '.join(diff)}")
        missing, unexpected = mine.load_state_dict({k: v.float() for k, v in theirs.state_dict().items()}, strict=False)
        new = {f"causal.{i}." for i in range(getattr(theirs.cfg, "causal_layers", 0), getattr(mine.cfg, "causal_layers", 0))}
        if unexpected or any(not any(k.startswith(n) for n in new) for k in missing):
            raise ConfigError(f"init.from_model: {name} of '{folder}' does not fit: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        model.text_encoder.embed.weight.mul_(cfg.init.text_token_scale)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant."""
    return cfg.optim.lr * min(1.0, (step + 1) / max(1, cfg.optim.warmup_steps))


class StepBatches(torch.utils.data.Dataset):
    """Item k is the batch of optimiser step k; a function of (seed, k) alone, so workers may make it."""

    def __init__(self, data, seed: int, batch_size: int):
        self.data, self.seed, self.batch_size = data, seed, batch_size

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, step: int):
        return self.data.raw(self.seed, step, self.batch_size)


def batches(run: Run, workers: int):
    """Raw batches for steps run.step .. steps-1, made ahead of time by `workers` processes (0: in this one)."""
    steps = range(run.step, run.cfg.optim.steps)
    ds = StepBatches(run.data, run.cfg.seed, run.cfg.optim.batch_size)
    extra = {"prefetch_factor": 4} if workers else {}
    own = torch.Generator().manual_seed(0)  # worker seeding must not consume the global RNG
    return torch.utils.data.DataLoader(ds, batch_size=None, sampler=steps, num_workers=workers, generator=own, **extra)


def train_step(run: Run, batch=None) -> float:
    cfg = run.cfg
    raw = batch if batch is not None else run.data.raw(cfg.seed, run.step, cfg.optim.batch_size)
    images, captions = run.data.materialize(raw, run.device)
    for group in run.opt.param_groups:
        group["lr"] = lr_at(cfg, run.step)
    with run.autocast():
        loss = run.model.loss(cfg, run.schedule, images, captions, run.generator)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.grad_clip)
    run.opt.step()
    run.step += 1
    run.ema.update(run.model, run.step)
    return loss.item()


def sample_grid(run: Run, prompts: list[str] = SAMPLE_PROMPTS, steps: int = 25) -> Path:
    """EMA samples for fixed prompts and seeds; framed by the oracle's verdict when the prompts are world captions."""
    from ..eval.grid import save_grid
    from ..world.grammar import PromptError
    from ..world.oracle import judge
    from ..world.render import to_uint8

    pipe = run.pipeline()
    try:
        pipe.text_encoder.tokenizer(prompts)
    except ValueError:  # a model of other data: sample its own first captions instead
        prompts = run.data.batch(run.cfg.seed, 0, len(prompts))[1]
    images = pipe(prompts, list(range(len(prompts))), SamplingOptions(steps=steps)).cpu()
    try:
        verdicts = [judge(px, p) for px, p in zip(to_uint8(images).numpy(), prompts)]
    except PromptError:
        verdicts = None
    path = run.folder / "samples" / f"step_{run.step:08d}.png"
    save_grid(images, prompts, path, verdicts)
    return path


def save(run: Run) -> None:
    save_state(run.folder, run.step, run.model, run.ema.model, run.opt, run.generator, run.cfg.keep_checkpoints)
    run.pipeline().save_pretrained(run.folder / "model")


def train(cfg: TrainConfig, folder: Path, resume: bool = False, device: str | None = None,
          workers: int | None = None) -> Run:
    from tqdm.auto import tqdm

    run = setup(cfg, folder, resume, device)
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) // 2)
    bar = tqdm(total=cfg.optim.steps, initial=run.step, desc="training", unit="step", dynamic_ncols=True)
    start, start_step, loss_avg = time.time(), run.step, None
    for batch in batches(run, workers):
        loss = train_step(run, batch)
        loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss
        bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == cfg.optim.steps:
            rate = (run.step - start_step) / (time.time() - start)
            bar.set_postfix(loss=f"{loss_avg:.4f}", img_s=f"{rate * cfg.optim.batch_size:.0f}")
        if run.step % cfg.checkpoint_every == 0 or run.step == cfg.optim.steps:
            save(run)
        if cfg.snapshot_every and run.step % cfg.snapshot_every == 0:
            run.pipeline().save_pretrained(run.folder / "snapshots" / f"step_{run.step:08d}")
        if cfg.sample_every and (run.step % cfg.sample_every == 0 or run.step == cfg.optim.steps):
            bar.write(f"step {run.step}: samples in {sample_grid(run)}")
    bar.close()
    return run
