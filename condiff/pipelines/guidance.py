"""Guidance by a judge model: classifier, CLIP on x_t, CLIP on x0_hat, contrastive CLIP; built as pipeline guides.

A guide is guide(model, schedule, prompts, decode=None) -> (model, cond_fn): it wraps the (CFG) eps model in
GradientGuidance with a log-probability made from the judge and the prompts. It never touches the UNet.

On a latent model (decode given) the judges, which read pixels, cannot see x_t: every method then judges the
decoded x0_hat (at t = 0 for a noise-aware judge), resized to the judge's resolution, and the gradient flows back
through the decoder and the UNet. That costs a decoder forward and backward per step on top of the UNet's backward.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import torch

from ..catalogue import DEFAULT_JUDGES
from ..diffusion.guidance import GradientGuidance
from ..diffusion.noise_optimization import optimize_initial_noise
from ..nets.classifier import batch_labels, load_classifier
from ..formats import load_clip
from ..world.distractors import distractor_captions
from ..world.grammar import parse_caption


class GuidanceMethod(str, enum.Enum):
    CLASSIFIER = "classifier"  # noise-aware classifier, log p(labels | x_t) (Dhariwal & Nichol 2021)
    CLIP = "clip"  # noised CLIP on x_t: logit of (x_t, prompt) (GLIDE)
    CLIP_X0 = "clip_x0"  # clean CLIP on the model's x0_hat, gradient through the model
    CONTRASTIVE = "contrastive"  # log softmax of the prompt against its distractor captions (noised CLIP on x_t)


class GuidanceForm(str, enum.Enum):
    SCORE = "score"  # eps - sqrt(1 - alpha_bar) s grad: any sampler
    MEAN = "mean"  # mu + Sigma s grad: DDPM only (guided-diffusion's condition_mean)


METHOD_INFO = {
    GuidanceMethod.CLASSIFIER: "noise-aware classifier on x_t: pair presence + object count (no relations)",
    GuidanceMethod.CLIP: "noise-aware CLIP on x_t (GLIDE)",
    GuidanceMethod.CLIP_X0: "clean CLIP on the predicted x0 (gradient through the UNet; 2-3x slower)",
    GuidanceMethod.CONTRASTIVE: "noise-aware CLIP, softmax of the prompt against distractor captions",
}


@dataclass
class GuidanceOptions:
    method: GuidanceMethod
    scale: float
    form: GuidanceForm = GuidanceForm.SCORE
    judge: str | None = None  # folder of the classifier / CLIP; default: the shipped one for the method


def classifier_log_prob(classifier, prompts: list[str]):
    """(x, t) -> log p(y | x_t) of each prompt's labels."""
    present, count = batch_labels(prompts, next(classifier.parameters()).device)
    return lambda x, t: classifier.log_prob(x, t, present, count)


def _image_embedding(clip, x, t):
    if clip.noise_aware and t is None:  # a noise-aware tower judges a clean x0_hat at t = 0
        t = torch.zeros(len(x), device=x.device)
    return clip.encode_image(x, t)


def clip_log_prob(clip, prompts: list[str]):
    """(x, t) -> exp(tau) cos(f(x_t, t), g(prompt)): the CLIP logit, an unnormalised log-likelihood."""
    with torch.no_grad():
        text = clip.encode_text(prompts)
    scale = clip.logit_scale.exp().detach()
    return lambda x, t: scale * (_image_embedding(clip, x, t) * text).sum(-1)


def contrastive_log_prob(clip, prompts: list[str]):
    """(x, t) -> log softmax_j exp(tau) cos(f(x_t), g(c_j)) at the target, over [prompt] + its distractors."""
    captions = [[p] + distractor_captions(p) for p in prompts]
    with torch.no_grad():
        texts = [clip.encode_text(c) for c in captions]
    scale = clip.logit_scale.exp().detach()

    def log_prob(x, t):
        img = _image_embedding(clip, x, t)
        return torch.stack([(scale * img[i] @ texts[i].T).log_softmax(0)[0] for i in range(len(prompts))])

    return log_prob


def on_decoded(log_prob, decode, judge):
    """log_prob of the decoded latent, area-resized to the judge's resolution, judged as a clean image (t = 0)."""
    side = judge.resolution

    def fn(z, t):
        x = decode(z)
        if x.shape[-1] != side:
            x = torch.nn.functional.interpolate(x, size=side, mode="area")
        t0 = torch.zeros(len(x), device=x.device)
        return log_prob(x, t0 if getattr(judge, "noise_aware", True) else None)

    return fn


def load_judge(opts: GuidanceOptions):
    method = GuidanceMethod(opts.method)
    if method is GuidanceMethod.CLASSIFIER:
        return load_classifier(opts.judge or DEFAULT_JUDGES["classifier"])
    default = DEFAULT_JUDGES["clip" if method is GuidanceMethod.CLIP_X0 else "noisy_clip"]
    clip = load_clip(opts.judge or default)
    if method in (GuidanceMethod.CLIP, GuidanceMethod.CONTRASTIVE) and not clip.noise_aware:
        raise ValueError(f"'{method.value}' guidance judges x_t and needs a noise-aware CLIP; "
                         f"use clip_x0 for a clean one")
    return clip


def check_prompts(method: GuidanceMethod | str, prompts: list[str]) -> None:
    """ValueError, before any work, for a prompt the judge cannot read: the classifier's labels come from parsing it."""
    if GuidanceMethod(method) is GuidanceMethod.CLASSIFIER:
        for p in set(prompts):
            parse_caption(p)


def make_guide(opts: GuidanceOptions, judge=None):
    """guide(model, schedule, prompts) -> (wrapped model, cond_fn or None)."""
    method, form = GuidanceMethod(opts.method), GuidanceForm(opts.form)
    judge = judge if judge is not None else load_judge(opts)
    judge.requires_grad_(False)
    build = {GuidanceMethod.CLASSIFIER: classifier_log_prob, GuidanceMethod.CLIP: clip_log_prob,
             GuidanceMethod.CLIP_X0: clip_log_prob, GuidanceMethod.CONTRASTIVE: contrastive_log_prob}[method]

    def guide(model, schedule, prompts, decode=None):
        log_prob, through_x0 = build(judge, prompts), method is GuidanceMethod.CLIP_X0
        if decode is not None:
            log_prob, through_x0 = on_decoded(log_prob, decode, judge), True
        guided = GradientGuidance(model, schedule, log_prob, opts.scale, through_x0=through_x0)
        if form is GuidanceForm.MEAN:
            return model, guided.grad
        return guided, None

    return guide


@dataclass
class NoiseOptimization:
    """CLIP-optimised x_T (seed 003, approach 2): `iters` Adam steps on x_T through a `chain_steps` DDIM chain."""
    iters: int
    chain_steps: int = 10
    lr: float = 0.1
    judge: Path | str | None = None  # a clean CLIP (default: the shipped clip32)


def make_initializer(opts: NoiseOptimization, clip=None):
    """init(model, schedule, z, prompts) -> x_T raised in clean-CLIP logit of its chain's x_0 (per image, never lower)."""
    if opts.iters < 1 or opts.chain_steps < 1:
        raise ValueError(f"CLIP-optimised x_T needs iters >= 1 and chain steps >= 1, got {opts.iters}, {opts.chain_steps}")
    clip = clip if clip is not None else load_clip(opts.judge or DEFAULT_JUDGES["clip"])
    clip.requires_grad_(False)

    def init(model, schedule, z, prompts, decode=None):
        objective = clip_log_prob(clip, prompts)
        if decode is not None:
            objective = on_decoded(objective, decode, clip)
        z, _ = optimize_initial_noise(model, schedule, z, lambda x0: objective(x0, None),
                                      schedule.timesteps(opts.chain_steps), iters=opts.iters, lr=opts.lr)
        return z

    return init
