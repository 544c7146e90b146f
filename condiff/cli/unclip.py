"""condiff edit variations | interpolate | textdiff: unCLIP's image-embedding edits (pipelines/unclip.py); each
writes one grid PNG with its parameters."""
from __future__ import annotations

import argparse
import sys
import time

from ..pipelines.requests import ModelTag, results
from .args import positive_int
from .output import checked_paths, write_images
from ..catalogue import CLIP64, UNCLIP_DECODER as DECODER, model_folder
from ..pipelines.unclip import MAX_VARIATION_CANDIDATES, VARIATION_CANDIDATES, VARIATION_ETA, VARIATION_GUIDANCE


def _setup(args, images: list[str], texts: list[str], n: int):
    """Everything checked before sampling: the output, the inputs, the decoder and CLIP, their fit, the texts."""
    from ..diffusion.sampling import SamplingOptions
    from ..images import image_tensor, open_image, to_model_size
    from ..nets.clip import load_clip
    from ..pipelines.text2image import Text2ImagePipeline
    from ..pipelines.unclip import check_decoder

    checked_paths(args.out, n)
    if args.seed < 0:
        raise ValueError(f"--seed: must be a non-negative integer, got {args.seed}")
    pics = [open_image(p) for p in images]
    model, clip_dir = model_folder(args.model or DECODER), model_folder(args.clip or CLIP64)
    if not model.is_dir():
        raise ValueError(f"--model: no unCLIP decoder at '{model}' (train one with an \"unclip\" config)")
    pipe = Text2ImagePipeline.from_pretrained(model)
    clip = load_clip(clip_dir)
    check_decoder(pipe, clip)
    opts = SamplingOptions.from_args(argparse.Namespace(steps=args.sample_steps, guidance_scale=args.guidance_scale),
                                     base=pipe.defaults)
    pipe.check([t for t in texts if t.strip()] or ["a"], opts)
    for t in texts:
        if t.strip():
            clip.text_encoder.tokenizer.encode(t)
    return pipe, clip, opts, [image_tensor(to_model_size(p, pipe.resolution)) for p in pics], model


def _write(args, out, model, opts, seeds: list[int], prompt: str, info: dict) -> None:
    """Each image to OUT-NNN.png with its parameters, and all of them in one row at OUT."""
    write_images([results(out, [prompt] * len(out), seeds, opts, ModelTag.of(model), info)], args.out, len(out), columns=len(out))


def _variations(args) -> None:
    from ..pipelines.unclip import variation_parameters, variations

    if not 1 <= args.num_images <= 64:
        raise ValueError(f"--num-images: must be between 1 and 64, got {args.num_images}")
    if not 1 <= args.candidates <= MAX_VARIATION_CANDIDATES:
        raise ValueError(f"--candidates: must be between 1 and {MAX_VARIATION_CANDIDATES}, got {args.candidates}")
    eta = None if args.from_noise else args.eta
    if eta is not None and not 0 < eta <= 1:
        raise ValueError(f"--eta: must be in (0, 1], got {eta}")
    if eta is not None and args.guidance_scale is None:
        args.guidance_scale = VARIATION_GUIDANCE
    pipe, clip, opts, (x,), model = _setup(args, [args.input], [args.prompt], args.num_images)
    t = time.time()
    out = variations(pipe, clip, x, args.num_images, args.seed, opts, args.prompt, eta=eta, candidates=args.candidates)
    _write(args, out, model, opts, [args.seed + i for i in range(len(out))], args.prompt,
           {"Edit": "unCLIP variations", **variation_parameters(eta, args.candidates)})
    print(f"{args.num_images} variations in {time.time() - t:.1f} s", file=sys.stderr)


def _steps(n: int) -> None:
    if not 2 <= n <= 32:
        raise ValueError(f"--steps: must be between 2 and 32 images, got {n}")


def _interpolate(args) -> None:
    from ..pipelines.unclip import interpolate

    _steps(args.frames)
    pipe, clip, opts, (a, b), model = _setup(args, [args.a, args.b], [args.prompt], args.frames)
    out = interpolate(pipe, clip, a, b, args.frames, args.seed, opts, args.prompt, inverted=not args.from_noise)
    _write(args, out, model, opts, [args.seed] * len(out), args.prompt,
           {"Edit": "unCLIP interpolation", "Frames": args.frames, "Noise": "seed" if args.from_noise else "inverted"})


def _textdiff(args) -> None:
    from ..pipelines.unclip import textdiff

    _steps(args.frames)
    for name in ("source", "target"):
        if not getattr(args, name).strip():
            raise ValueError(f"--{'from' if name == 'source' else 'to'}: must not be empty")
    if args.inverted and args.guidance_scale is None:
        args.guidance_scale = VARIATION_GUIDANCE  # the inverted x_T is the conditional model's
    pipe, clip, opts, (x,), model = _setup(args, [args.input], [args.source, args.target], args.frames)
    out = textdiff(pipe, clip, x, args.source, args.target, args.frames, args.seed, opts, inverted=args.inverted)
    _write(args, out, model, opts, [args.seed] * len(out), args.source if args.inverted else args.target,
           {"Edit": "unCLIP text diff", "From": args.source, "To": args.target, "Frames": args.frames,
            "Noise": "inverted" if args.inverted else "seed"})


def add_unclip_parsers(esub) -> None:
    def common(p, out: str):
        p.add_argument("--model", help="unCLIP decoder folder (default: condiff/weights/unclip64)")
        p.add_argument("--clip", help="condiff CLIP folder whose embeddings the decoder reads (default: clip64)")
        p.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the decoder's)")
        p.add_argument("--guidance-scale", type=float, default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default=out, help="OUT-000.png, OUT-001.png, ... (each with its parameters) and a "
                                                  "grid of all at OUT")

    def command(name: str, func, help: str):
        p = esub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    v = command("variations", _variations, "unCLIP: images from IN's CLIP image embedding")
    v.add_argument("input", metavar="IN")
    v.add_argument("-n", "--num-images", type=positive_int, default=4)
    v.add_argument("--prompt", default="", help="also condition on a caption (default: none)")
    v.add_argument("--eta", type=float, default=VARIATION_ETA,
                   help=f"DDIM eta from IN's inverted noise: near 0 gives IN back, 1 the most varied (default {VARIATION_ETA})")
    v.add_argument("--candidates", type=int, default=VARIATION_CANDIDATES,
                   help="draws per image, the one whose CLIP embedding is nearest IN's kept "
                        f"(default {VARIATION_CANDIDATES}; 1: no reranking)")
    v.add_argument("--from-noise", action="store_true",
                   help="each image from its seed's noise instead (the embedding alone; --eta is not used)")
    i = command("interpolate", _interpolate, "unCLIP: slerp from A's image embedding to B's, one decoder noise")
    i.add_argument("a", metavar="A")
    i.add_argument("b", metavar="B")
    i.add_argument("--steps", dest="frames", type=int, default=5, help="images along the path, ends included")
    i.add_argument("--prompt", default="")
    i.add_argument("--from-noise", action="store_true",
                   help="every frame from the seed's noise, not the slerp between A's and B's inverted noise")
    t = command("textdiff", _textdiff, "unCLIP's text diff: move IN's embedding along CLIP(--to) - CLIP(--from)")
    t.add_argument("input", metavar="IN")
    t.add_argument("--from", dest="source", required=True)
    t.add_argument("--to", dest="target", required=True)
    t.add_argument("--steps", dest="frames", type=int, default=5, help="images from IN towards --to (angles 0 .. 0.5)")
    t.add_argument("--inverted", action="store_true",
                   help="decode from IN's own inverted noise with --from, at CFG 1 (the paper's way: frame 0 is IN and "
                        "the rest of the scene stays, but the edit lands less often; docs/unclip.md)")
    for p, out in ((v, "variations.png"), (i, "interpolation.png"), (t, "textdiff.png")):
        common(p, out)
