"""condiff generate: prompts and options -> a txt2img request (pipelines/requests.py) -> PNG files."""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from ..catalogue import few_step_model, model_folder
from ..diffusion.sampling import SamplingOptions
from ..formats import detect
from ..io import CheckpointError, load_tensors
from ..pipelines.guidance import (GuidanceForm, GuidanceMethod, GuidanceOptions, NoiseOptimization, check_prompts)
from ..pipelines.requests import ModelTag, Txt2ImgRequest, txt2img
from ..pipelines.stable_diffusion import check_size
from ..pipelines.text2image import Text2ImagePipeline
from ..pipelines.vocabulary import prompt_warnings
from .args import adapters_from_args, apply_adapters, check_image_count
from .cascade import upscale_from_args
from .control import check_control_args, control_from_args
from .layout import layout_from_args
from .output import checked_paths, write_images

MAX_SEED = 2 ** 32 - 1


def read_noise(path: str, n: int, shape: tuple[int, ...]):
    """--from-noise: x_T from a safetensors file (key x_T, as edit invert --save-noise writes), one per image."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--from-noise: no such file '{path}'")
    try:
        tensors = load_tensors(Path(path))
    except CheckpointError as e:
        raise ValueError(f"--from-noise: {e}") from None
    if "x_T" not in tensors:
        raise ValueError(f"--from-noise: '{path}' holds no tensor named x_T (it has {', '.join(tensors) or 'none'})")
    if "y_T" in tensors:
        raise ValueError(f"--from-noise: '{path}' holds an EDICT pair (x_T, y_T), which only `condiff edit invert "
                         f"--regenerate-prompt` regenerates; invert with --method ddim for one x_T")
    x = tensors["x_T"].float()
    if tuple(x.shape[1:]) != tuple(shape) or x.shape[0] not in (1, n) or not x.isfinite().all():
        raise ValueError(f"--from-noise: x_T of shape {tuple(x.shape)} does not fit this model "
                         f"(needs (1 or {n}, {', '.join(map(str, shape))}), finite)")
    return x.expand(n, *shape).clone()


def seeds_from_args(seed: int, n: int) -> list[int]:
    """Image i uses seed + i; -1 draws a random first seed (reported, as the web UI does)."""
    if seed == -1:
        seed = random.randint(0, MAX_SEED - n)
        print(f"seed: {seed}", file=sys.stderr)
    elif seed < 0:
        raise ValueError(f"--seed: must be -1 (random) or a non-negative integer, got {seed}")
    return [seed + i for i in range(n)]


def guidance_from_args(args, prompts: list[str]) -> tuple[GuidanceOptions | None, NoiseOptimization | None]:
    guide = None
    if args.guide:
        guide = GuidanceOptions(GuidanceMethod(args.guide), args.guide_scale, GuidanceForm(args.guide_form), args.guide_model)
        check_prompts(guide.method, prompts)
    noise = NoiseOptimization(args.clip_xt_iters, args.clip_xt_chain, judge=args.clip_xt_model) if args.clip_xt_iters else None
    return guide, noise


def sd_size_from_args(args, model: Path) -> tuple[int | None, int | None]:
    """(width, height) of a Stable Diffusion model's images (--size, or --width/--height), checked before loading."""
    width, height = args.width or args.size, args.height or args.size
    if detect(model) is None:
        if args.width or args.height:
            raise ValueError("--width/--height: only for a Stable Diffusion model (a condiff model's --size is its side)")
        return None, None
    check_size(width, height)
    return width, height


def generate(args) -> None:
    SamplingOptions.from_args(args)  # bad option values fail here, before any model is loaded
    check_image_count(len(args.prompts) * args.num_images, args.max_images)
    model = few_step_model(model_folder(args.model), args.steps,
                           args.sampler is not None or args.guidance_scale is not None)
    prompts = [p for p in args.prompts for _ in range(args.num_images)]
    layout = layout_from_args(args, prompts)
    checked_paths(args.out, len(prompts))
    sd_size = sd_size_from_args(args, model)  # before loading: a Stable Diffusion model's side in pixels
    control_folder = check_control_args(args, model)
    loras, embs = adapters_from_args(args)  # an unreadable or foreign file fails here, before the model loads
    pipe = Text2ImagePipeline.from_pretrained(model, args.prediction)
    apply_adapters(pipe, loras, embs)
    opts = SamplingOptions.from_args(args, base=pipe.defaults)  # what the command line leaves out: the model's
    pipe.check(prompts, opts, *([args.clip_xt_chain] if args.clip_xt_iters else []))
    tag = ModelTag.of(model, loras, embs)
    for warning in prompt_warnings(args.prompts, pipe.spec.vocabulary, tag.name, args.literal):
        print(warning, file=sys.stderr)
    if getattr(pipe, "variable_size", False):
        pipe.at_size(*sd_size)
        upscale = None
    else:
        upscale = upscale_from_args(args, pipe.resolution, prompts)  # --size: upsamplers after the base
    x_T = read_noise(args.from_noise, len(prompts), pipe.sample_shape) if args.from_noise else None
    control = control_from_args(args, pipe, control_folder)
    guide, noise = guidance_from_args(args, prompts)
    req = Txt2ImgRequest(prompts, seeds_from_args(args.seed, len(prompts)), opts, guide, None, noise, layout,
                         args.boxes_in_uncond, x_T, upscale, args.batch_size, control, args.literal)
    start = time.time()
    done = write_images(txt2img(pipe, req, tag, progress=True), args.out, len(prompts),
                        columns=args.num_images if len(args.prompts) > 1 else None)
    print(f"{len(done)} image(s) in {time.time() - start:.1f} s", file=sys.stderr)
