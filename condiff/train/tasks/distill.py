"""Latent consistency distillation (Luo et al. 2023, "Latent consistency models", Alg. 1) of a condiff model into a
few-step student, classifier-free guidance folded in: the student, started as a copy of the teacher's UNet, learns
to map any x_{t_{n+k}} straight to the x0_hat that its own target copy gives one guided teacher DDIM step later,

    L = d(f_theta(x_{t_{n+k}}, t_{n+k}, c), f_theta-(Psi(x_{t_{n+k}}, t_{n+k}, t_n; w, c), t_n, c)),

with Psi the DDIM step of the teacher's CFG eps at scale w (its unconditional branch is the null caption and, for a
grounded teacher, the null boxes, exactly as the teacher's pipeline samples), theta- the trainer's EMA of theta (LCM:
decay 0.95), d the pseudo-Huber distance. The grid is diffusion/consistency.py's; the exported model is the
teacher's pipeline with the EMA student UNet, sampled by the lcm sampler at 4 steps and guidance scale 1 (the
guidance is in the weights, so one network call a step).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...config import ConfigError
from ...data import DataConfig
from ...diffusion.consistency import consistency_grid, ddim_solver_step, pseudo_huber
from ...diffusion.denoiser import Denoiser, Prediction, x0_from_eps
from ...diffusion.guidance import ClassifierFreeGuidance
from ...diffusion.progressive import ddim_to, distillation_target, grid_spacing, truncated_snr_weight
from ...diffusion.sampling import SamplingOptions
from ...nets.grounding import grounding_inputs
from ...nets.pretrained_text import FrozenTextCache
from ...pipelines.text2image import Text2ImagePipeline
from ..config import OptimConfig, RunSettings, defaults
from ..task import TaskDefaults, base_model
from .text2image import LatentCache


@dataclass
class ConsistencyDistillationConfig(RunSettings):
    model: str = "consistency_distillation"
    seed: int = 0
    teacher: str = "condiff/weights/layout64"  # the condiff text-to-image model distilled (shipped names resolve)
    guidance_scale: float = 3.0  # w of the teacher's CFG, folded into the student
    huber_c: float = 0.001  # pseudo-Huber c (LCM's default); 0: L2
    sample_steps: int = 4  # the exported pipeline's default number of lcm steps
    data: DataConfig = defaults(DataConfig, resolution=64)
    optim: OptimConfig = defaults(OptimConfig, steps=2000, batch_size=16, lr=1e-5, warmup_steps=50, ema_decay=0.95,
                                  p_uncond=0.0)


class ConsistencyDistillationTask(TaskDefaults):
    name, config_cls = "consistency_distillation", ConsistencyDistillationConfig

    def build(self, cfg: ConsistencyDistillationConfig, data, resume: bool) -> nn.Module:
        if cfg.huber_c < 0:
            raise ConfigError(f"huber_c must be >= 0, got {cfg.huber_c}")
        SamplingOptions(steps=cfg.sample_steps, sampler="lcm", guidance_scale=1.0)  # ValueError: over the grid
        return copy.deepcopy(checked_teacher(self, cfg, data).unet).requires_grad_(True)  # the student: the teacher

    def prepare(self, run) -> None:
        prepare_teacher(run)
        run.state["grid"] = torch.tensor(consistency_grid(run.state["teacher"].schedule))

    def extras(self, run, raw) -> dict:
        return {"box_lists": run.data.boxes(raw)} if run.state["teacher"].unet.cfg.grounding_dim else {}

    def conditions(self, run, captions: list[str], box_lists: list | None, device) -> tuple[dict, dict]:
        """(c, null): the captions (and boxes) and the teacher's unconditional branch (empty caption, null boxes)."""
        teacher, text = run.state["teacher"], run.state["text"]
        c, u = text.encode(captions, device), text.encode([""] * len(captions), device)
        if box_lists is not None:
            g = grounding_inputs(lambda p: text.encode(p, device), box_lists, teacher.unet.cfg.grounding_max_boxes,
                                 device)
            c, u = c | g, u | g | {"box_mask": torch.zeros_like(g["box_mask"])}
        return c, u

    def loss(self, run, images: torch.Tensor, captions: list[str], box_lists: list | None = None) -> torch.Tensor:
        cfg, teacher, generator = run.cfg, run.state["teacher"], run.generator
        schedule, grid, device = teacher.schedule, run.state["grid"], images.device
        B = len(captions)
        with torch.no_grad():
            x0 = run.state["latents"](images) if "latents" in run.state else images
            c, u = self.conditions(run, captions, box_lists, device)
        n = torch.randint(1, len(grid), (B,), generator=generator)
        t, s = grid[n].to(device), grid[n - 1].to(device)  # t_{n+k} and t_n, one teacher DDIM step apart
        eps = torch.randn(x0.shape, generator=generator).to(device)
        x_t = schedule.q_sample(x0, t, eps)
        with torch.no_grad():
            eps_w = ClassifierFreeGuidance(teacher.denoiser, cfg.guidance_scale, c, u)(x_t, t)
            x_s = ddim_solver_step(schedule, x_t, t, s, eps_w)
            target = x0_from_eps(schedule, x_s, s, student_eps(run.ema.model, teacher, x_s, s, c))
        pred = x0_from_eps(schedule, x_t, t, student_eps(run.model, teacher, x_t, t, c))
        return pseudo_huber(pred, target, cfg.huber_c)

    def export(self, run, folder: Path) -> None:
        export_student(run, folder, steps=run.cfg.sample_steps, sampler="lcm")


def export_student(run, folder: Path, **sampling) -> None:
    """The teacher's pipeline with the EMA student UNet, saved to sample as given, guidance folded in (CFG 1)."""
    teacher = run.state["teacher"]
    spec = copy.deepcopy(teacher.spec)
    spec.stage("base").sampling = teacher.defaults.replace(guidance_scale=1.0, eta=0.0, guidance_rescale=0.0, **sampling)
    student = copy.deepcopy(run.ema.model).float()
    type(teacher).assemble(teacher.parts | {spec.stage("base").unet: student}, spec).save_pretrained(folder)


def checked_teacher(task, cfg, data) -> Text2ImagePipeline:
    """The teacher a distillation config names, after the checks both distillations make: the CFG scale folded in,
    and data with boxes for a grounded teacher. Handed on to the task's prepare, which takes it as the frozen
    teacher: loaded once."""
    if not 1 <= cfg.guidance_scale <= 20:
        raise ConfigError(f"guidance_scale must be in [1, 20], got {cfg.guidance_scale}")
    teacher = teacher_pipeline(cfg)
    if teacher.unet.cfg.grounding_dim and not hasattr(data, "boxes"):
        raise ConfigError("the teacher is grounded (boxes): train on data with boxes (the world, or a folder "
                          "whose metadata.jsonl has them)")
    task.hand_on(teacher_key(cfg), teacher)
    return teacher


def teacher_key(cfg) -> tuple:
    return "teacher", str(cfg.teacher), cfg.data.resolution


def prepare_teacher(run) -> None:
    """The frozen teacher on the run's device, its text encoder (cached when frozen) and its latent cache."""
    teacher = run.task.take(teacher_key(run.cfg), lambda: teacher_pipeline(run.cfg)).to(run.device)
    for part in teacher.parts.values():
        part.requires_grad_(False)
    run.state["teacher"] = teacher
    run.state["text"] = FrozenTextCache(teacher.text_encoder) if getattr(teacher.text_encoder, "frozen", False) \
        else teacher.text_encoder
    if teacher.autoencoder is not None:
        run.state["latents"] = LatentCache(teacher.autoencoder.encode)


def teacher_pipeline(cfg: ConsistencyDistillationConfig) -> Text2ImagePipeline:
    pipe = base_model(cfg.teacher, "teacher", cfg.data.resolution)
    if Prediction(pipe.cfg.prediction) is not Prediction.EPSILON or pipe.cfg.learn_sigma:
        raise ConfigError("teacher: consistency distillation here reads an eps-prediction model without learned variance")
    return pipe


def student_eps(unet: nn.Module, teacher: Text2ImagePipeline, x: torch.Tensor, t: torch.Tensor, c: dict) -> torch.Tensor:
    """The student's eps through the teacher's denoiser contract (the same wrapper and schedule, another UNet)."""
    return Denoiser(unet, teacher.schedule, teacher.cfg.prediction)(x, t, **c)


@dataclass
class ProgressiveDistillationConfig(RunSettings):
    model: str = "progressive_distillation"
    seed: int = 0
    teacher: str = "condiff/weights/layout64"  # the model of this round's teacher: the base, or the last round's student
    teacher_steps: int = 8  # the teacher's DDIM steps on the progressive grid; the student learns half as many
    guidance_scale: float = 3.0  # w of the teacher's CFG, folded into the student (1: a distilled teacher has it)
    data: DataConfig = defaults(DataConfig, resolution=64)
    optim: OptimConfig = defaults(OptimConfig, steps=400, batch_size=16, lr=5e-5, warmup_steps=20, ema_decay=0.99,
                                  p_uncond=0.0)


class ProgressiveDistillationTask(ConsistencyDistillationTask):
    """Progressive distillation (Salimans & Ho 2022; diffusion/progressive.py), one round: a student of
    teacher_steps / 2 DDIM steps on the progressive grid, started as the teacher's UNet. The teacher's conditioning
    (caption, boxes, the null branch of CFG) is the consistency distillation's; the exported model samples DDIM on the
    progressive grid at its own steps, CFG 1 (one network call a step). Chain rounds by making the last student the
    next teacher (guidance_scale 1)."""
    name, config_cls = "progressive_distillation", ProgressiveDistillationConfig

    def build(self, cfg: ProgressiveDistillationConfig, data, resume: bool) -> nn.Module:
        teacher = checked_teacher(self, cfg, data)
        try:
            grid_spacing(teacher.schedule, cfg.teacher_steps)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return copy.deepcopy(teacher.unet).requires_grad_(True)

    def prepare(self, run) -> None:
        prepare_teacher(run)

    def loss(self, run, images: torch.Tensor, captions: list[str], box_lists: list | None = None) -> torch.Tensor:
        cfg, teacher, generator = run.cfg, run.state["teacher"], run.generator
        schedule, device, B = teacher.schedule, images.device, len(captions)
        d = grid_spacing(schedule, cfg.teacher_steps)
        with torch.no_grad():
            x0 = run.state["latents"](images) if "latents" in run.state else images
            c, u = self.conditions(run, captions, box_lists, device)
        i = torch.randint(1, cfg.teacher_steps // 2 + 1, (B,), generator=generator).to(device)
        t, t_mid, t_next = 2 * i * d, (2 * i - 1) * d, (2 * i - 2) * d  # t_next = 0: clean data
        eps = torch.randn(x0.shape, generator=generator).to(device)
        z_t = schedule.q_sample(x0, t, eps)
        with torch.no_grad():
            guided = ClassifierFreeGuidance(teacher.denoiser, cfg.guidance_scale, c, u)
            z_mid = ddim_to(schedule, z_t, t, t_mid, guided(z_t, t))
            z_next = ddim_to(schedule, z_mid, t_mid, t_next, guided(z_mid, t_mid))
            target = distillation_target(schedule, z_t, t, z_next, t_next)
        pred = x0_from_eps(schedule, z_t, t, student_eps(run.model, teacher, z_t, t, c))
        return (truncated_snr_weight(schedule, t, pred) * (pred.float() - target.float()) ** 2).mean()

    def export(self, run, folder: Path) -> None:
        export_student(run, folder, steps=run.cfg.teacher_steps // 2, sampler="ddim", schedule="progressive")
