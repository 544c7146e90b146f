"""The cascade on the command line: generate's --size / --sr-* options, and `condiff upscale IN.png`.

Each super-resolution stage has its own sampler settings (A1111's hires-fix naming): --sr-steps, --sr-sampler,
--sr-guidance-scale, --sr-noise-level (the augmentation level aug_t; default: the stage's saved one).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from PIL import Image

from ..diffusion.sampling import Sampler
from ..images import image_tensor, open_image
from ..pipelines.requests import Upscale, upscale
from ..pipelines.upsample import UPSCALE_INPUT, StageRun, shipped_upsamplers, upsampler_chain
from ..png import check_writable
from .output import write_images

SCALES = (2, 4)


def add_sr_arguments(p) -> None:
    p.add_argument("--sr-model", action="append", help="upsampler folder, one per stage in order (default: the shipped "
                                                       "sr128 and sr256 as the size needs)")
    p.add_argument("--sr-steps", type=int, help="steps of each upsampler (default: the stage's, 20)")
    p.add_argument("--sr-sampler", choices=[s.value for s in Sampler], help="sampler of each upsampler (default: ddim)")
    p.add_argument("--sr-guidance-scale", type=float, help="CFG scale of each upsampler (default: the stage's, 1)")
    p.add_argument("--sr-noise-level", type=int, help="aug_t the low-res input is noised to (default: the stage's)")


def _sr_option(e: ValueError) -> ValueError:
    """'guidance_scale: must ...' as the command line spells the option: '--sr-guidance-scale: must ...'."""
    name, _, rest = str(e).partition(":")
    return ValueError(f"--sr-{name.replace('_', '-')}:{rest}")


def stage_runs(args, stages, prompts: list[str]) -> list:
    """Each stage's options: its saved defaults, overridden by the --sr-* arguments; checked before any work."""
    runs = []
    for st in stages:
        changes = {k: v for k, v in (("steps", args.sr_steps), ("sampler", args.sr_sampler),
                                     ("guidance_scale", args.sr_guidance_scale)) if v is not None}
        try:
            opts = st.defaults.replace(**changes)
            st.check([], opts, args.sr_noise_level)
        except ValueError as e:
            raise _sr_option(e) from None
        st.check(prompts, opts)
        runs.append(StageRun(opts, args.sr_noise_level))
    return runs


def upscale_from_args(args, base_size: int, prompts: list[str]) -> Upscale | None:
    """The stages that take the base model's images to --size (None when --size is the base's), checked."""
    size = args.size or base_size
    if size == base_size and not args.sr_model:
        return None
    stages = upsampler_chain(base_size, size, args.sr_model)
    return Upscale(stages, stage_runs(args, stages, prompts), args.sr_model or shipped_upsamplers(base_size, size))


def _upscale(args) -> None:
    if args.scale not in SCALES:
        raise ValueError(f"--scale: must be 2 or 4, got {args.scale}")
    check_writable([Path(args.out)])
    if args.seed < 0:
        raise ValueError(f"--seed: must be a non-negative integer, got {args.seed}")
    img = open_image(args.input, "IN")
    if img.width != img.height:
        raise ValueError(f"IN: the image is {img.width}x{img.height}; upscale takes square images (crop it first)")
    first = img.width if args.sr_model else UPSCALE_INPUT  # the shipped chain: 64 -> 128 (-> 256)
    stages = upsampler_chain(first, first * args.scale, args.sr_model)
    up = Upscale(stages, stage_runs(args, stages, [args.prompt]),
                 args.sr_model or shipped_upsamplers(first, first * args.scale))
    if img.width != first:
        print(f"note: IN is {img.width}x{img.height}; resized to {first}x{first}, the first stage's input", file=sys.stderr)
        img = img.resize((first, first), Image.BICUBIC)
    if args.device:
        for st in stages:
            st.to(args.device)
    start = time.time()
    write_images([[upscale(image_tensor(img), args.prompt, args.seed, up, (first, first))]], args.out, 1)
    print(f"upscaled x{args.scale} in {time.time() - start:.1f} s", file=sys.stderr)


def add_upscale_parser(sub) -> None:
    u = sub.add_parser("upscale", help="enlarge an image 2x or 4x with the diffusion upsamplers (text-conditioned)")
    u.add_argument("input", metavar="IN", help="a square image; resized to the first stage's input size (64 px) if it differs")
    u.add_argument("--prompt", default="", help="its caption (default: empty, the unconditional upsampler)")
    u.add_argument("--scale", type=int, default=2, help="2 (one stage) or 4 (two stages)")
    u.add_argument("--out", default="upscaled.png")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--device", help="cpu or cuda")
    add_sr_arguments(u)
    u.set_defaults(func=_upscale)
