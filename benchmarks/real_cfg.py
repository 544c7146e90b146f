"""The CFG sweep on the real-data models: fidelity against alignment as the guidance scale grows, in one run.

    OMP_NUM_THREADS=1 python benchmarks/real_cfg.py --judge digits --scales 1 2 3 5 8 --n 20 --out docs/real-data/digits_cfg.json
    OMP_NUM_THREADS=1 python benchmarks/real_cfg.py --judge emoji --scales 1 3 5 8 --out docs/real-data/emoji_cfg.json

digits: for each scale, n digits per class (seed i for image i, the same seeds at every scale) judged by
`condiff eval real digits`' judge: alignment is the share an SVM trained on real MNIST reads as the prompted digit;
fidelity is FD, KID and precision/recall against 500 held-out real digits in an MLP classifier's feature space.
emoji: the twelve names of `condiff eval real emoji`, each drawn once per scale: retrieval ranks (alignment and
fidelity at once: the real emoji of the name among the 5 nearest of all of them, by pixels at 32 px).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from condiff.catalogue import model_folder
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
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    pipe = Text2ImagePipeline.from_pretrained(model_folder(args.model or args.judge))
    rows, t0 = [], time.time()
    for scale in args.scales:
        opts = pipe.defaults.replace(guidance_scale=scale, steps=args.steps)
        if args.judge == "digits":
            r = judge_digits(pipe, args.n, 0, opts)
            row = {k: r[k] for k in ("accuracy", "fd", "kid", "precision", "recall", "per_class", "per_class_fd")}
        else:
            r = judge_emoji(pipe, EMOJI_NAMES, 0, opts)
            row = {k: r[k] for k in ("in_top_5", "median_rank", "ranks")}
        rows.append({"guidance_scale": scale, **row})
        print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, (dict, list))}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"judge": args.judge, "model": args.model or args.judge, "steps": args.steps,
                                          "n_per_class": args.n if args.judge == "digits" else None,
                                          "wall_s": round(time.time() - t0), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
