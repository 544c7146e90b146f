"""condiff control KIND IN --out MAP (a control map from an image), and generate's --control options."""
from __future__ import annotations

import argparse
from pathlib import Path

CONTROL_KINDS = ["edges", "segmentation"]  # nets.controlnet.ControlKind's values, spelled out so that building the
# parser imports neither torch nor the oracle (tested to match)


def add_control_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("--control", metavar="MAP", help="ControlNet: a control map of the model's size (condiff control "
                                                    "edges IN --out MAP makes one); the map decides the layout")
    g.add_argument("--control-kind", choices=CONTROL_KINDS, default="edges", help="what the map is")
    g.add_argument("--control-scale", type=float, default=1.0,
                   help="multiplies the ControlNet's residuals (0: the base model alone)")
    g.add_argument("--control-model", help="ControlNet folder (default: the shipped one of --control-kind)")
    g.add_argument("--control-guess", action="store_true",
                   help="guess mode: the map only in CFG's conditional branch, residuals graded 0.1-1 by depth")


def check_control_args(args, model: Path) -> Path | None:
    """Before any model loads: the scale, the map file, the ControlNet folder and its kind, and a condiff model.
    Returns the ControlNet's folder (None without --control)."""
    if not args.control:
        return None
    from .. import components
    from ..catalogue import CONTROLNETS, model_folder
    from ..config import read_json
    from ..formats import detect
    from ..images import open_image
    from ..pipelines.controlnet import MAX_SCALE

    if not 0 <= args.control_scale <= MAX_SCALE:  # NaN fails too
        raise ValueError(f"--control-scale: must be between 0 and {MAX_SCALE:g}, got {args.control_scale}")
    if detect(model) is not None:
        raise ValueError("--control: ControlNets apply to condiff models so far, not to Stable Diffusion")
    open_image(args.control, "--control")
    folder = Path(model_folder(args.control_model)) if args.control_model else CONTROLNETS[args.control_kind]
    if not (folder / "config.json").is_file():
        raise ValueError(f"--control-model: no ControlNet at '{folder}' (train one with "
                         f"configs/controlnet_{args.control_kind}64.json)")
    if components.guess_type(folder) is not components.ComponentType.CONTROLNET:
        raise ValueError(f"--control-model: '{folder}' holds a {components.guess_type(folder).value}, not a ControlNet")
    kind = read_json(folder / "config.json").get("kind")
    if kind != args.control_kind:
        raise ValueError(f"--control-model: '{folder}' reads {kind} maps, not {args.control_kind}")
    return folder


def control_from_args(args, pipe, folder: Path | None):
    """The request's Control, with pipe put under the ControlNet in folder; None without --control."""
    if folder is None:
        return None
    from .. import components
    from ..pipelines.controlnet import checked_map, with_control
    from ..pipelines.requests import Control

    control_map = checked_map(args.control, args.control_kind, pipe, args.control_scale)
    with_control(pipe, components.load("controlnet", folder))
    return Control(control_map, args.control_kind, args.control_scale, folder.name, args.control_guess)


def _control(args) -> None:
    from ..images import open_image
    from ..pipelines.controlnet import map_from_image, map_png
    from ..png import check_writable, save_png

    if not 8 <= args.size <= 2048:
        raise ValueError(f"--size: must be between 8 and 2048 pixels, got {args.size}")
    out = Path(args.out)
    check_writable([out])
    save_png(map_png(map_from_image(open_image(args.input), args.kind, args.size)), out, f"Control map: {args.kind}")
    print(out)


def add_control_parser(sub) -> None:
    c = sub.add_parser("control", help="make a ControlNet control map from an image (generate --control reads it)")
    c.add_argument("kind", choices=CONTROL_KINDS, help="edges: thin binary edges (a Canny-like detector); segmentation: "
                                                       "each object in its class's colour (circle crimson, square "
                                                       "steel blue, triangle orange) on black")
    c.add_argument("input", metavar="IN", help="image (PNG, JPEG, ...); centre-cropped and resized to --size")
    c.add_argument("--out", required=True, metavar="MAP", help="PNG path of the map")
    c.add_argument("--size", type=int, default=64, help="side of the map: the model's image side (64 for the default)")
    c.set_defaults(func=_control)
