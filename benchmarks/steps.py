"""Quality per step: shapes-bench accuracy and FD (against rendered ground truth) for each sampler over NFE.

    python benchmarks/steps.py --nfe 10 20 50 100 250 --out-dir docs/steps            # the full sweep (GPU advised)
    python benchmarks/steps.py --samplers ddim dpmpp_2m --nfe 10 20 --prompts-per-category 5 --n-per-prompt 2
    python benchmarks/steps.py --samplers dpmpp_2m euler_a --nfe 10 --reference ddpm:250   # issue 3's bar

NFE counts model evaluations per image (a guided evaluation counts once): Heun takes (NFE + 1) / 2 steps.
FD uses condiff CLIP image features (clip32, unit norm x sqrt(D), as condiff eval sweep) against renders of the
same prompts; --features pixels uses 8x8 area-averaged pixels instead. With --reference SAMPLER:NFE that run is made
too (the baseline, in the same command), and every row gets its overall-accuracy gap to it with the paired
standard error over the same prompts and seeds. --ddpm-variances gives DDPM one row per variance (small, large,
learned: improved DDPM's comparison of a learned Sigma against the fixed ones at each step count):

    python benchmarks/steps.py --model runs/layout64_lv --samplers ddpm --nfe 10 25 50 250 --ddpm-variances small learned
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from condiff.diffusion.sampling import SIGMA_SAMPLERS, SIGMA_SCHEDULES, Sampler, SigmaSchedule
from condiff.eval.bench import bench_samples, summarize
from condiff.eval.bench import MAIN
from condiff.eval.fd import fd, pixel_features
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.catalogue import DEFAULT_MODEL
from condiff.world.grammar import parse_caption
from condiff.world.render import layout, render


def steps_for(sampler: Sampler, nfe: int) -> int:
    return (nfe + 1) // 2 if sampler is Sampler.HEUN else nfe


def ground_truth(prompts: list[str], resolution: int, seed: int = 0) -> torch.Tensor:
    rng = random.Random(seed)
    return render([layout(parse_caption(p), rng) for p in prompts], resolution)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    label = lambda r: r["sampler"] + (f" ({r['ddpm_variance']})" if r.get("ddpm_variance") else "")  # noqa: E731
    for line in dict.fromkeys(label(r) for r in rows):
        mine = [r for r in rows if label(r) == line]
        ax1.plot([r["nfe"] for r in mine], [r["overall"] for r in mine], marker="o", label=line)
        ax2.plot([r["nfe"] for r in mine], [r["fd"] for r in mine], marker="o", label=line)
    for ax, label in ((ax1, "shapes-bench overall accuracy"), (ax2, "FD to ground truth")):
        ax.set_xscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--samplers", nargs="+", default=[s.value for s in Sampler])
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100, 250])
    parser.add_argument("--schedule", default="karras", choices=[s.value for s in SigmaSchedule],
                        help="for the sigma samplers; DDPM and DDIM always use uniform respacing with karras or exponential")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--prompts-per-category", type=int, default=25)
    parser.add_argument("--n-per-prompt", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--features", choices=["clip", "pixels"], default="clip", help="FD features")
    parser.add_argument("--reference", help="SAMPLER:NFE baseline for paired accuracy gaps, e.g. ddpm:250 (DDPM's "
                        "with the first of --ddpm-variances)")
    parser.add_argument("--ddpm-variances", nargs="+", default=["small"], choices=["small", "large", "learned"],
                        help="DDPM rows, one per variance (learned: a model trained with learn_sigma)")
    parser.add_argument("--out-dir", default="steps")
    parser.add_argument("--plot-with", nargs="+", default=[], metavar="STEPS_JSON",
                        help="also plot these earlier runs' rows (same prompts and seeds), e.g. lower NFE")
    args = parser.parse_args()
    pipe = Text2ImagePipeline.from_pretrained(args.model).to(args.device)
    if args.features == "clip":
        from condiff.eval.metrics import clip_metric_features
        from condiff.nets.clip import load_clip
        from condiff.catalogue import DEFAULT_JUDGES

        clip = load_clip(DEFAULT_JUDGES["clip"]).to(args.device)
        features = lambda x: clip_metric_features(clip, x)  # noqa: E731
    else:
        features = pixel_features
    variances = lambda name: args.ddpm_variances if Sampler(name) is Sampler.DDPM else [None]  # noqa: E731
    runs = [(name, nfe, v) for name in args.samplers for v in variances(name) for nfe in args.nfe]
    if args.reference:
        ref_name, ref_nfe = args.reference.split(":")
        ref = (ref_name, int(ref_nfe), variances(ref_name)[0])
        runs = [ref] + [r for r in runs if r != ref]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| sampler | NFE | steps | single | counting | two objects | position | held-out | overall | gap (± s.e.) | FD | s |")
    print("| --- " * 12 + "|")
    reference = None
    for name, nfe, variance in runs:
        sampler = Sampler(name)
        placed = {"ddpm_variance": variance} if variance else {}
        schedule = SigmaSchedule(args.schedule)
        if schedule not in SIGMA_SCHEDULES or sampler in SIGMA_SAMPLERS:
            placed["schedule"] = schedule
        # karras and exponential place sigmas; DDPM and DDIM keep the model's own timestep respacing (uniform for
        # pixel models; leading for latent ones, whose unclipped x0_hat at t = 999 would otherwise be multiplied by
        # 1/sqrt(alpha_bar) = 2e4; leading too where the model saved a sigma placement: SamplingOptions.replace).
        # The rest (threshold: none for a latent model) is the model's; fresh SamplingOptions clipped latents
        opts = pipe.defaults.replace(steps=steps_for(sampler, nfe), guidance_scale=args.guidance_scale,
                                     sampler=sampler, **placed)
        pipe.check(["a red circle"], opts)
        start = time.time()
        records = bench_samples(pipe, opts, args.prompts_per_category, args.n_per_prompt,
                                batch_size=args.batch_size, progress=False)
        table = summarize(records)
        images = torch.stack([r["image"] for r in records])
        truth = ground_truth([r["prompt"] for r in records], pipe.resolution)
        correct = torch.tensor([float(r["correct"]) for r in records if r["suite"] in MAIN])
        row = {"sampler": name, "schedule": schedule.value, "nfe": nfe, "steps": opts.steps, "ddpm_variance": variance,
               **{k: v["accuracy"] for k, v in table.items()}, "fd": fd(images, truth, features),
               "seconds": round(time.time() - start, 1), "correct": [int(c) for c in correct.tolist()]}  # later pairing
        if reference is None and args.reference:
            reference, row["reference"] = correct, True
        elif reference is not None:  # overall = mean over the main suites' images (equal counts): paired difference
            diff = correct - reference
            row["gap"], row["gap_se"] = diff.mean().item(), (diff.std() / len(diff) ** 0.5).item()
        rows.append(row)
        gap = f"{row['gap']:+.3f} ± {row['gap_se']:.3f}" if "gap" in row else ("reference" if row.get("reference") else "")
        print(f"| {name}{f' ({variance})' if variance else ''} | {nfe} | {opts.steps} | {row['single']:.3f} | {row['counting']:.3f} | "
              f"{row['two_objects']:.3f} | {row['position']:.3f} | {row['held_out']:.3f} | "
              f"{row['overall']:.3f} | {gap} | {row['fd']:.2f} | {row['seconds']} |", flush=True)
    (out / "steps.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    earlier = [r for f in args.plot_with for r in json.loads(Path(f).read_text())["rows"]]
    plot(sorted(earlier + rows, key=lambda r: (r["sampler"], r.get("ddpm_variance") or "", r["nfe"])), out / "steps.png")
    print(f"wrote {out / 'steps.json'} and {out / 'steps.png'}")


if __name__ == "__main__":
    main()
