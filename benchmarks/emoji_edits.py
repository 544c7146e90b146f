"""Editing real images: img2img and inpainting of real Twemoji by the emoji model, judged by retrieval ranks.

    OMP_NUM_THREADS=1 python benchmarks/emoji_edits.py --out docs/real-data/emoji_edits.json --grid docs/real-data/emoji_edits.png

Each pair (source name -> target name) starts from the real emoji of the source, on white at 64 px:
- img2img (SDEdit) with the target name at each --strengths: the edit *lands* when the real target emoji is nearer
  the result than the real source emoji (ranked among all ~4,000 by pixel distance at 32 px, as `condiff eval real
  emoji` ranks), and the result keeps the source's layout when its rank for the source stays in the top 50;
- inpainting (RePaint, the model is no inpainting model) of the right half with the source's own name: *restored*
  when the real source emoji ranks in the top 5 again; and with the target name: lands as above.
One seed per cell (seed 0), the model's saved sampler and CFG.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from condiff.catalogue import model_folder
from condiff.data import real
from condiff.eval.real import real_emoji, retrieval_rank
from condiff.images import image_tensor, to_model_size
from condiff.pipelines.editing import img2img, inpaint
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.world.render import to_uint8

PAIRS = [("red apple", "green apple"), ("red heart", "blue heart"), ("grinning face", "grinning cat"),
         ("waving hand", "waving hand dark skin tone"), ("sun", "full moon face"), ("cherries", "grapes")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="emoji")
    ap.add_argument("--pairs", type=int, default=len(PAIRS), help="the first N pairs")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", help="PNG: per pair, source, img2img at each strength, inpainting (own name, target)")
    args = ap.parse_args()
    pipe = Text2ImagePipeline.from_pretrained(model_folder(args.model))
    opts, side = pipe.defaults, pipe.resolution
    pool, captions = real_emoji()
    index = {c: i for i, c in reversed(list(enumerate(captions)))}
    missing = [n for pair in PAIRS for n in pair if n not in index]
    if missing:
        raise SystemExit(f"no Twemoji named {missing[0]!r}")
    images = {c: img for _, img, c in real.emoji_samples() if c in {n for pair in PAIRS for n in pair}}
    mask = torch.zeros(1, 1, side, side, dtype=torch.bool)
    mask[..., side // 2:] = True  # the right half
    rows, grid, t0 = [], [], time.time()
    for source, target in PAIRS[:args.pairs]:
        x = image_tensor(to_model_size(images[source], side))
        row, cells = {"source": source, "target": target}, [to_uint8(x)[0].numpy()]

        def ranks(px: np.ndarray) -> dict:
            return {"source_rank": retrieval_rank(px, index[source], pool),
                    "target_rank": retrieval_rank(px, index[target], pool)}

        for s in args.strengths:
            px = to_uint8(img2img(pipe, [target], x, [0], opts, s))[0].numpy()
            r = ranks(px)
            row[f"img2img_{s}"] = r | {"lands": r["target_rank"] < r["source_rank"], "keeps": r["source_rank"] <= 50}
            cells.append(px)
        for name, key in ((source, "inpaint_own"), (target, "inpaint_target")):
            out, _ = inpaint(pipe, [name], x, mask, [0], opts)
            px = to_uint8(out)[0].numpy()
            r = ranks(px)
            row[key] = r | ({"restored": r["source_rank"] <= 5} if name == source
                            else {"lands": r["target_rank"] < r["source_rank"]})
            cells.append(px)
        row["source_rank_unedited"] = retrieval_rank(cells[0], index[source], pool)
        rows.append(row)
        grid.append(np.concatenate(cells, 1))
        print(json.dumps(row), flush=True)
    summary = {f"img2img_{s}": {"lands": sum(r[f"img2img_{s}"]["lands"] for r in rows),
                                "keeps": sum(r[f"img2img_{s}"]["keeps"] for r in rows)} for s in args.strengths}
    summary |= {"inpaint_own_restored": sum(r["inpaint_own"]["restored"] for r in rows),
                "inpaint_target_lands": sum(r["inpaint_target"]["lands"] for r in rows), "pairs": len(rows)}
    report = {"model": args.model, "sampling": {"steps": opts.steps, "sampler": opts.sampler.value,
                                                "guidance_scale": opts.guidance_scale},
              "strengths": args.strengths, "mask": "right half", "summary": summary, "pairs": rows,
              "wall_s": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary))
    if args.grid:
        from PIL import Image

        g = np.concatenate(grid, 0)
        Image.fromarray(g).resize((g.shape[1] * 2, g.shape[0] * 2), Image.NEAREST).save(args.grid)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
