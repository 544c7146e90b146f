"""Sampling by name: the options dataclass (validated where it is built), step placement, and one entry point.

`sample(model, schedule, x, noise, opts, ...)` runs any sampler over the eps-model contract eps_hat = model(x_t, t)
with the hooks every pipeline needs, so none writes its own loop:
  - start=k: begin at step k of the plan from a given x (img2img / SDEdit, cascades, DiffusionCLIP);
  - stop=k: end at step k, x at that step's noise level (a chain in pieces; RePaint's jumps, `Resample`);
  - replace(x, alpha_bar) -> x: after each step, overwrite (part of) x, which is then at noise level alpha_bar
    (RePaint-style inpainting); both sampler families see x in the same variance-preserving space here;
  - callback(info): progress and previews;
  - cond_fn: the mean form of gradient guidance (DDPM only).
Keyword conditioning (context=, low_res=, mask=, boxes=, ...) is bound into the model by its wrapper
(guidance.Conditioned / ClassifierFreeGuidance) and passes through to the network untouched.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from typing import Callable

import torch

from .consistency import GRID_STEPS, lcm_timesteps, sample_lcm
from .samplers import PerSampleNoise, Variance, sample_ddim, sample_ddpm
from .schedule import NoiseSchedule, Spacing
from .sigma_samplers import (SigmaDenoiser, exponential_sigmas, karras_sigmas, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_euler,
                             sample_euler_ancestral, sample_heun, sigmas_at)
from .thresholding import Threshold, x0_fn_for


class Sampler(str, enum.Enum):
    """Sampler names as in diffusers / A1111 (description: their name there)."""

    DDPM = "ddpm"
    DDIM = "ddim"
    EULER = "euler"
    EULER_A = "euler_a"
    HEUN = "heun"
    DPMPP_2M = "dpmpp_2m"
    DPMPP_2M_SDE = "dpmpp_2m_sde"
    LCM = "lcm"


SAMPLER_INFO = {
    Sampler.DDPM: ("DDPM", "ancestral, posterior variance beta_tilde (Ho et al. 2020)"),
    Sampler.DDIM: ("DDIM", "deterministic at eta = 0 (Song et al. 2021)"),
    Sampler.EULER: ("Euler", "probability-flow ODE, 1st order (Karras et al. 2022)"),
    Sampler.EULER_A: ("Euler a", "Euler with ancestral noise"),
    Sampler.HEUN: ("Heun", "2nd order ODE, 2 model calls per step (Karras et al. Alg. 1)"),
    Sampler.DPMPP_2M: ("DPM++ 2M", "DPM-Solver++ multistep, 2nd order (Lu et al. 2022)"),
    Sampler.DPMPP_2M_SDE: ("DPM++ 2M SDE", "DPM-Solver++ 2M, stochastic (midpoint)"),
    Sampler.LCM: ("LCM", "multistep consistency sampling, for consistency-distilled models (Luo et al. 2023)"),
}
SIGMA_SAMPLERS = {
    Sampler.EULER: sample_euler, Sampler.EULER_A: sample_euler_ancestral, Sampler.HEUN: sample_heun,
    Sampler.DPMPP_2M: sample_dpmpp_2m, Sampler.DPMPP_2M_SDE: sample_dpmpp_2m_sde,
}


class SigmaSchedule(str, enum.Enum):
    """How sampling steps are placed: a timestep respacing (schedule.Spacing), or sigmas for the sigma samplers."""

    UNIFORM = "uniform"
    LEADING = "leading"
    TRAILING = "trailing"
    PROGRESSIVE = "progressive"  # progressive distillation's grid (schedule.Spacing): what a distilled student draws on
    KARRAS = "karras"  # Karras et al. eq. 5, rho = 7: dense at small sigma
    EXPONENTIAL = "exponential"  # uniform in log sigma, i.e. in logSNR (DPM-Solver's "logSNR" step placement)


SIGMA_SCHEDULES = {SigmaSchedule.KARRAS: karras_sigmas, SigmaSchedule.EXPONENTIAL: exponential_sigmas}
MAX_STEPS = 1000


def _finite(name: str, value, lo: float, hi: float) -> float:
    """value as a float in [lo, hi], else a ValueError naming the option (NaN and infinity are refused)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name}: must be a finite number between {lo:g} and {hi:g}, got {value!r}")
    return v


def _member(enum_cls, name: str, value):
    try:
        return enum_cls(value)
    except ValueError:
        raise ValueError(f"{name}: unknown value {value!r} (known: {', '.join(e.value for e in enum_cls)})") from None


@dataclass
class SamplingOptions:
    """Every sampling setting, checked when built: the CLI, web UI, API and benchmarks all construct this."""

    steps: int = 50
    guidance_scale: float = 3.0
    sampler: Sampler = Sampler.DDIM
    eta: float = 0.0
    schedule: SigmaSchedule = SigmaSchedule.UNIFORM
    threshold: Threshold = Threshold.STATIC
    percentile: float = 0.995  # dynamic thresholding's p
    ddpm_variance: Variance = Variance.SMALL
    negative_prompt: str = ""
    guidance_rescale: float = 0.0  # phi of Lin et al. (0: plain CFG)

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps: must be an integer between 1 and {MAX_STEPS}, got {self.steps!r}")
        self.guidance_scale = _finite("guidance_scale", self.guidance_scale, 0.0, 100.0)
        self.eta = _finite("eta", self.eta, 0.0, 1.0)
        self.percentile = _finite("threshold_percentile", self.percentile, 0.5, 1.0)
        self.guidance_rescale = _finite("guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        self.sampler = _member(Sampler, "sampler", self.sampler)
        self.schedule = _member(SigmaSchedule, "schedule", self.schedule)
        self.threshold = _member(Threshold, "threshold", self.threshold)
        self.ddpm_variance = _member(Variance, "ddpm_variance", self.ddpm_variance)
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"negative_prompt: expected a string, got {self.negative_prompt!r}")
        if self.sampler is Sampler.LCM and self.steps > GRID_STEPS:
            raise ValueError(f"steps: the lcm sampler takes 1 to {GRID_STEPS} steps (its distillation grid), "
                             f"got {self.steps}")
        if self.schedule in SIGMA_SCHEDULES and self.sampler not in SIGMA_SAMPLERS:
            raise ValueError(f"the {self.schedule.value} schedule needs a sigma sampler "
                             f"({', '.join(s.value for s in SIGMA_SAMPLERS)})")

    @classmethod
    def from_args(cls, args, base: "SamplingOptions | None" = None, **overrides) -> "SamplingOptions":
        """From an argparse namespace with the CLI's option names; options it leaves out (or None) come from base,
        e.g. the model's saved settings (`pipe.defaults`), else from the dataclass defaults."""
        names = {f.name: f.name for f in fields(cls)} | {"percentile": "threshold_percentile"}
        kw = {field: getattr(args, arg) for field, arg in names.items() if getattr(args, arg, None) is not None}
        start = {f.name: getattr(base, f.name) for f in fields(cls)} if base is not None else {}
        changes = kw | overrides
        return cls(**(start | changes | _schedule_kept_valid(start.get("schedule", cls.schedule), changes)))

    def replace(self, **changes) -> "SamplingOptions":
        changes |= _schedule_kept_valid(self.schedule, changes)
        return SamplingOptions(**({f.name: getattr(self, f.name) for f in fields(self)} | changes))


def _schedule_kept_valid(schedule, changes: dict) -> dict:
    """A saved sigma placement (karras, exponential) belongs to the sigma samplers: a change to a DDPM/DDIM-family
    sampler that names no schedule takes 'leading' (diffusers' timestep spacing) instead of failing. A schedule
    given with the sampler is checked as given."""
    if "sampler" not in changes or "schedule" in changes:
        return {}
    try:
        timestep_sampler = Sampler(changes["sampler"]) not in SIGMA_SAMPLERS
    except ValueError:
        return {}  # __post_init__ names the unknown sampler
    return {"schedule": SigmaSchedule.LEADING} if timestep_sampler and SigmaSchedule(schedule) in SIGMA_SCHEDULES else {}


SIGMA_MAX = 80.0  # EDM's sigma_max: the cosine schedule's last sigma (~2e4) wrecks 2nd-order steps (see README)


def sampling_sigmas(schedule: NoiseSchedule, opts: SamplingOptions) -> torch.Tensor:
    """Descending sigmas ending in 0 for the sigma samplers, the largest capped at SIGMA_MAX."""
    if (placement := SIGMA_SCHEDULES.get(SigmaSchedule(opts.schedule))) is not None:
        spaced = sigmas_at(schedule, schedule.timesteps(opts.steps, Spacing.UNIFORM))
        return placement(spaced[-2].item(), min(spaced[0].item(), SIGMA_MAX), opts.steps)
    return sigmas_at(schedule, schedule.timesteps(opts.steps, Spacing(opts.schedule.value))).clamp(max=SIGMA_MAX)


def sampling_timesteps(schedule: NoiseSchedule, opts: SamplingOptions) -> list[int]:
    """Descending timesteps of the DDPM/DDIM family (the lcm sampler's: from its distillation grid)."""
    if Sampler(opts.sampler) is Sampler.LCM:
        return lcm_timesteps(schedule, opts.steps)
    return schedule.timesteps(opts.steps, Spacing(opts.schedule.value))


def plan_alpha_bars(schedule: NoiseSchedule, opts: SamplingOptions) -> list[float]:
    """alpha_bar of x before each step of the plan, then 1.0 (clean): the noise levels the hooks see."""
    if Sampler(opts.sampler) in SIGMA_SAMPLERS:
        return [1 / (1 + s ** 2) for s in sampling_sigmas(schedule, opts).tolist()]
    final = schedule.final_alpha_bar if Sampler(opts.sampler) is Sampler.DDIM else 1.0  # DDIM may stop at alpha_bar_0
    return [schedule.alpha_bar[t].item() for t in sampling_timesteps(schedule, opts)] + [final]


def start_step(opts: SamplingOptions, strength: float, truncate: bool = False) -> int:
    """SDEdit / img2img: strength 1 starts at the first step (pure noise), 0 at the end (the input unchanged).

    k = steps - round(strength steps); truncate: steps - int(strength steps), diffusers' get_timesteps."""
    strength = _finite("strength", strength, 0.0, 1.0)
    return opts.steps - (int(opts.steps * strength) if truncate else round(strength * opts.steps))


def noise_to(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """q(x_t | x_0) at a given alpha_bar: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps."""
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps


Replace = Callable[[torch.Tensor, float], torch.Tensor]


def _hooks(callback, replace: Replace | None, levels: list[float], start: int, scale_of):
    """One per-step callback for the raw samplers: reports, then lets `replace` rewrite x in VP space."""
    if replace is None:
        return callback

    def hook(info: dict):
        if callback is not None:
            callback(info)
        i = start + info["i"] + 1  # x is now at the level after this step
        s = scale_of(i)
        return replace(info["x"] / s, levels[i]) * s

    return hook


@dataclass(frozen=True)
class Resample:
    """RePaint's resampling (Lugmayr et al. 2022, "time travel"): the plan is cut into blocks of `jump_length` steps;
    each block is denoised, taken back up to its first level by the forward process q(x_k | x_e), and denoised again,
    `jump_n_sample` times in all (1: plain sampling; RePaint's names). The model is called that many times as often."""

    jump_length: int = 10
    jump_n_sample: int = 1

    def __post_init__(self):
        for name, lo, hi in (("jump_length", 1, MAX_STEPS), ("jump_n_sample", 1, 20)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name}: must be an integer between {lo} and {hi}, got {v!r}")


def renoise(x: torch.Tensor, alpha_bar_from: float, alpha_bar_to: float, z: torch.Tensor) -> torch.Tensor:
    """q(x_k | x_e) of the forward process, from level alpha_bar_from up to the noisier alpha_bar_to."""
    a = alpha_bar_to / alpha_bar_from
    return math.sqrt(a) * x + math.sqrt(1 - a) * z


def sample(model, schedule: NoiseSchedule, x: torch.Tensor, noise: PerSampleNoise, opts: SamplingOptions,
           callback=None, cond_fn=None, start: int = 0, replace: Replace | None = None, stop: int | None = None,
           resample: Resample | None = None) -> torch.Tensor:
    """Run the named sampler from x, a sample at step `start` of the plan in VP space (x = z ~ N(0, I) at start 0),
    to step `stop` (default: the end, the clean sample); a stopped chain returns x at that step's level, in VP space.

    x_T = z at start 0 as every sampler's space needs (the sigma family multiplies by sqrt(sigma^2 + 1)).
    cond_fn (DDPM only) shifts each posterior mean by Sigma cond_fn(x_t, t): guided-diffusion's condition_mean.
    resample: RePaint's jumps; the forward noise of a jump is drawn from `noise` (so it, too, follows the seeds).
    """
    sampler = Sampler(opts.sampler)
    if cond_fn is not None and sampler is not Sampler.DDPM:
        raise ValueError("the mean form of gradient guidance needs the ddpm sampler; use the score form otherwise")
    stop = opts.steps if stop is None else stop
    if not 0 <= start <= stop <= opts.steps:
        raise ValueError(f"start, stop: must satisfy 0 <= start <= stop <= {opts.steps} steps, got {start}, {stop}")
    run = lambda x, a, b: _sample_span(model, schedule, x, noise, opts, callback, cond_fn, a, b, replace)
    if resample is None or resample.jump_n_sample == 1:
        return run(x, start, stop)
    levels = plan_alpha_bars(schedule, opts)
    k = start
    while k < stop:
        e = min(k + resample.jump_length, stop)
        for r in range(resample.jump_n_sample):
            x = run(x, k, e)
            if r + 1 < resample.jump_n_sample:
                x = renoise(x, levels[e], levels[k], noise(x.shape, x.device, x.dtype))
        k = e
    return x


def _sample_span(model, schedule, x, noise, opts, callback, cond_fn, start: int, stop: int, replace):
    """Steps start..stop-1 of the plan from x (VP space at step start) -> x at step stop (VP space)."""
    if start == stop:
        return x
    sampler, x0_fn = Sampler(opts.sampler), x0_fn_for(opts.threshold, opts.percentile)
    levels = plan_alpha_bars(schedule, opts)
    if sampler in SIGMA_SAMPLERS:
        sigmas = sampling_sigmas(schedule, opts)
        scale_of = lambda i: math.sqrt(sigmas[i].item() ** 2 + 1)  # x_sigma = x_vp sqrt(sigma^2 + 1)
        hook = _hooks(callback, replace, levels, start, scale_of)
        out = SIGMA_SAMPLERS[sampler](SigmaDenoiser(model, schedule, x0_fn), x * scale_of(start), sigmas[start:stop + 1],
                                      noise, hook)
        return out / scale_of(stop)
    timesteps = sampling_timesteps(schedule, opts)
    t_end = timesteps[stop] if stop < len(timesteps) else None
    hook = _hooks(callback, replace, levels, start, lambda i: 1.0)
    if sampler is Sampler.LCM:
        return sample_lcm(model, x, schedule, timesteps[start:stop], noise, x0_fn, hook, t_end=t_end)
    if sampler is Sampler.DDPM:
        return sample_ddpm(model, x, schedule, timesteps[start:stop], noise, x0_fn, hook, opts.ddpm_variance, cond_fn,
                           t_end=t_end)
    return sample_ddim(model, x, schedule, timesteps[start:stop], opts.eta, noise, x0_fn, callback=hook, t_end=t_end)


run_sampler = sample  # the name of the first releases
