"""condiff edit img2img | inpaint | invert: argument parsing and file handling; the work is in pipelines/editing.py."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from ..pipelines.editing import EDICT_DECODER_STEPS, Inversion
from ..pipelines.requests import ModelTag, results
from ..png import check_writable
from .args import adapters_from_args, add_embedding_argument, add_lora_argument, apply_adapters, positive_int
from .output import checked_paths, write_images


def read_mask(args, size: tuple[int, int]):
    """The 'L' mask at IN's size (255 = repaint) from --box or --mask."""
    from ..images import box_mask, mask_image

    if (args.box is None) == (args.mask is None):
        raise ValueError("inpaint: give exactly one of --box X0,Y0,X1,Y1 and --mask MASK.png")
    return box_mask(args.box, *size) if args.box is not None else mask_image(args.mask, size)


def _prepare(args, needs_prompt: bool = True):
    """Everything checked before the model loads: options, the output path, the input image."""
    from ..diffusion.sampling import SamplingOptions

    opts = SamplingOptions.from_args(args)
    if needs_prompt and not args.prompt.strip():
        raise ValueError("--prompt: must not be empty")
    checked_paths(args.out, getattr(args, "num_images", 1))
    check_writable([Path(args.save_noise)] if getattr(args, "save_noise", None) else [])
    if args.seed < 0:
        raise ValueError(f"--seed: must be a non-negative integer, got {args.seed}")
    from ..images import open_image

    return opts, open_image(args.input)


def _load(args, prompts, **overrides):
    from ..diffusion.sampling import SamplingOptions
    from ..pipelines.text2image import Text2ImagePipeline
    from ..catalogue import model_folder

    model = model_folder(args.model)
    loras, embs = adapters_from_args(args)  # an unreadable or foreign file fails here, before the model loads
    pipe = Text2ImagePipeline.from_pretrained(model)
    apply_adapters(pipe, loras, embs)
    if args.device:
        pipe = pipe.to(args.device)
    opts = SamplingOptions.from_args(args, base=pipe.defaults, **overrides)  # what the command leaves out: the model's
    pipe.check(prompts, opts)
    return pipe, ModelTag.of(model, loras, embs), opts  # the tag names the model and LoRAs in the infotext


def _save(args, out, prompt, opts, tag: ModelTag, params: dict) -> None:
    """Each image (seed --seed + i) to OUT-NNN.png with its parameters and a grid at OUT; one image to OUT."""
    seeds = [args.seed + i for i in range(len(out))]
    write_images([results(out, [prompt] * len(out), seeds, opts, tag, params)], args.out, len(out))


def _img2img(args) -> None:
    from ..diffusion.sampling import start_step
    from ..images import image_tensor, to_model_size
    from ..pipelines.requests import Img2ImgRequest, edit_img2img

    opts, img = _prepare(args)
    start_step(opts, args.strength)  # --strength outside [0, 1] or NaN fails here
    pipe, tag, opts = _load(args, [args.prompt])
    req = Img2ImgRequest(args.prompt, image_tensor(to_model_size(img, pipe.resolution)),
                         [args.seed + i for i in range(args.num_images)], opts, args.strength, args.batch_size)
    t = time.time()
    write_images(edit_img2img(pipe, req, tag), args.out, args.num_images)
    print(f"img2img in {time.time() - t:.1f} s", file=sys.stderr)


def _inpaint(args) -> None:
    from ..catalogue import INPAINT_MODEL
    from ..diffusion.sampling import Resample
    from ..images import image_tensor, mask_tensor, to_model_size
    from ..pipelines.requests import InpaintRequest, edit_inpaint

    opts, img = _prepare(args)
    mask = read_mask(args, img.size)
    resample = Resample(args.jump_length, args.jump_n_sample)
    if args.model is None and args.method != "repaint" and INPAINT_MODEL.is_dir():
        args.model = str(INPAINT_MODEL)  # inpainting_pipeline's choice for the default, without loading the default
    pipe, tag, opts = _load(args, [args.prompt])
    if args.method == "model" and not pipe.inpainting:
        raise ValueError(f"--method model: '{tag.name}' has no inpainting inputs (mask, masked image); "
                         "use --method repaint or an inpainting model")
    req = InpaintRequest(args.prompt, image_tensor(to_model_size(img, pipe.resolution)),
                         mask_tensor(mask, pipe.resolution), [args.seed + i for i in range(args.num_images)], opts,
                         args.method, resample, not args.no_paste_back, args.batch_size)
    t = time.time()
    write_images(edit_inpaint(pipe, req, tag), args.out, args.num_images)
    print(f"inpaint in {time.time() - t:.1f} s", file=sys.stderr)


def _invert(args) -> None:
    from ..images import image_tensor, to_model_size
    from ..pipelines.editing import (
        inversion_options,
        invert,
        invert_coupled,
        leakage,
        regenerate,
        regenerate_coupled,
    )
    from ..pipelines.text2image import EditConvention

    edict = args.method == "edict"
    how = Inversion(args.fixed_point, args.decoder_steps or 0)  # a bad value fails before the model loads
    opts, img = _prepare(args)
    pipe, tag, opts = _load(args, [args.prompt], threshold="none")
    if args.decoder_steps is None:  # on Stable Diffusion's VAE at 512 px, 50 passes through it take many minutes
        slow_vae = pipe.edit_convention is EditConvention.DIFFUSERS
        how = Inversion(args.fixed_point, EDICT_DECODER_STEPS if edict and not slow_vae else 0)
    opts = inversion_options(opts)
    x = image_tensor(to_model_size(img, pipe.resolution))
    prompt = args.regenerate_prompt or args.prompt
    t = time.time()
    if edict:
        noise = invert_coupled(pipe, [args.prompt], x, opts, decoder_steps=how.decoder_steps)
        out = regenerate_coupled(pipe, [prompt], noise, opts)
        noise = {"x_T": noise[0], "y_T": noise[1]}
        method = f"EDICT, decoder {how.decoder_steps}"
    else:
        x_T = invert(pipe, [args.prompt], x, opts, how)
        out = regenerate(pipe, [prompt], x_T, opts, [args.seed])
        noise = {"x_T": x_T}
        method = f"fixed-point {how.fixed_point_iters}, decoder {how.decoder_steps}"
    if args.save_noise:
        from safetensors.torch import save

        from ..fs import atomic_write_bytes

        atomic_write_bytes(Path(args.save_noise), save({k: v.float().cpu().contiguous() for k, v in noise.items()}))
        print(args.save_noise)
    psnr = leakage(x, out, x.new_zeros(1, 1, *x.shape[-2:]).bool())
    _save(args, out, prompt, opts, tag, {"Edit": "DDIM inversion", "Inverted with": args.prompt,
                                           "Inversion": method, "Reconstruction PSNR": round(psnr, 2)})
    print(f"inverted and regenerated in {time.time() - t:.1f} s; PSNR to IN {psnr:.2f} dB", file=sys.stderr)


def add_edit_parser(sub, add_sampling_arguments, add_run_arguments) -> None:
    e = sub.add_parser("edit", help="edit an image: img2img (SDEdit), inpaint, invert (DDIM inversion), clip (DiffusionCLIP)")
    esub = e.add_subparsers(dest="edit_command", required=True)

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("input", metavar="IN", help="input image (PNG, JPEG, ...); centre-cropped and resized to the model's size")
        p.add_argument("--prompt", required=True, help="what the result shows")
        add_sampling_arguments(p, steps=None, full=True)
        add_run_arguments(p, batch_size=1, seed_help="seed of the noise")
        add_lora_argument(p)
        add_embedding_argument(p)
        p.add_argument("--out", default=out, help="PNG path (with the edit's parameters as infotext); with several "
                                                  "images OUT-000.png, OUT-001.png, ... and a grid at OUT")

    i = esub.add_parser("img2img", help="SDEdit: noise IN to --strength, denoise with --prompt")
    common(i, "img2img.png")
    i.add_argument("-n", "--num-images", type=positive_int, default=1, help="results, image i with seed --seed + i")
    i.add_argument("--strength", type=float, default=0.5,
                   help="0 returns IN, 1 is text-to-image (denoising strength; on a Stable Diffusion model, as in "
                        "diffusers, 1 is IN noised to the first step)")
    i.set_defaults(func=_img2img)

    p = esub.add_parser("inpaint", help="repaint a box or a mask of IN with --prompt (inpainting model or RePaint)")
    common(p, "inpaint.png")
    p.add_argument("-n", "--num-images", type=positive_int, default=1, help="results, image i with seed --seed + i")
    p.add_argument("--box", help="X0,Y0,X1,Y1 in pixels of IN, X1/Y1 exclusive (0,0,64,64 is a whole 64 px image)")
    p.add_argument("--mask", help="mask image of IN's size, white = repaint")
    p.add_argument("--no-paste-back", action="store_true",
                   help="keep the decoder's pixels outside the mask (default: IN's pixels exactly)")
    p.add_argument("--method", choices=["auto", "model", "repaint"], default="auto",
                   help="model: a fine-tuned inpainting model (GLIDE); repaint: RePaint with any model; auto: the model's "
                        "inpainting inputs where it has them (default model: the shipped inpainting model, if any)")
    p.add_argument("--jump-n-sample", type=int, default=1,
                   help="RePaint's resampling: denoise each block of --jump-length steps this many times (1: none)")
    p.add_argument("--jump-length", type=int, default=10, help="steps per resampled block (RePaint: 10)")
    p.set_defaults(func=_inpaint)

    v = esub.add_parser("invert", help="DDIM inversion: IN -> x_T with --prompt, then regenerate (eta 0, no clipping)")
    common(v, "reconstruction.png")
    # 'leading' ends at t = 1000 - 1000/steps ('uniform' at t = 999, ill-conditioned); CFG 1: the chain guided by
    # a larger scale does not run back to the image (docs/editing.md measures 30 dB at CFG 1, 19 dB at CFG 3)
    v.set_defaults(schedule="leading", guidance_scale=1.0)
    v.add_argument("--method", choices=["edict", "ddim"], default="edict",
                   help="edict: EDICT's coupled chains, exact by construction (default; its noise is a pair, x_T and "
                        "y_T, that only edit invert regenerates); ddim: one DDIM chain with --fixed-point iterations, "
                        "whose x_T generate --from-noise reads")
    v.add_argument("--save-noise", help="also write the inverted noise as safetensors (key x_T, and y_T under "
                                        "--method edict); generate --from-noise reads a --method ddim one")
    v.add_argument("--regenerate-prompt", help="regenerate from x_T with this prompt instead (an edit)")
    v.add_argument("--fixed-point", type=int, default=Inversion.fixed_point_iters,
                   help="--method ddim: fixed-point iterations per inversion step, which bring the DDIM round trip "
                        "close to exact (0: plain DDIM inversion; each costs one more model call per step)")
    v.add_argument("--decoder-steps", type=int,
                   help="latent models: Adam steps fitting the latent to the image through the decoder before "
                        f"inverting (default {EDICT_DECODER_STEPS} under edict, 0 under ddim, whose chain the fitted "
                        "latent throws off, and 0 on Stable Diffusion, whose VAE is slow; docs/editing.md)")
    v.set_defaults(func=_invert)

    from .diffusionclip import add_clip_parser
    from .unclip import add_unclip_parsers

    add_clip_parser(esub)
    add_unclip_parsers(esub)
