"""The command line's shared arguments: sampler options, run options and value types. Building them imports no
torch, so that `condiff --help` and argument errors are instant."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type of counts (images, batch sizes): a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text[:30]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


MAX_IMAGES = 10_000  # default --max-images: images one call may make (memory stays flat; time and disk do not)


def add_image_bound(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-images", type=positive_int, default=MAX_IMAGES,
                   help=f"refuse a call that would make more images than this (default {MAX_IMAGES:,})")


def check_image_count(n: int, limit: int, what: str = "--num-images") -> None:
    """One line, before any model loads, for a call over --max-images."""
    if n > limit:
        raise ValueError(f"{what}: {n:,} images in one call is over --max-images {limit:,}; split the call or "
                         "raise --max-images")


# The enums' values, spelled out so that building the parser does not import torch (tested to match).
SAMPLER_NAMES = ["ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "lcm"]
SCHEDULE_NAMES = ["uniform", "leading", "trailing", "progressive", "karras", "exponential"]
THRESHOLD_NAMES = ["none", "static", "dynamic"]
VARIANCE_NAMES = ["small", "large", "learned"]
GUIDANCE_METHOD_NAMES = ["classifier", "clip", "clip_x0", "contrastive"]
GUIDANCE_FORM_NAMES = ["score", "mean"]
GUIDE_NAMES = ["cfg", "cfg_rescale", *GUIDANCE_METHOD_NAMES, "clip_xT"]  # eval sweep's methods


def add_sampling_arguments(p: argparse.ArgumentParser, steps: int | None, guidance: bool = True,
                           full: bool = False) -> None:
    """The sampler options shared by generate, eval bench and eval sweep (read back by SamplingOptions.from_args);
    steps None: the model's own (its pipeline.json)."""
    p.add_argument("--steps", type=int, default=steps,
                   help="sampling steps (default: the model's own, e.g. 20)" if steps is None else
                   f"sampling steps (default: {steps})")
    if guidance:
        p.add_argument("--guidance-scale", type=float,
                       help="classifier-free guidance scale (default: the model's: 3 for condiff's models, 7.5 for "
                            "Stable Diffusion)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES,
                   help="see 'condiff samplers' (default: the model's: dpmpp_2m for the default, ddim for condiff's "
                        "other models, lcm or ddim for a distilled one)")
    p.add_argument("--schedule", choices=SCHEDULE_NAMES,
                   help="step placement (default: the model's, e.g. karras; leading for ddim/ddpm on a model that "
                        "saved a sigma placement)")
    if not full:
        return
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--threshold", choices=THRESHOLD_NAMES,
                   help="x0_hat clipping: static [-1, 1] or Imagen's dynamic thresholding (default: the model's: "
                        "static for pixel models, none for latent ones)")
    p.add_argument("--threshold-percentile", type=float, default=0.995, help="p of dynamic thresholding")
    p.add_argument("--ddpm-variance", choices=VARIANCE_NAMES, default="small",
                   help="ddpm sampler: posterior beta_tilde (small), beta (large), or the model's (learned)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 deterministic, 1 DDPM-like)")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="phi of CFG rescale (Lin et al.; 0: off)")


def add_lora_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="apply a LoRA adapter (safetensors in diffusers/PEFT or kohya layout, or a diffusers LoRA folder) "
                        "with this weight (default 1; 0: no change); repeat for several")


def add_embedding_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="add a textual-inversion token (safetensors: diffusers' {token: vectors} or A1111's emb_params, "
                        "named by the file); repeat for several")


def adapters_from_args(args) -> tuple[list, list]:
    """--lora and --embedding specs, each file read and checked before any model loads."""
    from ..formats import embeddings, lora

    loras = [lora.LoRASpec.parse(text) for text in getattr(args, "lora", [])]
    for spec in loras:
        lora.read(spec.path)
    embs = [embeddings.EmbeddingSpec(path) for path in getattr(args, "embedding", [])]
    for spec in embs:
        embeddings.read(spec.path)
    return loras, embs


def apply_adapters(pipe, loras: list, embs: list) -> None:
    from ..formats import embeddings, lora

    lora.apply(pipe.parts, loras)
    embeddings.apply(pipe.parts, embs)


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", help="CPU threads for torch (default: CONDIFF_THREADS, else OMP_NUM_THREADS, else the "
                                     "cores other processes leave free)")


def add_run_arguments(p: argparse.ArgumentParser, batch_size: int, seed_help: str = "seed of the first image") -> None:
    p.add_argument("--model", help="model folder (default: the shipped layout64 model)")
    add_threads_argument(p)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--device", help="cpu or cuda")
