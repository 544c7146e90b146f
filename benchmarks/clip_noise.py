"""The blur/noise caveat of CLIP guidance, measured: how well does each CLIP read a noisy image's caption?

    python benchmarks/clip_noise.py --n 100

For t in a range of noise levels, zero-shot retrieval accuracy (the caption against its hard distractors, and
top-1 among all captions of the category) of: clean CLIP on x_t, clean CLIP on the base model's x0_hat(x_t),
and noise-aware CLIP on x_t. Writes docs/clip_noise.json and docs/clip_noise.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from condiff.diffusion.denoiser import x0_from_eps
from condiff.eval.retrieval import retrieval_table
from condiff.nets.clip import load_clip
from condiff.catalogue import DEFAULT_JUDGES
from condiff.pipelines.text2image import Text2ImagePipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="scenes per category")
    ap.add_argument("--timesteps", default="0,100,250,400,550,700,850")
    ap.add_argument("--out", default="docs/clip_noise.json")
    args = ap.parse_args()
    ts = [int(t) for t in args.timesteps.split(",")]
    pipe = Text2ImagePipeline.from_pretrained()
    clean, noisy = load_clip(DEFAULT_JUDGES["clip"]), load_clip(DEFAULT_JUDGES["noisy_clip"])

    @torch.no_grad()
    def x0_hat(x_t, t, captions):  # the base model's unconditional x0_hat: the caption must not leak into the image
        return x0_from_eps(pipe.schedule, x_t, t, pipe.denoiser(x_t, t, **pipe.encode([""] * len(captions)))).clamp(-1, 1)

    results = {}
    sch = pipe.schedule
    results["clean CLIP on x_t"] = retrieval_table(clean, args.n, 32, ts, sch)
    results["clean CLIP on x0_hat(x_t)"] = retrieval_table(clean, args.n, 32, ts, sch, denoise=x0_hat)
    results["noised CLIP on x_t"] = retrieval_table(noisy, args.n, 32, ts, sch)

    def mean_over_categories(table, key):
        return [sum(table[c][t][key] for c in table) / len(table) for t in ts]

    summary = {name: {"vs_distractors": mean_over_categories(tab, "vs_distractors"),
                      "top1": mean_over_categories(tab, "top1")} for name, tab in results.items()}
    print("mean over categories, accuracy against distractors (top-1 among captions)")
    print("| t | " + " | ".join(summary) + " |")
    print("| --- |" + " --- |" * len(summary))
    for i, t in enumerate(ts):
        print(f"| {t} | " + " | ".join(f"{s['vs_distractors'][i]:.2f} ({s['top1'][i]:.2f})" for s in summary.values()) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"timesteps": ts, "n_per_category": args.n, "summary": summary, "per_category": results},
                              indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in summary.items():
        axes[0].plot(ts, s["vs_distractors"], "o-", label=name)
        axes[1].plot(ts, s["top1"], "o-", label=name)
    for ax, title in zip(axes, ["caption vs its distractors", "top-1 among the category's captions"]):
        ax.set_xlabel("t (noise level, cosine schedule)")
        ax.set_ylabel("retrieval accuracy")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
