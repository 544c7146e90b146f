"""condiff edit img2img | inpaint | invert: argument parsing and file handling; the work is in pipelines/editing.py."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def read_image(path: str, what: str = "IN") -> "Image.Image":
    """An RGB image from a file, or a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no such file '{path}'")
    try:
        with Image.open(p) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{what}: '{path}' is not a readable image ({e.__class__.__name__})") from None


def to_model_size(img, resolution: int, resample) -> "Image.Image":
    """Centre-crop to a square and resize to the model's resolution (as the image-folder loader does)."""
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    return img if img.size == (resolution, resolution) else img.resize((resolution, resolution), resample)


def image_tensor(img) -> "torch.Tensor":
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def parse_box(text: str, width: int, height: int):
    """--box X0,Y0,X1,Y1 in pixels of IN, X1 and Y1 exclusive; checked against the image."""
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--box: expected four integers X0,Y0,X1,Y1 in pixels, got '{text}'") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"--box: {text} is not a non-empty box inside the {width}x{height} image "
                         f"(0 <= X0 < X1 <= {width}, 0 <= Y0 < Y1 <= {height})")
    return x0, y0, x1, y1


def read_mask(args, size: tuple[int, int]):
    """A PIL 'L' mask at IN's size, 255 = repaint, from --box or --mask."""
    import numpy as np
    from PIL import Image

    if (args.box is None) == (args.mask is None):
        raise ValueError("inpaint: give exactly one of --box X0,Y0,X1,Y1 and --mask MASK.png")
    w, h = size
    if args.box is not None:
        x0, y0, x1, y1 = parse_box(args.box, w, h)
        m = np.zeros((h, w), dtype=np.uint8)
        m[y0:y1, x0:x1] = 255
        return Image.fromarray(m)
    mask = read_image(args.mask, "--mask")
    if mask.size != size:
        raise ValueError(f"--mask: '{args.mask}' is {mask.size[0]}x{mask.size[1]}, IN is {w}x{h}; they must match")
    m = (np.asarray(mask.convert("L")) >= 128).astype(np.uint8) * 255
    if not m.any():
        raise ValueError(f"--mask: '{args.mask}' is empty (white = repaint; no pixel is white)")
    return Image.fromarray(m)


def _prepare(args, needs_prompt: bool = True):
    """Everything checked before the model loads: options, the output path, the input image."""
    from .diffusion.sampling import SamplingOptions
    from .png import check_writable

    opts = SamplingOptions.from_args(args)
    if needs_prompt and not args.prompt.strip():
        raise ValueError("--prompt: must not be empty")
    check_writable([Path(args.out)] + ([Path(args.save_noise)] if getattr(args, "save_noise", None) else []))
    if args.seed < 0:
        raise ValueError(f"--seed: must be a non-negative integer, got {args.seed}")
    return opts, read_image(args.input)


def _load(args, opts, prompts):
    from .pipelines.text2image import DEFAULT_MODEL, Text2ImagePipeline

    model = Path(args.model) if args.model else DEFAULT_MODEL
    pipe = Text2ImagePipeline.from_pretrained(model)
    if args.device:
        pipe = pipe.to(args.device)
    pipe.check(prompts, opts)
    return pipe, model


def _save(args, out, prompt, opts, model, params: dict) -> None:
    from .diffusion.sampling import SAMPLER_INFO
    from .png import format_parameters, save_png
    from .world.render import to_uint8

    px = to_uint8(out).numpy()[0]
    info = {"Steps": opts.steps, "Sampler": SAMPLER_INFO[opts.sampler][0], "Schedule type": opts.schedule.value,
            "CFG scale": opts.guidance_scale, "Seed": args.seed, "Size": f"{px.shape[1]}x{px.shape[0]}",
            "Model": model.name, **params}
    save_png(px, Path(args.out), format_parameters(prompt, opts.negative_prompt, info))
    print(args.out)


def _img2img(args) -> None:
    from PIL import Image

    from .diffusion.sampling import start_step
    from .pipelines.editing import img2img

    opts, img = _prepare(args)
    start_step(opts, args.strength)  # --strength outside [0, 1] or NaN fails here
    pipe, model = _load(args, opts, [args.prompt])
    x = image_tensor(to_model_size(img, pipe.resolution, Image.BICUBIC))
    t = time.time()
    out = img2img(pipe, [args.prompt], x, [args.seed], opts, args.strength)
    _save(args, out, args.prompt, opts, model, {"Denoising strength": args.strength, "Edit": "img2img"})
    print(f"img2img in {time.time() - t:.1f} s", file=sys.stderr)


def _inpaint(args) -> None:
    from PIL import Image

    from .pipelines.editing import leakage, repaint

    opts, img = _prepare(args)
    mask = read_mask(args, img.size)
    pipe, model = _load(args, opts, [args.prompt])
    x = image_tensor(to_model_size(img, pipe.resolution, Image.BICUBIC))
    m = image_tensor(to_model_size(mask.convert("RGB"), pipe.resolution, Image.NEAREST))[:, :1] > 0
    if not m.any():
        raise ValueError("inpaint: the mask vanishes at the model's resolution; make it larger")
    t = time.time()
    raw = repaint(pipe, [args.prompt], x, m, [args.seed], opts, paste_back=False)
    out = raw if args.no_paste_back else m * raw + (~m) * x
    params = {"Edit": "inpaint (RePaint)", "Mask pixels": int(m.sum()), "Paste back": not args.no_paste_back}
    if pipe.autoencoder is not None:
        params["Outside PSNR before paste-back"] = round(leakage(x, raw, m), 2)
    _save(args, out, args.prompt, opts, model, params)
    print(f"inpaint in {time.time() - t:.1f} s", file=sys.stderr)


def _invert(args) -> None:
    from PIL import Image

    from .pipelines.editing import inversion_options, invert, leakage, regenerate

    opts, img = _prepare(args)
    opts = inversion_options(opts)
    pipe, model = _load(args, opts, [args.prompt])
    x = image_tensor(to_model_size(img, pipe.resolution, Image.BICUBIC))
    t = time.time()
    x_T = invert(pipe, [args.prompt], x, opts)
    if args.save_noise:
        from safetensors.torch import save

        from .fs import atomic_write_bytes

        atomic_write_bytes(Path(args.save_noise), save({"x_T": x_T.float().cpu().contiguous()}))
        print(args.save_noise)
    prompt = args.regenerate_prompt or args.prompt
    out = regenerate(pipe, [prompt], x_T, opts, [args.seed])
    psnr = leakage(x, out, x.new_zeros(1, 1, *x.shape[-2:]).bool())
    _save(args, out, prompt, opts, model, {"Edit": "DDIM inversion", "Inverted with": args.prompt,
                                           "Reconstruction PSNR": round(psnr, 2)})
    print(f"inverted and regenerated in {time.time() - t:.1f} s; PSNR to IN {psnr:.2f} dB", file=sys.stderr)


def add_edit_parser(sub, add_sampling_arguments, add_run_arguments) -> None:
    e = sub.add_parser("edit", help="edit an image: img2img (SDEdit), inpaint (RePaint), invert (DDIM inversion)")
    esub = e.add_subparsers(dest="edit_command", required=True)

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("input", metavar="IN", help="input image (PNG, JPEG, ...); centre-cropped and resized to the model's size")
        p.add_argument("--prompt", required=True, help="what the result shows")
        add_sampling_arguments(p, steps=50, full=True)
        add_run_arguments(p, batch_size=1, seed_help="seed of the noise")
        p.add_argument("--out", default=out, help="PNG path (with the edit's parameters as infotext)")

    i = esub.add_parser("img2img", help="SDEdit: noise IN to --strength, denoise with --prompt")
    common(i, "img2img.png")
    i.add_argument("--strength", type=float, default=0.5, help="0 returns IN, 1 is text-to-image (denoising strength)")
    i.set_defaults(func=_img2img)

    p = esub.add_parser("inpaint", help="RePaint: repaint a box or a mask of IN with --prompt")
    common(p, "inpaint.png")
    p.add_argument("--box", help="X0,Y0,X1,Y1 in pixels of IN, X1/Y1 exclusive (0,0,64,64 is a whole 64 px image)")
    p.add_argument("--mask", help="mask image of IN's size, white = repaint")
    p.add_argument("--no-paste-back", action="store_true",
                   help="keep the decoder's pixels outside the mask (default: IN's pixels exactly)")
    p.set_defaults(func=_inpaint)

    v = esub.add_parser("invert", help="DDIM inversion: IN -> x_T with --prompt, then regenerate (eta 0, no clipping)")
    common(v, "reconstruction.png")
    v.set_defaults(schedule="leading")  # ends at t = 1000 - 1000/steps: 'uniform' ends at t = 999, ill-conditioned
    v.add_argument("--save-noise", help="also write x_T as safetensors (key x_T); generate --from-noise reads it")
    v.add_argument("--regenerate-prompt", help="regenerate from x_T with this prompt instead (an edit)")
    v.set_defaults(func=_invert)
