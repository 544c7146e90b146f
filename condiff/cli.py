"""condiff train | generate | eval: argument parsing only; the work is in pipelines and modules."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _train(args) -> None:
    from .config import load_json, read_json
    from .train.auxiliary import AuxTrainConfig, train_aux
    from .train.config import TrainConfig
    from .train.trainer import train

    aux = "model" in read_json(args.config)  # clip / classifier configs name their model; text2image is the default
    cfg = load_json(AuxTrainConfig if aux else TrainConfig, args.config)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.steps is not None:
        cfg.optim.steps = args.steps
    if args.data is not None:
        cfg.data.source, cfg.data.path = "imagefolder", args.data
    if aux:
        train_aux(cfg, Path(args.out), resume=args.resume, device=args.device)
        print(f"trained {cfg.model.value}; model in {Path(args.out) / 'model'}")
        return
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
                           negative_prompt=args.negative_prompt, guidance_rescale=args.guidance_rescale)
    for p in set(prompts) | {args.negative_prompt}:  # fail on bad input before any work
        pipe.text_encoder.tokenizer.encode(p)
    pipe.schedule.timesteps(opts.steps)
    if opts.ddpm_variance is Variance.LEARNED and not pipe.cfg.learn_sigma:
        raise ValueError("learned variance needs a model trained with learn_sigma")
    guide, guide_params = None, {}
    if args.guide:
        from .pipelines.guidance import GuidanceForm, GuidanceMethod, GuidanceOptions, check_prompts, make_guide

        gopts = GuidanceOptions(GuidanceMethod(args.guide), args.guide_scale, GuidanceForm(args.guide_form), args.guide_model)
        guide = make_guide(gopts)
        guide_params = {"Guidance": gopts.method.value, "Guidance scale": gopts.scale, "Guidance form": gopts.form.value}
        check_prompts(gopts.method, prompts)
    init = None
    if args.clip_xt_iters:
        from .pipelines.guidance import NoiseOptimization, make_initializer

        init = make_initializer(NoiseOptimization(args.clip_xt_iters, args.clip_xt_chain, judge=args.clip_xt_model))
        pipe.schedule.timesteps(args.clip_xt_chain)
        guide_params.update({"CLIP x_T iterations": args.clip_xt_iters, "CLIP x_T chain": args.clip_xt_chain})
    start = time.time()
    images = to_uint8(pipe.generate(prompts, seeds, opts, batch_size=args.batch_size, progress=True,
                                    guide=guide, init=init)).numpy()
    for path, px, prompt, seed in zip(_output_paths(Path(args.out), len(prompts)), images, prompts, seeds):
        params = {"Steps": opts.steps, "Sampler": SAMPLER_INFO[opts.sampler][0], "Schedule type": opts.schedule.value,
                  "Threshold": opts.threshold.value + (f" {opts.percentile}" if opts.threshold is Threshold.DYNAMIC else ""),
                  "CFG scale": opts.guidance_scale, "Seed": seed, "Size": f"{px.shape[1]}x{px.shape[0]}",
                  "Model": model.name, "Eta": opts.eta, **guide_params}
        if opts.guidance_rescale:
            params["Guidance rescale"] = opts.guidance_rescale
        save_png(px, path, format_parameters(prompt, opts.negative_prompt, params))
        print(path)
    print(f"{len(images)} image(s) in {time.time() - start:.1f} s", file=sys.stderr)


def _export(args) -> None:
    import torch

    from .pipelines.text2image import Text2ImagePipeline

    dtype = torch.float16 if args.fp16 else None
    if (Path(args.model) / "pipeline.json").is_file():
        Text2ImagePipeline.from_pretrained(args.model).save_pretrained(args.out, dtype=dtype)
    else:  # a judge (CLIP or classifier): one component folder
        from .io import replace_dir, save_component
        from .nets.classifier import load_classifier
        from .nets.clip import load_clip
        from .config import read_json

        is_clip = "text" in read_json(Path(args.model) / "config.json")
        model = (load_clip if is_clip else load_classifier)(args.model)
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        save_component(model, model.cfg, tmp, dtype)
        replace_dir(tmp, out)
    print(f"exported {args.model} -> {args.out}")


def _samplers(args) -> None:
    from .diffusion.sampling import SAMPLER_INFO, SigmaSchedule

    print(f"{'--sampler':14s} {'A1111 name':14s} description")
    for sampler, (a1111, description) in SAMPLER_INFO.items():
        print(f"{sampler.value:14s} {a1111:14s} {description}")
    print("--schedule: " + ", ".join(s.value for s in SigmaSchedule) + " (karras, exponential: sigma samplers only)")
    from .pipelines.guidance import METHOD_INFO

    print(f"\n{'--guide':14s} description")
    for method, description in METHOD_INFO.items():
        print(f"{method.value:14s} {description}")
    print("--clip-xt-iters N: CLIP-optimised initial noise (Adam on x_T through a DDIM chain; combines with the above)")


def _serve(args) -> None:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ValueError("condiff serve needs the web UI extra: pip install 'condiff[ui]'")
    from .ui.app import serve

    serve(args.host, args.port, args.model, args.device or "cpu")


def _eval_sweep(args) -> None:
    from .eval.sweep import run_sweep

    run_sweep(args)


def _eval_clip(args) -> None:
    import json

    from .diffusion.schedule import NoiseSchedule, ScheduleConfig
    from .eval.retrieval import retrieval_table
    from .nets.clip import load_clip
    from .pipelines.guidance import DEFAULT_JUDGES

    clip = load_clip(args.model or DEFAULT_JUDGES["clip"])
    timesteps = [int(t) for t in args.timesteps.split(",")] if clip.noise_aware else [0]
    table = retrieval_table(clip, args.n, clip.cfg.image.resolution, timesteps, NoiseSchedule.from_config(ScheduleConfig()))
    print("| category | t | top-1 among captions | vs distractors | captions |")
    print("| --- | --- | --- | --- | --- |")
    for cat, rows in table.items():
        for t, r in rows.items():
            print(f"| {cat} | {t} | {r['top1']:.3f} | {r['vs_distractors']:.3f} | {r['pool']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")


def _eval_bench(args) -> None:
    from .eval.bench import run_bench

    run_bench(args)


# The enums' values, spelled out so that building the parser does not import torch (tested to match).
SAMPLER_NAMES = ["ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde"]
SCHEDULE_NAMES = ["uniform", "leading", "trailing", "karras", "exponential"]
THRESHOLD_NAMES = ["none", "static", "dynamic"]
VARIANCE_NAMES = ["small", "large", "learned"]
GUIDANCE_METHOD_NAMES = ["classifier", "clip", "clip_x0", "contrastive"]
GUIDANCE_FORM_NAMES = ["score", "mean"]
GUIDE_NAMES = ["cfg", "cfg_rescale", *GUIDANCE_METHOD_NAMES, "clip_xT"]  # eval sweep's methods


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
    g.add_argument("--guidance-rescale", type=float, default=0.0, help="phi of CFG rescale (Lin et al.; 0: off)")
    g.add_argument("--guide", choices=GUIDANCE_METHOD_NAMES,
                   help="gradient guidance by a judge model, on top of CFG (use --guidance-scale 1 for it alone)")
    g.add_argument("--guide-scale", type=float, default=3.0, help="s of --guide")
    g.add_argument("--guide-form", choices=GUIDANCE_FORM_NAMES, default="score",
                   help="score: eps - sqrt(1-abar) s grad (any sampler); mean: mu + Sigma s grad (ddpm)")
    g.add_argument("--guide-model", help="judge folder (default: the shipped classifier32 / clip32 / noisy_clip32)")
    g.add_argument("--clip-xt-iters", type=int, default=0,
                   help="CLIP-optimised x_T: Adam steps on the initial noise through a DDIM chain (0: off)")
    g.add_argument("--clip-xt-chain", type=int, default=10, help="DDIM steps of that differentiable chain")
    g.add_argument("--clip-xt-model", help="clean CLIP folder for --clip-xt-iters (default: the shipped clip32)")
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

    v = sub.add_parser("serve", help="web UI and JSON API (offline; binds 127.0.0.1 unless --host says otherwise)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind, e.g. 0.0.0.0 to serve the network")
    v.add_argument("--port", type=int, default=7860)
    v.add_argument("--model", help="model folder (default: the shipped base32 model)")
    v.add_argument("--device", help="cpu or cuda")
    v.set_defaults(func=_serve)

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

    w = esub.add_parser("sweep", help="every guidance method over scales: FD, KID, precision, recall, CLIP score, accuracy")
    w.add_argument("--model", help="model folder (default: the shipped base32 model)")
    w.add_argument("--methods", help=f"comma-separated subset of: {', '.join(GUIDE_NAMES)} (default: all)")
    w.add_argument("--metric-clip", help="CLIP folder for features and CLIP score (default: the shipped clip32)")
    w.add_argument("--inception", help="FID Inception weights (safetensors, pytorch-fid keys) for FD/KID/P/R features")
    w.add_argument("--n-per-prompt", type=int, default=4)
    w.add_argument("--prompts-per-category", type=int, default=10)
    w.add_argument("--steps", type=int, default=25)
    w.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim")
    w.add_argument("--schedule", choices=SCHEDULE_NAMES, default="uniform")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--batch-size", type=int, default=100)
    w.add_argument("--device", help="cpu or cuda")
    w.add_argument("--out-dir", default="sweep", help="writes sweep.json and sweep.png here")
    w.set_defaults(func=_eval_sweep)

    c = esub.add_parser("clip", help="zero-shot retrieval accuracy of a condiff CLIP on world scenes")
    c.add_argument("--model", help="CLIP folder (default: the shipped clip32)")
    c.add_argument("--n", type=int, default=200, help="scenes per category")
    c.add_argument("--timesteps", default="0,250,500,750", help="noise levels for a noise-aware CLIP")
    c.add_argument("--out", help="also write the table as JSON here")
    c.set_defaults(func=_eval_clip)
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
