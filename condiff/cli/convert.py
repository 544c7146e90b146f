"""condiff convert: a Stable Diffusion model (diffusers folder or original single file) -> a diffusers folder."""
from __future__ import annotations

from pathlib import Path

from ..formats import convert, detect

PREDICTION_NAMES = ["epsilon", "v"]  # --prediction of a single file (v: SD2-768-style v-prediction)


def add_sd_arguments(p) -> None:
    """generate's options for Stable Diffusion models (--size is the output side in pixels there)."""
    p.add_argument("--width", type=int, help="Stable Diffusion: output width in pixels (a multiple of 8)")
    p.add_argument("--height", type=int, help="Stable Diffusion: output height in pixels (a multiple of 8)")
    p.add_argument("--prediction", choices=PREDICTION_NAMES,
                   help="Stable Diffusion single file: what its UNet predicts (default: epsilon; v for SD2-768)")


def _convert(args) -> None:
    if detect(args.input) is None:
        raise ValueError(f"IN: '{args.input}' is not a diffusers folder or a .safetensors Stable Diffusion file")
    if Path(args.out).exists():
        raise ValueError(f"--out: '{args.out}' exists; give a new folder")
    convert(args.input, args.out, args.prediction)
    print(f"converted {args.input} -> {args.out} (diffusers folder)")


def add_convert_parser(sub) -> None:
    c = sub.add_parser("convert", help="write a Stable Diffusion single file (or diffusers folder) as a diffusers folder")
    c.add_argument("input", metavar="IN", help="model.safetensors (original SD layout) or a diffusers folder")
    c.add_argument("--out", required=True, help="the diffusers folder to write")
    c.add_argument("--prediction", choices=PREDICTION_NAMES, help="what a single file's UNet predicts (default: epsilon)")
    c.set_defaults(func=_convert)
