"""condiff edit clip: DiffusionCLIP on the command line (the work is in pipelines/diffusionclip.py)."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

SETTINGS = "diffusionclip.json"  # beside a saved fine-tuned model: how it was made, so --apply regenerates the same way


def _settings(args):
    from ..pipelines.diffusionclip import DiffusionCLIPConfig

    if args.apply:
        path = Path(args.apply) / SETTINGS
        if not path.is_file():
            raise ValueError(f"--apply: '{args.apply}' is not a model saved by edit clip --save-model (no {SETTINGS})")
        saved = json.loads(path.read_text())
        cfg = DiffusionCLIPConfig(**{f.name: saved["config"][f.name] for f in fields(DiffusionCLIPConfig)})
        return cfg, saved
    cfg = DiffusionCLIPConfig(t0=args.t0, steps=args.clip_steps, iterations=args.iterations, lr=args.lr,
                              l1_weight=args.l1_weight, regenerate_with=args.regenerate_with)
    cfg.validate()
    return cfg, None


def _edit_clip(args) -> None:
    from ..images import image_tensor, open_image, to_model_size
    from ..nets.clip import load_clip
    from ..pipelines.diffusionclip import apply, check, fine_tune
    from ..catalogue import DEFAULT_JUDGES
    from ..pipelines.text2image import Text2ImagePipeline
    from ..catalogue import DEFAULT_MODEL
    from ..pipelines.requests import ModelTag
    from ..png import check_writable, format_parameters, save_png
    from ..world.render import to_uint8

    for name in ("source", "target"):
        if not getattr(args, name).strip():
            raise ValueError(f"--{name}: must not be empty")
    cfg, saved = _settings(args)
    check_writable([Path(args.out)] + ([Path(args.save_model) / SETTINGS] if args.save_model else []))
    if args.save_model and args.apply:
        raise ValueError("--save-model: give it when fine-tuning, not with --apply (that model is saved already)")
    image = open_image(args.input)
    train = [open_image(p) for p in args.train or []]
    model = Path(args.model) if args.model else DEFAULT_MODEL
    pipe = Text2ImagePipeline.from_pretrained(model)
    clip = load_clip(args.judge or DEFAULT_JUDGES["clip"])
    check(pipe, clip, [args.source], [args.target], cfg)
    x = image_tensor(to_model_size(image, pipe.resolution))
    t = time.time()
    if saved is not None:
        edited = Text2ImagePipeline.from_pretrained(args.apply)
    else:
        import torch

        xs = torch.cat([x] + [image_tensor(to_model_size(im, pipe.resolution)) for im in train])
        edited, losses = fine_tune(pipe, clip, xs, [args.source] * len(xs), [args.target] * len(xs), cfg, progress=True)
        print(f"fine-tuned on {len(xs)} image(s) in {time.time() - t:.1f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}",
              file=sys.stderr)
        if args.save_model:
            edited.save_pretrained(args.save_model)
            record = {"config": asdict(cfg), "base": str(model), "source": args.source, "target": args.target}
            (Path(args.save_model) / SETTINGS).write_text(json.dumps(record, indent=1) + "\n")
            print(args.save_model)
    out = apply(pipe, edited, x, [args.source], [args.target], cfg)
    px = to_uint8(out).numpy()[0]
    info = {"Edit": "DiffusionCLIP", "Source": args.source, "Target": args.target, "t0": cfg.t0, "Steps": cfg.steps,
            "Size": f"{px.shape[1]}x{px.shape[0]}", **ModelTag.of(model).parameters()}
    info |= ({"Fine-tune iterations": cfg.iterations, "Fine-tune lr": cfg.lr, "L1 weight": cfg.l1_weight}
             if saved is None else {"Fine-tuned model": Path(args.apply).name})
    save_png(px, Path(args.out), format_parameters(args.target, "", info))
    print(args.out)


def add_clip_parser(esub) -> None:
    from ..pipelines.diffusionclip import DiffusionCLIPConfig

    d = DiffusionCLIPConfig()
    c = esub.add_parser("clip", help="DiffusionCLIP: fine-tune a copy of the model from --source to --target, then edit IN")
    c.add_argument("input", metavar="IN", help="the image to edit (also a training image unless --apply)")
    c.add_argument("--source", required=True, help="what IN shows, e.g. 'a red circle'")
    c.add_argument("--target", required=True, help="what it should show, e.g. 'a blue circle'")
    c.add_argument("--train", nargs="*", metavar="IMG", help="more training images of the source kind")
    c.add_argument("--save-model", help="folder to save the fine-tuned model in (then --apply edits other images)")
    c.add_argument("--apply", metavar="DIR", help="edit with a model saved by --save-model, without fine-tuning")
    c.add_argument("--model", help="model folder (default: the shipped layout64 model)")
    c.add_argument("--judge", help="condiff CLIP folder for the directional loss (default: the shipped clip32)")
    c.add_argument("--t0", type=float, default=d.t0, help="share of the chain inverted and regenerated")
    c.add_argument("--clip-steps", type=int, default=d.steps, help="DDIM steps of the whole chain")
    c.add_argument("--iterations", type=int, default=d.iterations, help="fine-tuning passes over the images")
    c.add_argument("--lr", type=float, default=d.lr)
    c.add_argument("--l1-weight", type=float, default=d.l1_weight, help="identity (L1) loss weight")
    c.add_argument("--regenerate-with", choices=["target", "source"], default=d.regenerate_with)
    c.add_argument("--out", default="diffusionclip.png", help="PNG path (with the edit's parameters as infotext)")
    c.set_defaults(func=_edit_clip)
