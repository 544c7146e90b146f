"""condiff train | generate | eval: argument parsing only; the work is in pipelines and modules."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _train(args) -> None:
    from .config import load_json
    from .train.config import TrainConfig
    from .train.trainer import train

    cfg = load_json(TrainConfig, args.config)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.steps is not None:
        cfg.optim.steps = args.steps
    if args.data is not None:
        cfg.data.source, cfg.data.path = "imagefolder", args.data
    run = train(cfg, Path(args.out), resume=args.resume, device=args.device, workers=args.workers)
    print(f"trained {run.step} steps; model in {run.folder / 'model'}")


def _output_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix or '.png'}") for i in range(n)]


def _generate(args) -> None:
    from .diffusion.samplers import Variance
    from .diffusion.sampling import SAMPLER_INFO, Sampler, SamplingOptions, SigmaSchedule
    from .diffusion.thresholding import Threshold
    from .pipelines.text2image import DEFAULT_MODEL, Text2ImagePipeline
    from .png import format_parameters, save_png
    from .world.render import to_uint8

    model = Path(args.model) if args.model else DEFAULT_MODEL
    pipe = Text2ImagePipeline.from_pretrained(model)
    prompts = [p for p in args.prompts for _ in range(args.num_images)]
    seeds = [args.seed + i for i in range(len(prompts))]
    opts = SamplingOptions(steps=args.steps, guidance_scale=args.guidance_scale, sampler=Sampler(args.sampler),
                           eta=args.eta, schedule=SigmaSchedule(args.schedule), threshold=Threshold(args.threshold),
                           percentile=args.threshold_percentile, ddpm_variance=Variance(args.ddpm_variance),
                           negative_prompt=args.negative_prompt)
    for p in set(prompts) | {args.negative_prompt}:  # fail on bad input before any work
        pipe.text_encoder.tokenizer.encode(p)
    pipe.schedule.timesteps(opts.steps)
    if opts.ddpm_variance is Variance.LEARNED and not pipe.cfg.learn_sigma:
        raise ValueError("learned variance needs a model trained with learn_sigma")
    start = time.time()
    images = to_uint8(pipe.generate(prompts, seeds, opts, batch_size=args.batch_size, progress=True)).numpy()
    for path, px, prompt, seed in zip(_output_paths(Path(args.out), len(prompts)), images, prompts, seeds):
        params = {"Steps": opts.steps, "Sampler": SAMPLER_INFO[opts.sampler][0], "Schedule type": opts.schedule.value,
                  "Threshold": opts.threshold.value + (f" {opts.percentile}" if opts.threshold is Threshold.DYNAMIC else ""),
                  "CFG scale": opts.guidance_scale, "Seed": seed, "Size": f"{px.shape[1]}x{px.shape[0]}",
                  "Model": model.name, "Eta": opts.eta}
        save_png(px, path, format_parameters(prompt, opts.negative_prompt, params))
        print(path)
    print(f"{len(images)} image(s) in {time.time() - start:.1f} s", file=sys.stderr)


def _export(args) -> None:
    import torch

    from .pipelines.text2image import Text2ImagePipeline

    pipe = Text2ImagePipeline.from_pretrained(args.model)
    pipe.save_pretrained(args.out, dtype=torch.float16 if args.fp16 else None)
    print(f"exported {args.model} -> {args.out}")


def _samplers(args) -> None:
    from .diffusion.sampling import SAMPLER_INFO, SigmaSchedule

    print(f"{'--sampler':14s} {'A1111 name':14s} description")
    for sampler, (a1111, description) in SAMPLER_INFO.items():
        print(f"{sampler.value:14s} {a1111:14s} {description}")
    print("--schedule: " + ", ".join(s.value for s in SigmaSchedule) + " (karras: sigma samplers only)")


def _eval_bench(args) -> None:
    from .eval.bench import run_bench

    run_bench(args)


# The enums' values, spelled out so that building the parser does not import torch (tested to match).
SAMPLER_NAMES = ["ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde"]
SCHEDULE_NAMES = ["uniform", "leading", "trailing", "karras"]
THRESHOLD_NAMES = ["none", "static", "dynamic"]
VARIANCE_NAMES = ["small", "large", "learned"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="condiff", description="Text-to-image diffusion on the shapes world and your own images.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a text-conditional diffusion model")
    t.add_argument("--config", required=True, help="training config (JSON), e.g. configs/base32.json")
    t.add_argument("--out", required=True, help="run folder: config, checkpoints, samples, model/")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--seed", type=int, help="override the config's seed")
    t.add_argument("--steps", type=int, help="override the number of optimiser steps")
    t.add_argument("--data", help="train on an image folder with metadata.jsonl instead of the config's data")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    t.add_argument("--workers", type=int, help="data processes (default: half the cores, at most 8); results do not depend on it")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="generate images from prompts")
    g.add_argument("prompts", nargs="+", metavar="PROMPT")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--guidance-scale", type=float, default=3.0)
    g.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim", help="see 'condiff samplers'")
    g.add_argument("--schedule", choices=SCHEDULE_NAMES, default="uniform", help="step placement")
    g.add_argument("--threshold", choices=THRESHOLD_NAMES, default="static",
                   help="x0_hat clipping: static [-1, 1] or Imagen's dynamic thresholding")
    g.add_argument("--threshold-percentile", type=float, default=0.995, help="p of dynamic thresholding")
    g.add_argument("--ddpm-variance", choices=VARIANCE_NAMES, default="small",
                   help="ddpm sampler: posterior beta_tilde (small), beta (large), or the model's (learned)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 deterministic, 1 DDPM-like)")
    g.add_argument("--num-images", type=int, default=1, help="images per prompt")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--model", help="model folder (default: the shipped base32 model)")
    g.add_argument("--out", default="out.png", help="PNG path; with several images, OUT-000.png, OUT-001.png, ...")
    g.set_defaults(func=_generate)

    x = sub.add_parser("export", help="copy a model folder, optionally with fp16 weights (as shipped)")
    x.add_argument("model", help="model folder, e.g. runs/base32/model")
    x.add_argument("out", help="destination folder")
    x.add_argument("--fp16", action="store_true", help="store weights as float16 (half the size)")
    x.set_defaults(func=_export)

    sub.add_parser("samplers", help="list the samplers and step schedules").set_defaults(func=_samplers)

    e = sub.add_parser("eval", help="evaluate a model")
    esub = e.add_subparsers(dest="eval_command", required=True)
    b = esub.add_parser("bench", help="shapes-bench: accuracy per category, judged by the oracle")
    b.add_argument("--model", help="model folder (default: the shipped base32 model)")
    b.add_argument("--n-per-prompt", type=int, default=4)
    b.add_argument("--prompts-per-category", type=int, default=25)
    b.add_argument("--steps", type=int, default=50)
    b.add_argument("--guidance-scale", type=float, default=3.0)
    b.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim")
    b.add_argument("--schedule", choices=SCHEDULE_NAMES, default="uniform")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--device", help="cpu or cuda")
    b.add_argument("--out-dir", default="bench", help="writes report.json and grid.png here")
    b.set_defaults(func=_eval_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import USER_ERRORS

    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"condiff: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
