"""Does a model use the relation word? Each pair of shapes-bench's position suite under all four relations, same seeds.

Separates the position score into: both objects drawn, right axis (left/right vs above/below), right order on that
axis, and how much the image changes when only the relation word flips (left <-> right, above <-> below). A model
that ignores the word scores axis 0.5, order 0.5 and flip change 0. Writes relations.json and relations.png (per
model: the first four pairs, seed 0, one column per relation).

First, without sampling, the loss probe: how much the denoising loss of rendered position scenes rises when their
caption's objects are swapped, its relation flipped, or moved to the other axis (a model blind to word order: the
swap costs exactly 0). `--loss-only` stops there (relation_loss.json; seconds per model).

    python benchmarks/relation_probe.py condiff/weights/base32 runs/base32_cpu_long/model --out-dir docs/relations
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from condiff.diffusion.sampling import Sampler, SamplingOptions
from condiff.eval.grid import save_grid
from condiff.eval.relations import probe_relations, relation_loss_gaps
from condiff.io import json_safe
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.grammar import Relation


def loss_probe(models: list[str], n_scenes: int) -> dict:
    """The denoising-loss gaps of relation_loss_gaps for each model, printed as a table."""
    print("| model | t | loss, true caption | objects swapped | relation flipped | other axis |")
    print("| --- " * 6 + "|")
    reports = {}
    for folder in models:
        pipe = Text2ImagePipeline.from_pretrained(folder)
        report = relation_loss_gaps(lambda x, t, captions: pipe.denoiser(x, t, **pipe.encode(captions)),
                                    pipe.schedule, n_scenes, resolution=pipe.resolution)
        for row in report["rows"]:
            gaps = " | ".join(f"{100 * row[k]:+.2f}% ± {100 * row[k + '_se']:.2f}" for k in ("swap", "flip", "axis"))
            print(f"| {folder} | {row['t']} | {row['loss']:.4f} | {gaps} |", flush=True)
        reports[folder] = report
    return reports


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", help="saved pipeline folders")
    parser.add_argument("--n-pairs", type=int, default=8)
    parser.add_argument("--n-seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="ddim", choices=[s.value for s in Sampler])
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out-dir", default="relations")
    parser.add_argument("--loss-scenes", type=int, default=128, help="rendered scenes for the loss probe (0: skip it)")
    parser.add_argument("--loss-only", action="store_true", help="only the loss probe (seconds, no sampling)")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    losses = loss_probe(args.models, args.loss_scenes) if args.loss_scenes else {}
    if args.loss_only:
        (out / "relation_loss.json").write_text(json.dumps(json_safe({"args": vars(args), "loss": losses}), indent=1) + "\n")
        print(f"wrote {out / 'relation_loss.json'}")
        return
    opts = SamplingOptions(steps=args.steps, guidance_scale=args.guidance_scale, sampler=Sampler(args.sampler))
    print("| model | both objects | axis right | order right given axis | relation right given objects "
          "| flip change | axis change | mean along (left, right, above, below) | s |")
    print("| --- " * 9 + "|")
    reports, grid, labels = {}, [], []
    for folder in args.models:
        start = time.time()
        pipe = Text2ImagePipeline.from_pretrained(folder)
        seen = {}

        def generate(captions, seeds):
            seen["images"] = pipe.generate(captions, seeds, opts, batch_size=args.batch_size, progress=False)
            seen["captions"] = captions
            return seen["images"]

        report = probe_relations(generate, args.n_pairs, args.n_seeds)
        report["seconds"] = round(time.time() - start, 1)
        reports[folder] = report
        along = ", ".join(f"{report['mean_along'][r.value]:+.2f}" for r in Relation)
        print(f"| {folder} | {report['both_objects']:.2f} | {report['axis_right']:.2f} | "
              f"{report['order_right_given_axis']:.2f} | {report['relation_right_given_objects']:.2f} | "
              f"{report['flip_change']:.4f} | {report['axis_change']:.4f} | {along} | {report['seconds']} |", flush=True)
        n_rel = len(Relation)
        for p in range(min(4, args.n_pairs)):  # jobs run pair, relation, seed: seed 0 of each relation
            for r in range(n_rel):
                i = (p * n_rel + r) * args.n_seeds
                grid.append(seen["images"][i])
                labels.append(f"{Path(folder).name}: {seen['captions'][i]}")
    report = json_safe({"args": vars(args), "reports": reports, "loss": losses})
    (out / "relations.json").write_text(json.dumps(report, indent=1) + "\n")
    save_grid(torch.stack(grid), labels, out / "relations.png", columns=len(Relation))
    print(f"wrote {out / 'relations.json'} and {out / 'relations.png'}")


if __name__ == "__main__":
    main()
