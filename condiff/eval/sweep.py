"""condiff eval sweep: every guidance method over a range of scales, judged by FD, KID, precision, recall,
CLIP score (condiff CLIP features) and shapes-bench accuracy (the oracle); JSON report and trade-off plots."""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..catalogue import DEFAULT_JUDGES, DEFAULT_MODEL
from ..diffusion.sampling import SamplingOptions
from ..nets.classifier import load_classifier
from ..nets.clip import load_clip
from ..pipelines.guidance import (
    GuidanceMethod,
    GuidanceOptions,
    NoiseOptimization,
    make_guide,
    make_initializer,
)
from ..pipelines.text2image import Text2ImagePipeline
from ..world.bench import SUITES, suite_prompts
from ..world.grammar import parse_caption
from ..world.oracle import judge
from ..world.render import layout, render, to_uint8
from .bench import MAIN
from .fd import feature_stats, frechet_distance
from .inception import inception_features, load_inception
from .metrics import clip_metric_features, clip_scores, kid, precision_recall

CFG = "cfg"
XT = "clip_xT"  # CLIP-optimised initial noise; its 'scale' is the number of ascent iterations
DEFAULT_SCALES = {
    CFG: [1.0, 2.0, 3.0, 5.0, 8.0],
    "cfg_rescale": [5.0, 8.0],  # CFG with guidance rescale phi = 0.7
    GuidanceMethod.CLASSIFIER.value: [1.0, 3.0, 10.0],
    GuidanceMethod.CLIP.value: [1.0, 3.0, 10.0],
    GuidanceMethod.CLIP_X0.value: [0.3, 1.0, 3.0],
    GuidanceMethod.CONTRASTIVE.value: [1.0, 3.0, 10.0],
    XT: [3.0, 6.0],
}


@dataclass
class Workload:
    suites: list[str]
    prompts: list[str]
    seeds: list[int]


def workload(prompts_per_category: int, n_per_prompt: int, seed: int = 0) -> Workload:
    jobs = [(s, p) for s in SUITES for p in suite_prompts(s, prompts_per_category) for _ in range(n_per_prompt)]
    return Workload([s for s, _ in jobs], [p for _, p in jobs], [seed + i for i in range(len(jobs))])


def reference_images(prompts: list[str], resolution: int, copies: int = 4, seed: int = 0) -> torch.Tensor:
    """Ground-truth renders of the same prompts (`copies` layouts each): the 'real' set of FD/KID/precision/recall."""
    rng = random.Random(f"sweep-reference/{seed}")
    layouts = [layout(parse_caption(p), rng) for p in prompts for _ in range(copies)]
    return render(layouts, resolution)


def sample(pipe: Text2ImagePipeline, work: Workload, method: str, scale: float, opts: SamplingOptions,
           judges: dict, batch_size: int) -> torch.Tensor:
    """Images of one (method, scale) point; gradient methods guide the plain conditional model (CFG scale 1)."""
    out = []
    for i in range(0, len(work.prompts), batch_size):
        prompts, seeds = work.prompts[i:i + batch_size], work.seeds[i:i + batch_size]
        if method in (CFG, "cfg_rescale"):
            o = opts.replace(guidance_scale=scale, guidance_rescale=0.7 if method == "cfg_rescale" else 0.0)
            out.append(pipe(prompts, seeds, o).cpu())
        elif method == XT:
            out.append(clip_xT_images(pipe, prompts, seeds, opts, judges["clip"], int(scale)).cpu())
        else:
            m = GuidanceMethod(method)
            key = {GuidanceMethod.CLASSIFIER: "classifier", GuidanceMethod.CLIP_X0: "clip"}.get(m, "noisy_clip")
            guide = make_guide(GuidanceOptions(m, scale), judges[key])
            o = opts.replace(guidance_scale=1.0)
            out.append(pipe(prompts, seeds, o, guide=guide).cpu())
    return torch.cat(out)


def clip_xT_images(pipe: Text2ImagePipeline, prompts, seeds, opts: SamplingOptions, clip, iters: int,
                   chain_steps: int = 10) -> torch.Tensor:
    """Optimise x_T for CLIP similarity through a DDIM chain of min(chain_steps, opts.steps) steps, then sample from
    it with opts (the plain conditional model, CFG scale 1)."""
    init = make_initializer(NoiseOptimization(iters, min(chain_steps, opts.steps)), clip)
    return pipe(prompts, seeds, opts.replace(guidance_scale=1.0), init=init)


def point_metrics(images: torch.Tensor, work: Workload, real_features: np.ndarray, clip, features) -> dict:
    verdicts = [judge(px, p).correct for px, p in zip(to_uint8(images).numpy(), work.prompts)]
    acc = {s: float(np.mean([v for v, su in zip(verdicts, work.suites) if su == s])) for s in SUITES}
    acc["overall"] = float(np.mean([acc[s] for s in MAIN]))
    feats = features(images)
    precision, recall = precision_recall(real_features, feats)
    kid_mean, kid_std = kid(real_features, feats, subsets=50, subset_size=min(1000, len(feats)))
    return {"accuracy": acc, "fd": frechet_distance(*feature_stats(real_features), *feature_stats(feats)),
            "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
            "clip_score": float(clip_scores(clip, images, work.prompts).mean())}


def markdown_table(report: dict) -> str:
    """The sweep as a Markdown table, one row per (method, scale), the real-vs-real floor first."""
    cats = [s for s in SUITES if s != "held_out"]
    head = ["method", "scale", "overall", *cats, "held-out", "FD", "KID (± std)", "precision", "recall", "CLIP score"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def row(name, scale, p):
        a = p["accuracy"]
        cells = [name, scale, f"**{a['overall']:.3f}**", *(f"{a[c]:.2f}" for c in cats), f"{a['held_out']:.2f}",
                 f"{p['fd']:.2f}", f"{p['kid']:.3f} ± {p['kid_std']:.3f}", f"{p['precision']:.2f}",
                 f"{p['recall']:.2f}", f"{p['clip_score']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")

    if "rendered" in report:
        row("rendered (real vs real)", "", report["rendered"])
    for method, points in report["methods"].items():
        for p in points:
            row(method, f"{p['scale']:g}", p)
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for method, points in report["methods"].items():
        scales = [p["scale"] for p in points]
        axes[0].plot([p["clip_score"] for p in points], [p["fd"] for p in points], "o-", label=method)
        for p in points:
            axes[0].annotate(f"{p['scale']:g}", (p["clip_score"], p["fd"]), fontsize=7)
        axes[1].plot(scales, [p["accuracy"]["overall"] for p in points], "o-", label=method)
        axes[2].plot(scales, [p["recall"] for p in points], "o-", label=method)
        axes[3].plot(scales, [p["precision"] for p in points], "o-", label=method)
    floor = report.get("rendered")
    if floor:
        axes[0].plot([floor["clip_score"]], [floor["fd"]], "k*", ms=12, label="rendered (real vs real)")
        for ax, key in ((axes[2], "recall"), (axes[3], "precision")):
            ax.axhline(floor[key], color="k", ls="--", lw=0.8, label="rendered")
    base = report["methods"].get(CFG, [{}])[0]
    if "accuracy" in base:
        axes[1].axhline(base["accuracy"]["overall"], color="grey", ls=":", label="unguided (cfg 1)")
    titles = [("CLIP score", f"FD ({report['features']})"), ("scale", "shapes-bench accuracy (overall)"),
              ("scale", "recall"), ("scale", "precision")]
    for ax, (xl, yl) in zip(axes, titles):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.set_xscale("log")
    axes[1].legend(fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"guidance sweep: {report['sampler']} {report['steps']} steps, {report['images_per_point']} images per point")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_sweep(args) -> dict:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # fail before the work, not after it
        raise ValueError("eval sweep draws its plots with matplotlib: pip install 'condiff[bench]'")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = Text2ImagePipeline.from_pretrained(Path(args.model) if args.model else DEFAULT_MODEL).to(device)
    judges = {k: (load_clip(v) if "clip" in k else load_classifier(v)).to(device) for k, v in DEFAULT_JUDGES.items()}
    metric_clip = load_clip(args.metric_clip or DEFAULT_JUDGES["clip"]).to(device)
    opts = SamplingOptions.from_args(args, base=pipe.defaults)
    work = workload(args.prompts_per_category, args.n_per_prompt, args.seed)
    if args.inception:
        inception = load_inception(args.inception).to(device)
        features, feature_name = (lambda x: inception_features(inception, x)), "Inception pool3 (pytorch-fid)"
    else:
        def features(x):
            return clip_metric_features(metric_clip, x)
        feature_name = "condiff CLIP image tower (clip32), x sqrt(D)"
    real = features(reference_images(work.prompts[::args.n_per_prompt], pipe.resolution, copies=args.n_per_prompt * 2))
    methods = args.methods.split(",") if args.methods else list(DEFAULT_SCALES)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"sampler": opts.sampler.value, "steps": opts.steps, "images_per_point": len(work.prompts),
              "reference_images": len(real), "features": feature_name, "methods": {}}
    # the floor of every metric: fresh renders of the same prompts (new layouts) against the reference set. Both sets
    # are stratified by prompt, not i.i.d., so even real-vs-real KID sits below 0: compare KID against this row
    rendered = reference_images(work.prompts, pipe.resolution, copies=1, seed=args.seed + 1)
    report["rendered"] = point_metrics(rendered, work, real, metric_clip, features)
    r = report["rendered"]
    print(f"rendered (real vs real): acc {r['accuracy']['overall']:.3f}  FD {r['fd']:.3f}  KID {r['kid']:.4f}  "
          f"P {r['precision']:.2f}  R {r['recall']:.2f}  CLIP {r['clip_score']:.1f}")
    from tqdm.auto import tqdm

    points = [(m, s) for m in methods for s in DEFAULT_SCALES[m]]
    for method, scale in tqdm(points, desc="sweep", unit="point"):
        start = time.time()
        images = sample(pipe, work, method, scale, opts, judges, args.batch_size)
        row = {"scale": scale, **point_metrics(images, work, real, metric_clip, features), "seconds": round(time.time() - start, 1)}
        report["methods"].setdefault(method, []).append(row)
        tqdm.write(f"{method:12s} {scale:6g}  acc {row['accuracy']['overall']:.3f}  FD {row['fd']:.3f}  "
                   f"KID {row['kid']:.4f}  P {row['precision']:.2f}  R {row['recall']:.2f}  "
                   f"CLIP {row['clip_score']:.1f}  ({row['seconds']} s)")
        (out / "sweep.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out / "sweep.png")
    print(markdown_table(report))
    print(f"report: {out / 'sweep.json'}  plots: {out / 'sweep.png'}")
    return report
