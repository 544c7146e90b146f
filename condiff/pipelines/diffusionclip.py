"""DiffusionCLIP (Kim et al. 2022): text-guided editing by fine-tuning a copy of the model with a directional CLIP loss.

1. Each training image x_src is DDIM-inverted with its source caption to x_{t0}, step k = steps - round(t0 steps)
   of the plan (eta 0, CFG 1: the deterministic chain, `sample(start=k)` regenerates x_src from it).
2. The copy's UNet is fine-tuned over that chain, step by step (the paper's GPU-efficient variant): at each step
   the model's x0_hat is decoded and judged, the optimizer steps, and the chain moves on with x detached (the
   chain reads the target caption by default, `regenerate_with`):
       L = lambda_clip (1 - cos(E_I(x0_hat) - E_I(x_src), E_T(target) - E_T(source))) + lambda_l1 |x0_hat - x_src|_1
   in condiff CLIP's embedding space (images box-filtered to its resolution).
3. Any image is edited by inverting it with the source caption and regenerating with the fine-tuned copy
   (`apply`), so a saved fine-tuned model edits new images without training again.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion.augment import at_resolution
from ..diffusion.samplers import ddim_invert
from ..diffusion.sampling import (
    SamplingOptions,
    _finite,
    sampling_timesteps,
    start_step,
)
from .editing import image_holds_layout, to_model_space
from .text2image import Text2ImagePipeline


@dataclass
class DiffusionCLIPConfig:
    t0: float = 0.5  # share of the chain inverted and regenerated (the paper's t0 = 500 of 1000)
    steps: int = 20  # the plan's steps over the whole chain; (t0 steps) of them run
    iterations: int = 4  # passes over the training images
    lr: float = 1e-4
    clip_weight: float = 1.0
    l1_weight: float = 0.3
    regenerate_with: str = "target"  # the caption the chain is regenerated (and fine-tuned) with: target | source
    augmentations: int = 4  # CLIP sees this many random shifts and flips of each image (curbs adversarial edits)

    def validate(self) -> None:
        _finite("t0", self.t0, 0.05, 1.0)
        _finite("lr", self.lr, 1e-9, 1.0)
        _finite("clip_weight", self.clip_weight, 0.0, 1e3)
        _finite("l1_weight", self.l1_weight, 0.0, 1e3)
        if self.regenerate_with not in ("target", "source"):
            raise ValueError(f"regenerate_with: unknown value {self.regenerate_with!r} (known: target, source)")
        for name, lo in (("steps", 1), ("iterations", 1), ("augmentations", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 1000:
                raise ValueError(f"{name}: must be an integer between {lo} and 1000, got {v!r}")


def chain_options(cfg: DiffusionCLIPConfig) -> SamplingOptions:
    """The deterministic DDIM chain both inversion and regeneration run (no clipping, CFG 1, 'leading' spacing)."""
    return SamplingOptions(steps=cfg.steps, guidance_scale=1.0, sampler="ddim", eta=0.0, schedule="leading",
                           threshold="none")


def _model(pipe: Text2ImagePipeline, prompts: list[str], opts: SamplingOptions):
    """The chain's eps model; a grounded model sees null boxes (grounding_keywords), as `invert` gives it."""
    return pipe.guided_model(prompts, opts, *pipe.grounding_keywords(None, len(prompts)))


def invert_to_t0(pipe: Text2ImagePipeline, images: torch.Tensor, prompts: list[str], cfg: DiffusionCLIPConfig):
    """x at step k of the chain (and k), from the images by DDIM inversion with their captions."""
    opts = chain_options(cfg)
    k = start_step(opts, cfg.t0)
    with torch.no_grad():
        x_k = ddim_invert(_model(pipe, prompts, opts), to_model_space(pipe, images), pipe.schedule,
                          sampling_timesteps(pipe.schedule, opts)[k:])
    return x_k, k


def regenerate_from(pipe: Text2ImagePipeline, x_k: torch.Tensor, k: int, prompts: list[str],
                    cfg: DiffusionCLIPConfig) -> torch.Tensor:
    with torch.no_grad():
        return pipe.decode(pipe.denoise(prompts, list(range(len(prompts))), chain_options(cfg), x=x_k, start=k,
                                        **image_holds_layout(pipe, len(prompts), {}))).cpu()


def clip_view(clip, images: torch.Tensor, augmentations: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean CLIP embedding of the images at CLIP's resolution; with augmentations, over that many random shifts
    (up to 1/8 of the side, reflected at the border) and horizontal flips, so that no single pixel pattern fools it."""
    x = at_resolution(images, clip.cfg.image.resolution)
    if not augmentations:
        return clip.encode_image(x)
    side, pad = x.shape[-1], x.shape[-1] // 8
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    views = []
    for _ in range(augmentations):
        dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
        v = padded[..., dy:dy + side, dx:dx + side]
        views.append(v.flip(-1) if torch.rand((), generator=generator) < 0.5 else v)
    emb = clip.encode_image(torch.cat(views)).view(augmentations, len(x), -1)
    return F.normalize(emb.mean(0), dim=-1)


def directional_loss(clip, images: torch.Tensor, reference: torch.Tensor, text_direction: torch.Tensor,
                     augmentations: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """1 - cos(E_I(images) - E_I(reference), direction), per image (Gal et al.'s StyleGAN-NADA loss)."""
    emb = clip_view(clip, images, augmentations, generator)
    return 1 - F.cosine_similarity(emb - reference, text_direction, dim=-1)


def fine_tune(pipe: Text2ImagePipeline, clip, images: torch.Tensor, sources: list[str], targets: list[str],
              cfg: DiffusionCLIPConfig, progress: bool = False) -> tuple[Text2ImagePipeline, list[float]]:
    """A copy of pipe whose UNet is fine-tuned to turn each image, captioned sources[i], into targets[i] (the text
    direction is per image); and the loss at each step."""
    from tqdm.auto import tqdm

    check(pipe, clip, sources, targets, cfg)
    edited = copy.deepcopy(pipe)
    edited.unet.train().requires_grad_(True)
    for name, part in edited.parts.items():
        if name != "unet":
            part.requires_grad_(False)
    clip = clip.to(pipe.device).eval().requires_grad_(False)
    images = images.to(pipe.device)
    prompts = list(sources)
    x_k, k = invert_to_t0(pipe, images, prompts, cfg)
    opts = chain_options(cfg)
    timesteps = sampling_timesteps(pipe.schedule, opts)
    ab = pipe.schedule.alpha_bar
    with torch.no_grad():
        t_dir = F.normalize(clip.encode_text(list(targets)) - clip.encode_text(prompts), dim=-1)
        reference = clip_view(clip, images)
    optimizer = torch.optim.Adam(edited.unet.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(0)
    chain_prompts = list(targets) if cfg.regenerate_with == "target" else prompts
    model, losses = _model(edited, chain_prompts, opts), []
    bar = tqdm(total=cfg.iterations * (len(timesteps) - k), disable=not progress, desc="DiffusionCLIP", unit="step")
    for _ in range(cfg.iterations):
        x = x_k.clone()
        for i in range(k, len(timesteps)):
            t = torch.full((len(x),), timesteps[i], device=x.device, dtype=torch.long)
            ab_t = ab[timesteps[i]].item()
            eps = model(x, t)
            x0 = (x - (1 - ab_t) ** 0.5 * eps) / ab_t ** 0.5
            decoded = edited.decode(x0)
            loss = (cfg.clip_weight * directional_loss(clip, decoded, reference, t_dir, cfg.augmentations, generator).mean()
                    + cfg.l1_weight * (decoded - images).abs().mean())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            ab_next = ab[timesteps[i + 1]].item() if i + 1 < len(timesteps) else 1.0
            x = (ab_next ** 0.5 * x0 + (1 - ab_next) ** 0.5 * eps).detach()  # the DDIM step, eta 0
    bar.close()
    edited.unet.eval().requires_grad_(False)
    return edited, losses


def check(pipe: Text2ImagePipeline, clip, sources: list[str], targets: list[str], cfg: DiffusionCLIPConfig) -> None:
    """ValueError, before any work: bad settings, or a caption the model's or CLIP's text encoder cannot read."""
    cfg.validate()
    if len(sources) != len(targets) or not sources:
        raise ValueError("source, target: one of each per training image")
    pipe.check(list(sources), chain_options(cfg))
    for text in (*sources, *targets):
        clip.text_encoder.tokenizer.encode(text)


def apply(pipe: Text2ImagePipeline, edited: Text2ImagePipeline, images: torch.Tensor, sources: list[str],
          targets: list[str], cfg: DiffusionCLIPConfig) -> torch.Tensor:
    """Edit images with a fine-tuned copy: invert with the original model and each image's source caption,
    regenerate with the copy and the target (or source) caption (the paper's edit of unseen images)."""
    x_k, k = invert_to_t0(pipe, images, list(sources), cfg)
    return regenerate_from(edited, x_k, k, list(targets) if cfg.regenerate_with == "target" else list(sources), cfg)
