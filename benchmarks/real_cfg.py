"""The CFG sweep on the real-data models: fidelity against alignment as the guidance scale grows, in one run.

    OMP_NUM_THREADS=1 python benchmarks/real_cfg.py --judge digits --scales 1 2 3 5 8 --n 20 --out docs/real-data/digits_cfg.json
    OMP_NUM_THREADS=1 python benchmarks/real_cfg.py --judge emoji --scales 1 3 5 8 --out docs/real-data/emoji_cfg.json
    OMP_NUM_THREADS=1 python benchmarks/real_cfg.py --judge emoji --scales 8 --samplers ddim:50 dpmpp_2m:50 \
        euler_a:50 ddpm:250 --seeds 0 100 --out docs/real-data/emoji_samplers.json

digits: for each scale, n digits per class (seed i for image i, the same seeds at every scale) judged by
`condiff eval real digits`' judge: alignment is the share an SVM trained on real MNIST reads as the prompted digit;
fidelity is FD, KID and precision/recall against 500 held-out real digits in an MLP classifier's feature space.
emoji: the twelve names of `condiff eval real emoji`, each drawn once per scale: retrieval ranks (alignment and
fidelity at once: the real emoji of the name among the 5 nearest of all of them, by pixels at 32 px); with --seeds,
the twelve again from each seed (image i from seed + i), their counts summed.
--samplers SAMPLER:STEPS ...: a row per sampler and scale (default: the model's sampler at --steps).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from condiff.catalogue import model_folder
from condiff.diffusion.sampling import Sampler
from condiff.eval.real import judge_digits, judge_emoji
from condiff.pipelines.text2image import Text2ImagePipeline

EMOJI_NAMES = ["red apple", "grinning face", "red heart", "sun", "fire", "green apple", "banana", "cherries",
               "snowman", "ghost", "four leaf clover", "blue heart"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judge", choices=["digits", "emoji"], required=True)
    ap.add_argument("--model", help="default: the shipped model of the judge's name")
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 3, 5, 8])
    ap.add_argument("--n", type=int, default=20, help="digits per class")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samplers", nargs="+", metavar="SAMPLER:STEPS", help="default: the model's sampler at --steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="emoji: the twelve drawn from each")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    pipe = Text2ImagePipeline.from_pretrained(model_folder(args.model or args.judge))
    samplers = [(s, int(n)) for s, n in (a.split(":") for a in args.samplers)] if args.samplers else \
        [(pipe.defaults.sampler.value, args.steps)]
    rows, t0 = [], time.time()
    for (sampler, steps), scale in itertools.product(samplers, args.scales):
        opts = pipe.defaults.replace(guidance_scale=scale, steps=steps, sampler=Sampler(sampler))
        start = time.time()
        if args.judge == "digits":
            r = judge_digits(pipe, args.n, 0, opts)
            row = {k: r[k] for k in ("accuracy", "fd", "kid", "precision", "recall", "per_class", "per_class_fd")}
        else:
            rs = [judge_emoji(pipe, EMOJI_NAMES, seed, opts) for seed in args.seeds]
            ranks = [k for r in rs for k in r["ranks"]]
            row = {"in_top_5": sum(r["in_top_5"] for r in rs), "of": len(ranks),
                   "median_rank": float(np.median(ranks)), "ranks": ranks, "seeds": args.seeds}
        rows.append({"sampler": sampler, "steps": steps, "guidance_scale": scale, **row,
                     "seconds": round(time.time() - start, 1)})
        print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, (dict, list))}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"judge": args.judge, "model": args.model or args.judge, "steps": args.steps,
                                          "n_per_class": args.n if args.judge == "digits" else None,
                                          "wall_s": round(time.time() - t0), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
