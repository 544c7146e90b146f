"""Learning curve: shapes-bench accuracy per category of a run's model snapshots, against the images they saw.

Each folder is a saved pipeline whose name ends in step_N (N optimiser steps); the x axis is N times
--images-per-step. Every snapshot gets the same prompts and seeds, so the rows differ by training alone; each row
prints its overall gap to the first snapshot with the paired standard error. Writes curve.json and curve.png.
With --reuse, snapshots already in OUT_DIR/curve.json under the same settings are read back, not sampled again,
so the curve can grow while the run trains.

    python benchmarks/learning_curve.py runs/base32_cpu_long_snap/step_* --images-per-step 64 \
        --prompts-per-category 10 --n-per-prompt 4 --reference condiff/weights/base32 --out-dir docs/curve_cpu
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from condiff.diffusion.sampling import Sampler, SamplingOptions
from condiff.eval.bench import MAIN, bench_samples, summarize
from condiff.io import json_safe
from condiff.pipelines.text2image import Text2ImagePipeline

CATEGORIES = (*MAIN, "held_out", "overall")


def step_of(folder: str) -> int:
    match = re.search(r"step_0*(\d+)$", str(folder).rstrip("/"))
    if match is None:
        raise SystemExit(f"error: '{folder}' is not named step_N")
    return int(match.group(1))


def plot(rows: list[dict], path: Path, reference: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for cat in CATEGORIES:
        line, = ax.plot([r["images"] / 1e3 for r in rows], [r[cat] for r in rows], marker="o", label=cat,
                        linewidth=2.5 if cat == "overall" else 1.2)
        if reference is not None and cat in ("position", "overall"):
            ax.axhline(reference[cat], color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"{cat}, {Path(reference['model']).name}")
    ax.set_xlabel("training images seen (thousands)")
    ax.set_ylabel("shapes-bench accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", help="pipeline folders named step_N")
    parser.add_argument("--images-per-step", type=int, default=64, help="the run's batch size")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="ddim", choices=[s.value for s in Sampler])
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--prompts-per-category", type=int, default=10)
    parser.add_argument("--n-per-prompt", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out-dir", default="curve")
    parser.add_argument("--reference", help="a saved pipeline benched on the same images; gaps are then to it, "
                        "and the plot shows its position and overall as dashed lines")
    parser.add_argument("--reuse", action="store_true",
                        help="read back snapshots already in OUT_DIR/curve.json measured with the same settings")
    args = parser.parse_args()
    models = sorted(args.models, key=step_of)
    opts = SamplingOptions(steps=args.steps, guidance_scale=args.guidance_scale, sampler=Sampler(args.sampler))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("models", "out_dir", "reuse", "reference")}
    done = {}
    if args.reuse and (out / "curve.json").exists():
        old = json.loads((out / "curve.json").read_text())
        if {k: old["args"].get(k) for k in settings} == settings:
            done = {r["step"]: r for r in old["rows"] if "correct" in r}
            if (ref := old.get("reference")) is not None:
                done[ref["model"]] = ref
        else:
            print(f"note: {out / 'curve.json'} was measured with other settings; sampling every snapshot")
    rows, first, reference = [], None, None
    against = "reference" if args.reference else "first"
    print("| step | images | " + " | ".join(CATEGORIES) + f" | gap to {against} (± s.e.) | relation given objects | s |")
    print("| --- " * (len(CATEGORIES) + 5) + "|")
    for folder in ([args.reference] if args.reference else []) + models:
        is_ref = reference is None and folder == args.reference
        step = 0 if is_ref else step_of(folder)
        key = str(folder) if is_ref else step
        if key in done:
            row = {k: (float("nan") if v is None else v) for k, v in done[key].items() if k not in ("gap", "gap_se")}
        else:
            start = time.time()
            pipe = Text2ImagePipeline.from_pretrained(folder)
            records = bench_samples(pipe, opts, args.prompts_per_category, args.n_per_prompt,
                                    batch_size=args.batch_size, progress=False)
            table = summarize(records)
            row = {"model": str(folder), "step": None if is_ref else step,
                   "images": None if is_ref else step * args.images_per_step,
                   **{c: table[c]["accuracy"] for c in CATEGORIES},
                   # NaN: no position image drew both objects
                   "relation_given_objects": table["position"]["relation_given_objects"],
                   "objects_right": table["position"]["objects_right"],
                   "seconds": round(time.time() - start, 1),
                   "correct": [int(r["correct"]) for r in records if r["suite"] in MAIN]}
        correct = torch.tensor(row["correct"], dtype=torch.float64)
        if first is None:
            first, gap = correct, "baseline"
        else:
            diff = correct - first
            row["gap"], row["gap_se"] = diff.mean().item(), (diff.std() / len(diff) ** 0.5).item()
            gap = f"{row['gap']:+.3f} ± {row['gap_se']:.3f}"
        if is_ref:
            reference = row
        else:
            rows.append(row)
        cells = " | ".join(f"{row[c]:.3f}" for c in CATEGORIES)
        name = Path(folder).name if is_ref else step
        print(f"| {name} | {'' if is_ref else row['images']} | {cells} | {gap} | {row['relation_given_objects']:.2f} "
              f"({row['objects_right']}) | {row['seconds']} |", flush=True)
    report = json_safe({"args": settings, "reference": reference, "rows": rows})
    (out / "curve.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, out / "curve.png", reference)
    print(f"wrote {out / 'curve.json'} and {out / 'curve.png'}")


if __name__ == "__main__":
    main()
