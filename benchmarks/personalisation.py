"""DreamBooth and textual inversion on the default model, judged exactly: new subjects the world's grammar has no
word for, drawn by code, and read back by a reader this benchmark adds.

    OMP_NUM_THREADS=1 python benchmarks/personalisation.py --work ~/condiff-runs/personalisation \
        --out docs/control/personalisation.json

Subjects (each drawn at 5 random places and sizes for its training images, captioned `a sks shape`):
- `star`: a gold five-pointed star (solidity, area / convex-hull area, about 0.5; the world's shapes are convex);
- `ring`: a cyan annulus (a hole of background inside the object);
- `split`: a square, left half red and right half blue (two colours in one object).

Methods, each trained on the same five images from the shipped default (configs/personalise_*.json):
- `dreambooth`: a rank-8 LoRA, with prior preservation (class prompt `a shape`, 100 class images, weight 1) and
  without it;
- `textual_inversion`: the token `<sks>` (one vector, starting at `shape`), the model frozen.

Measures (seed i for image i), the reader below:
- fidelity: `a sks shape` (`a <sks> shape` for textual inversion) drawn 16 times: one object, read as the subject
  (its form: star, ring or split); colour: one object of the subject's mean colour (within 60 of the drawing's);
- editability: `a sks shape to the left of a red circle` (the subject, a red circle, the subject left of it) and
  `three sks shapes` (three subjects), 8 times each;
- drift: 32 shapes-bench captions judged by the oracle, against the base model's accuracy on the same seeds.
The subject prompts are drawn with boxes the benchmark lays out (subject_boxes: the subject's phrase, at the
training images' sizes; the red circle to the right), as `condiff generate --layout` takes them: the default's layout
stage was never taught the new word and splits `a sks shape to the left of a red circle` into the phrases `a sks`
and `of a red`. Drift prompts go through the layout stage as usual.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from condiff.world.grammar import BACKGROUND, COLOURS

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ("star", "ring", "split")
GOLD, CYAN, RED, BLUE = (235, 180, 40), COLOURS["cyan"], COLOURS["red"], COLOURS["blue"]


def draw_subject(kind: str, cx: float, cy: float, s: float, side: int = 64, supersample: int = 4) -> Image.Image:
    """One subject on the world's background; centre and bounding-box side are fractions of the canvas side."""
    n = side * supersample
    img = Image.new("RGB", (n, n), BACKGROUND)
    d = ImageDraw.Draw(img)
    x, y, r = cx * n, cy * n, s * n / 2
    if kind == "star":
        pts = [(x + (r if k % 2 == 0 else 0.42 * r) * math.sin(k * math.pi / 5),
                y - (r if k % 2 == 0 else 0.42 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=GOLD)
    elif kind == "ring":
        d.ellipse([x - r, y - r, x + r, y + r], fill=CYAN)
        d.ellipse([x - 0.5 * r, y - 0.5 * r, x + 0.5 * r, y + 0.5 * r], fill=BACKGROUND)
    elif kind == "split":
        d.rectangle([x - r, y - r, x, y + r], fill=RED)
        d.rectangle([x, y - r, x + r, y + r], fill=BLUE)
    else:
        raise ValueError(kind)
    return img.resize((side, side), Image.BOX)


def read_objects(pixels: np.ndarray) -> list[dict]:
    """Every object of an image (H, W, 3) uint8: its kind (star, ring, split, or convex for the world's own shapes),
    mean colour, centre (fractions of the side) and side."""
    bg = np.array(BACKGROUND, dtype=float)
    fg = np.linalg.norm(pixels.astype(float) - bg, axis=-1) > 60
    labels, count = ndimage.label(fg)
    side, out = pixels.shape[0], []
    for i in range(1, count + 1):
        mask = labels == i
        area = mask.sum()
        if area < 0.004 * side * side:
            continue  # specks
        ys, xs = np.nonzero(mask)
        filled = ndimage.binary_fill_holes(mask)
        hole = (filled.sum() - area) / filled.sum()
        try:
            hull = ConvexHull(np.stack([xs, ys], 1)).volume + 0.5 * len(xs) ** 0.5  # pixel centres: add the rim
        except QhullError:
            continue
        solidity = filled.sum() / max(hull, 1)
        colours = pixels[mask].astype(float)
        left = pixels[mask & (np.arange(side)[None, :] < xs.mean())].astype(float).mean(0)
        right = pixels[mask & (np.arange(side)[None, :] >= xs.mean())].astype(float).mean(0)
        if hole > 0.12:
            kind = "ring"
        elif np.linalg.norm(left - right) > 90 and solidity > 0.85:
            kind = "split"
        elif solidity < 0.72:
            kind = "star"
        else:
            kind = "convex"
        out.append({"kind": kind, "colour": colours.mean(0).round().tolist(), "cx": float(xs.mean() / side),
                    "cy": float(ys.mean() / side), "side": float(max(np.ptp(xs), np.ptp(ys)) + 1) / side})
    return sorted(out, key=lambda o: o["cx"])


def subject_folder(kind: str, folder: Path, caption: str, n: int = 5, seed: int = 0) -> Path:
    """n drawings of the subject at random places and sizes (the same for every caption), as an image folder."""
    if folder.exists():
        return folder
    rng = random.Random(f"{kind}/{seed}")
    folder.mkdir(parents=True)
    rows = []
    for k in range(n):
        s = rng.uniform(0.3, 0.45)
        cx, cy = rng.uniform(s / 2 + 0.05, 0.95 - s / 2), rng.uniform(s / 2 + 0.05, 0.95 - s / 2)
        draw_subject(kind, cx, cy, s).save(folder / f"{k}.png")
        box = [round(v, 4) for v in (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)]  # the grounded default reads
        rows.append(json.dumps({"file_name": f"{k}.png", "text": caption,  # boxes: its layout stage gives them at
                                "boxes": [{"phrase": caption, "box": box}]}))  # sampling, so training sees them too
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def is_red(o: dict) -> bool:
    return np.linalg.norm(np.array(o["colour"]) - np.array(RED)) < 70


def subject_boxes(i: int, n: int, phrase: str, red_circle: bool = False) -> list[dict]:
    """A layout for image i: n subject boxes (side 0.3-0.4, as trained) in a row of n slots, left to right, then a red
    circle's box to their right; the same for every method."""
    rng = random.Random(f"layout/{i}/{n}/{red_circle}")
    slots = n + red_circle
    out = []
    for k in range(slots):
        s = rng.uniform(0.3, 0.4) if slots == 1 else min(0.9 / slots, rng.uniform(0.25, 0.35))
        cx = (k + 0.5) / slots if slots > 1 else rng.uniform(0.3, 0.7)
        cy = rng.uniform(s / 2 + 0.05, 0.95 - s / 2)
        box = [round(v, 4) for v in (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)]
        out.append({"phrase": "a red circle" if red_circle and k == n else phrase, "box": box})
    return out


def measure(pipe, kind: str, token: str, drift_prompts: list[str]) -> dict:
    """Fidelity, editability and drift of one personalised pipeline (see the module's docstring)."""
    from condiff.world.oracle import judge
    from condiff.world.render import to_uint8

    phrase = f"a {token} shape"

    def draw(prompt: str, n: int, subjects: int, red_circle: bool = False) -> list[np.ndarray]:
        return [to_uint8(pipe([prompt], [i], pipe.defaults, boxes=[subject_boxes(i, subjects, phrase, red_circle)]))[0]
                .numpy() for i in range(n)]

    subject = lambda objs: [o for o in objs if o["kind"] == kind]
    fid = [read_objects(im) for im in draw(phrase, 16, 1)]
    left = [read_objects(im) for im in draw(f"{phrase} to the left of a red circle", 8, 1, red_circle=True)]
    three = [read_objects(im) for im in draw(f"three {token} shapes", 8, 3)]
    placed = [bool(subject(objs)) and any(o["kind"] == "convex" and is_red(o) for o in objs)
              and subject(objs)[0]["cx"] < max(o["cx"] for o in objs if o["kind"] == "convex" and is_red(o))
              for objs in left]
    drift = [judge(im, p).correct for i, p in enumerate(drift_prompts)
             for im in [to_uint8(pipe([p], [i], pipe.defaults))[0].numpy()]]
    colour = np.array(read_objects(np.asarray(draw_subject(kind, 0.5, 0.5, 0.4)))[0]["colour"])  # the drawing's
    near = lambda o: np.linalg.norm(np.array(o["colour"]) - colour) < 60  # noqa: E731  (mean colour)
    return {"fidelity": float(np.mean([len(o) == 1 and len(subject(o)) == 1 for o in fid])),
            "colour": float(np.mean([len(o) == 1 and near(o[0]) for o in fid])),
            "left_of_red_circle": float(np.mean(placed)),
            "three": float(np.mean([len(subject(o)) == 3 for o in three])),
            "drift_accuracy": float(np.mean(drift))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--subjects", nargs="+", default=list(SUBJECTS))
    ap.add_argument("--check-reader", action="store_true", help="only read the subjects' own drawings and report")
    ap.add_argument("--grid", help="also write a picture: per subject, a training image, then `a sks shape` from each "
                                   "method (4 seeds)")
    ap.add_argument("--grid-only", action="store_true", help="only the picture, from the runs already in --work")
    args = ap.parse_args()
    if args.check_reader:
        for kind in args.subjects:
            rng = random.Random(kind)
            got = [read_objects(np.asarray(draw_subject(kind, rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7),
                                                        rng.uniform(0.25, 0.45)))) for _ in range(50)]
            print(kind, sum(len(g) == 1 and g[0]["kind"] == kind for g in got), "of 50 read right")
        return
    from condiff.catalogue import DEFAULT_MODEL
    from condiff.formats import embeddings, lora
    from condiff.pipelines.text2image import Text2ImagePipeline
    from condiff.world.bench import suite_prompts
    from condiff.world.oracle import judge
    from condiff.world.render import to_uint8

    work = Path(args.work).expanduser()
    if args.grid_only:
        return write_grid(work, args.subjects, Path(args.grid))
    drift_prompts = [p for s in ("single", "counting", "two_objects", "position") for p in suite_prompts(s, 8)]
    base = Text2ImagePipeline.from_pretrained(DEFAULT_MODEL)
    results = {"base_drift_accuracy": float(np.mean([judge(to_uint8(base([p], [i], base.defaults))[0].numpy(), p).correct
                                                     for i, p in enumerate(drift_prompts)]))}
    for kind in args.subjects:
        for method, token in (("dreambooth_prior", "sks"), ("dreambooth", "sks"), ("textual_inversion", "<sks>")):
            data = subject_folder(kind, work / kind / ("images_ti" if method == "textual_inversion" else "images"),
                                  f"a {token} shape")
            run, t0 = work / kind / method, time.time()
            argv = [sys.executable, "-m", "condiff.cli", "train", "--config", str(ROOT / "configs" / f"personalise_{method}.json"),
                    "--data", str(data), "--out", str(run), "--workers", "0"] + (["--resume"] if (run / "config.json").exists() else [])
            subprocess.run(argv, check=True)
            pipe = Text2ImagePipeline.from_pretrained(DEFAULT_MODEL)
            if method == "textual_inversion":
                embeddings.apply(pipe.parts, [embeddings.EmbeddingSpec(str(run / "model"))])
            else:
                lora.apply(pipe.parts, [lora.LoRASpec(str(run / "model"))])
            results.setdefault(kind, {})[method] = measure(pipe, kind, token, drift_prompts) | {
                "train_and_measure_s": round(time.time() - t0)}
            print(kind, method, results[kind][method], flush=True)
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.grid:
        write_grid(work, args.subjects, Path(args.grid))


def write_grid(work: Path, subjects: list[str], out: Path, seeds: int = 4) -> None:
    """Rows: subject x (its training images, then each method's `a sks shape` at seeds 0..3); 3x pixels."""
    from condiff.catalogue import DEFAULT_MODEL
    from condiff.formats import embeddings, lora
    from condiff.pipelines.text2image import Text2ImagePipeline
    from condiff.world.render import to_uint8

    rows = []
    for kind in subjects:
        rows.append(np.concatenate([np.asarray(Image.open(work / kind / "images" / f"{k}.png").convert("RGB"))
                                    for k in range(seeds)], 1))
        for method, token in (("dreambooth_prior", "sks"), ("dreambooth", "sks"), ("textual_inversion", "<sks>")):
            pipe = Text2ImagePipeline.from_pretrained(DEFAULT_MODEL)
            if method == "textual_inversion":
                embeddings.apply(pipe.parts, [embeddings.EmbeddingSpec(str(work / kind / method / "model"))])
            else:
                lora.apply(pipe.parts, [lora.LoRASpec(str(work / kind / method / "model"))])
            phrase = f"a {token} shape"
            rows.append(np.concatenate([to_uint8(pipe([phrase], [i], pipe.defaults, boxes=[subject_boxes(i, 1, phrase)]))
                                        [0].numpy() for i in range(seeds)], 1))
    Image.fromarray(np.concatenate(rows, 0)).resize((64 * seeds * 3, 64 * len(rows) * 3), Image.NEAREST).save(out)


if __name__ == "__main__":
    main()
