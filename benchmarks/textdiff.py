"""unCLIP text diffs: how often the edit lands and how much of the rest stays, from a fixed seed or the image's noise.

    python benchmarks/textdiff.py --n 8 --out docs/unclip/textdiff.json

Scenes: n one- and two-object captions drawn by the world's renderer; the edit recolours the first object (source
caption -> the same caption with another colour). Each scene goes through `pipelines.unclip.textdiff` with frames at
angles 0 .. max_angle of the way from the image's CLIP embedding z_i towards the text diff
z_d = norm(z_t(target) - z_t(source)), decoded two ways, the first being the baseline run in the same command:
- seed: every frame from one fixed seed's noise, with the target caption (the decoder's CFG);
- inverted: from the image's own x_T (the decoder's DDIM inversion under z_i), eta 0, CFG 1, the source caption
  (DALL-E 2 decodes text diffs from the inverted noise, so frame 0 is the image itself).
Per frame: the share of scenes the exact oracle reads as the target caption (the edit landed: the recoloured
object, and the rest of the scene, which its caption names too), and the PSNR to the input (how much stays).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from condiff.catalogue import CLIP64, UNCLIP_DECODER
from condiff.nets.clip import load_clip
from condiff.pipelines.text2image import Text2ImagePipeline
from condiff.pipelines.unclip import textdiff
from condiff.world.bench import suite_prompts
from condiff.world.grammar import parse_caption
from condiff.world.oracle import judge
from condiff.world.render import layout, render, to_uint8

sys.path.insert(0, str(Path(__file__).parent))
from inversion import psnr  # noqa: E402  (PSNR of uint8 pixels, as the inversion benchmark measures it)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "white"]


def recoloured(caption: str) -> str:
    """The caption with its first colour word replaced by the next colour of COLOURS."""
    words = caption.split()
    i = next(k for k, w in enumerate(words) if w in COLOURS)
    words[i] = COLOURS[(COLOURS.index(words[i]) + 3) % len(COLOURS)]
    return " ".join(words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--max-angle", type=float, default=0.5)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    pipe, clip = Text2ImagePipeline.from_pretrained(UNCLIP_DECODER), load_clip(CLIP64)
    captions = (suite_prompts("single", a.n) + suite_prompts("two_objects", a.n))[::2][:a.n]
    images = render([layout(parse_caption(c), random.Random(i)) for i, c in enumerate(captions)], pipe.resolution)
    modes = {"seed": dict(inverted=False), "inverted": dict(inverted=True)}
    rows = []
    for mode, kw in modes.items():
        landed, kept = [0] * a.frames, [[] for _ in range(a.frames)]
        for cap, x in zip(captions, images):
            target = recoloured(cap)
            opts = pipe.defaults if mode == "seed" else pipe.defaults.replace(guidance_scale=1.0)
            out = textdiff(pipe, clip, x[None], cap, target, a.frames, 0, opts, a.max_angle, **kw)
            for f, img in enumerate(out):
                landed[f] += judge(to_uint8(img[None])[0].numpy(), target).correct
                kept[f].append(round(psnr(img, x), 2))
        row = {"mode": mode, "landed": [k / a.n for k in landed], "psnr_mean": [round(sum(p) / a.n, 2) for p in kept],
               "psnr": kept}
        rows.append(row)
        print(f"{mode:9s} landed {' '.join(f'{v:.2f}' for v in row['landed'])}   "
              f"PSNR {' '.join(f'{v:.1f}' for v in row['psnr_mean'])}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"captions": captions, "frames": a.frames, "max_angle": a.max_angle,
                                     "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
