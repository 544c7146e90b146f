"""unCLIP (DALL-E 2) against the default, judged by the oracle: variations, interpolations, shapes-bench with and
without the prior, and the diversity the paper claims.

    python benchmarks/unclip.py --model condiff/weights/unclip --default condiff/weights/layout64 \\
        --prompts-per-category 8 --n-per-prompt 4 --out-dir docs/unclip

- Variations bar: 8 scenes drawn by code (4 with one object, 4 with two); 4 variations each (no caption, seeds 0-3),
  from the scene's DDIM-inverted noise with --eta at CFG --edit-scale, each the best of --candidates by CLIP
  similarity to the scene (as shipped), and from the seeds' noise at the decoder's CFG, one draw each (the baseline).
  A variation keeps the scene when the oracle reads exactly the scene's objects ((shape, colour) multiset). A scene
  passes with >= 3 of 4 kept; the bar is >= 7 of 8 scenes. The 4 images' mean pairwise pixel distance is reported.
- Interpolation bar: 8 pairs of one-object scenes (shape and colour both differ); 5 frames along the slerp, the
  decoder noise slerped between the ends' inverted noises (as shipped) or one fixed seed's (the baseline). A frame
  passes when the oracle reads at least one object and every object it reads has a shape and a colour of the two
  ends (an end, or a mix). A pair passes when all its frames do; the bar is >= 7 of 8.
  The ends avoid the held-out (colour, shape) combinations. Reported too: how many end frames the oracle reads as
  their input, and the end frames' mean pixel distance (0-255) from the inputs.
- Shapes-bench rows, same prompts and seeds, DDIM at the same steps: the default; unCLIP with its diffusion prior;
  unCLIP with an autoregressive prior (--ar-prior, row unclip_ar: DALL-E 2's two priors side by side, each row with
  the prior's own seconds per embedding and its samples' mean z_i . z_t); unCLIP without a prior (the decoder fed
  the caption's CLIP text embedding). Each at the given decoder CFG scales.
- Diversity: per prompt, the mean pairwise distance among its n images (pixels, mean |a - b| in 0-255, and CLIP
  image embeddings, 1 - cosine), averaged over prompts; plotted against overall accuracy.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from condiff import components
from condiff.eval.bench import MAIN, summarize
from condiff.io import json_safe
from condiff.pipelines.base import load_pipeline
from condiff.pipelines.unclip import (VARIATION_CANDIDATES, VARIATION_ETA, VARIATION_GUIDANCE, decode, image_embeddings,
                                      interpolate, variations)
from condiff.png import image_grid, save_png
from condiff.world.bench import SUITES, suite_prompts
from condiff.world.grammar import COLOURS, HELD_OUT, SHAPES, Category, sample_prompt
from condiff.world.oracle import detect, judge
from condiff.world.render import PlacedObject, layout, render, to_uint8



def objects_of(px: np.ndarray) -> list[tuple[str, str]]:
    return sorted((o.shape, o.colour) for o in detect(px))


def pairwise_pixels(px: np.ndarray) -> float:
    """Mean |a - b| (0-255) over the pairs of images (N, H, W, 3)."""
    f = px.astype(np.float32)
    return float(np.mean([np.abs(f[i] - f[j]).mean() for i, j in itertools.combinations(range(len(f)), 2)]))


def pairwise_cosine(e: torch.Tensor) -> float:
    """Mean 1 - cos over the pairs of unit embeddings (N, D)."""
    n = len(e)
    sim = e @ e.T
    return float((1 - sim)[~torch.eye(n, dtype=torch.bool)].mean())


def code_scenes(n: int, seed: int, res: int) -> tuple[torch.Tensor, list[list[tuple[str, str]]]]:
    """n scenes rendered from captions (half one object, half two) and each one's (shape, colour) multiset."""
    rng = random.Random(seed)
    images, truth = [], []
    for i in range(n):
        spec = sample_prompt(rng, Category.SINGLE if i < n // 2 else Category.TWO_OBJECTS)
        placed = layout(spec, rng)
        images.append(render([placed], res))
        truth.append(sorted((p.shape, p.colour) for p in placed))
    return torch.cat(images), truth


def variations_bar(pipe, clip, opts, n: int, seed: int, out_dir: Path, eta: float | None = None,
                   name: str = "variations", candidates: int = 1) -> dict:
    scenes, truth = code_scenes(n, seed, pipe.resolution)
    rows, grid = [], []
    for x, want in zip(scenes, truth):
        px = to_uint8(variations(pipe, clip, x[None], 4, 0, opts, eta=eta, candidates=candidates)).numpy()
        kept = [objects_of(p) == want for p in px]
        rows.append({"objects": want, "kept": sum(kept), "distance": round(pairwise_pixels(px), 2)})
        grid += [to_uint8(x[None]).numpy()[0], *px]
    save_png(image_grid(np.stack(grid), columns=5), out_dir / f"{name}.png", "unCLIP variations: scene, 4 variations")
    passed = sum(r["kept"] >= 3 for r in rows)
    return {"eta": eta, "guidance_scale": opts.guidance_scale, "candidates": candidates, "scenes": rows,
            "scenes_passed": passed, "of": n, "bar_met": passed >= n - 1,
            "mean_pairwise_pixel_distance": round(float(np.mean([r["distance"] for r in rows])), 2)}


def one_object_pairs(n: int, seed: int) -> list[tuple[PlacedObject, PlacedObject]]:
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        (sa, sb), (ca, cb) = rng.sample(SHAPES, 2), rng.sample(sorted(COLOURS), 2)
        if (ca, sa) in HELD_OUT or (cb, sb) in HELD_OUT:  # ends the CLIP and decoder were trained on
            continue
        pairs.append(tuple(PlacedObject(s, c, rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.45))
                           for s, c in ((sa, ca), (sb, cb))))
    return pairs


def interpolation_bar(pipe, clip, opts, n: int, seed: int, frames: int, out_dir: Path, inverted: bool = True,
                      name: str = "interpolation") -> dict:
    rows, grid = [], []
    for k, (a, b) in enumerate(one_object_pairs(n, seed)):
        xa, xb = render([[a]], pipe.resolution), render([[b]], pipe.resolution)
        ua, ub = to_uint8(xa).numpy()[0], to_uint8(xb).numpy()[0]
        px = to_uint8(interpolate(pipe, clip, xa, xb, frames, k, opts, inverted=inverted)).numpy()
        shapes, colours = {a.shape, b.shape}, {a.colour, b.colour}
        read = [objects_of(p) for p in px]
        ok = [bool(r) and all(s in shapes and c in colours for s, c in r) for r in read]
        rows.append({"a": [a.shape, a.colour], "b": [b.shape, b.colour], "frames": read, "frames_ok": sum(ok),
                     "ends_kept": [read[0] == [(a.shape, a.colour)], read[-1] == [(b.shape, b.colour)]],
                     "end_distance": round(float(np.mean([np.abs(px[i].astype(np.float32) - u).mean()
                                                          for i, u in ((0, ua), (-1, ub))])), 2)})
        grid += [ua, *px, ub]
    save_png(image_grid(np.stack(grid), columns=frames + 2), out_dir / f"{name}.png", "unCLIP interpolation: A, frames, B")
    passed = sum(r["frames_ok"] == frames for r in rows)
    return {"inverted": inverted, "guidance_scale": opts.guidance_scale, "pairs": rows,
            "ends_kept": sum(sum(r["ends_kept"]) for r in rows),
            "mean_end_pixel_distance": round(float(np.mean([r["end_distance"] for r in rows])), 2),
            "pairs_passed": passed, "of": n, "bar_met": passed >= n - 1}


def prior_figures(pipe, prompts: list[str], seeds: list[int]) -> tuple[dict, torch.Tensor, float]:
    """The prior alone: seconds per embedding (its candidates included), the mean z_i . z_t of what it keeps, and
    how often the embedding is nearer its own caption's z_t than every other prompt's of the run (top-1); with the
    embeddings and their seconds, for the decoder to draw from."""
    t = time.time()
    z = pipe.embeddings(prompts, seeds)
    seconds = time.time() - t
    unique = list(dict.fromkeys(prompts))
    with torch.no_grad():
        z_t = pipe.clip.encode_text(unique)
    sims = z @ z_t.T  # (B, prompts)
    own = torch.tensor([unique.index(p) for p in prompts])
    return ({"prior_seconds_per_sample": round(seconds / len(prompts), 4),
             "prior_dot_z_t": round(sims[torch.arange(len(prompts)), own].mean().item(), 4),
             "prior_top1": round((sims.argmax(1) == own).float().mean().item(), 4)}, z, seconds)


def bench_row(pipe, opts, prompts, suites, seeds, n_per_prompt: int, clip, batch: int) -> dict:
    prior, z, seconds = {}, None, 0.0
    if getattr(pipe, "prior", None) is not None:
        prior, z, seconds = prior_figures(pipe, prompts, seeds)  # the prior runs once: its figures and the images
    t = time.time()
    if z is None:
        images = pipe.generate(prompts, seeds, opts, batch_size=batch, progress=True)
    else:  # the decoder draws from the embeddings the figures were taken from (what pipe.generate would sample)
        images = torch.cat([decode(pipe, z[i:i + batch], prompts[i:i + batch], seeds[i:i + batch], opts)
                            for i in tqdm(range(0, len(prompts), batch), desc="generating", unit="batch")])
    seconds += time.time() - t  # per image: the prior's share and the decoder's
    px = to_uint8(images).numpy()
    table = summarize([{"suite": s, "prompt": p, "correct": (v := judge(im, p)).correct, "reason": v.reason}
                       for s, p, im in zip(suites, prompts, px)])
    emb = image_embeddings(clip, images)
    groups = range(0, len(prompts), n_per_prompt)
    table["diversity_pixels"] = round(float(np.mean([pairwise_pixels(px[i:i + n_per_prompt]) for i in groups])), 2)
    table["diversity_clip"] = round(float(np.mean([pairwise_cosine(emb[i:i + n_per_prompt]) for i in groups])), 4)
    table["seconds_per_image"] = round(seconds / len(prompts), 3)
    return table | prior


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, marker in (("default", "o"), ("unclip", "s"), ("unclip_ar", "D"), ("unclip_no_prior", "^")):
        pts = sorted((r["guidance_scale"], r["diversity_clip"], r["overall"]["accuracy"])
                     for key, r in rows.items() if r["row"] == name)
        if pts:
            ax.plot([p[1] for p in pts], [p[2] for p in pts], marker=marker, label=name)
            for s, d, a in pts:
                ax.annotate(f"CFG {s:g}", (d, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("diversity: mean pairwise 1 - cos of CLIP image embeddings, one prompt")
    ax.set_ylabel("shapes-bench overall accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SAME_ROWS = ("default", "steps", "prompts_per_category", "n_per_prompt")  # what makes a row the same measurement


def reused_rows(args) -> dict:
    """Rows of an earlier report measured with the same default model, steps, prompts and seeds (--reuse-rows),
    named by --reuse: e.g. the default's rows when only the unCLIP model changed."""
    if not args.reuse_rows:
        return {}
    old = json.loads(Path(args.reuse_rows).read_text())
    for key in SAME_ROWS:
        if old["args"][key] != getattr(args, key):
            raise SystemExit(f"--reuse-rows: {args.reuse_rows} was measured with {key}={old['args'][key]}, "
                             f"not {getattr(args, key)}")
    names = set(filter(None, args.reuse.split(",")))
    return {k: v for k, v in old["rows"].items() if v["row"] in names}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="condiff/weights/unclip", help="an unclip pipeline (decoder, CLIP, prior)")
    ap.add_argument("--default", default="condiff/weights/layout64", help="the text-to-image model to compare with")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--scales", type=float, nargs="+", default=[3.0], help="decoder / default CFG scales")
    ap.add_argument("--prompts-per-category", type=int, default=8)
    ap.add_argument("--n-per-prompt", type=int, default=4)
    ap.add_argument("--rows", default="default,unclip,unclip_no_prior", help="of default, unclip, unclip_ar (needs "
                    "--ar-prior), unclip_no_prior")
    ap.add_argument("--ar-prior", help="an autoregressive prior folder (condiff train, kind ar_prior) for the "
                                       "unclip_ar row: the same decoder and CLIP with this prior")
    ap.add_argument("--bars", type=int, default=8, help="scenes (variations) and pairs (interpolation); 0: skip")
    ap.add_argument("--eta", type=float, default=VARIATION_ETA, help="variations' DDIM eta from the inverted noise")
    ap.add_argument("--candidates", type=int, default=VARIATION_CANDIDATES,
                    help="variations' draws per image, the nearest to the scene in CLIP kept (the baseline: 1)")
    ap.add_argument("--edit-scale", type=float, default=VARIATION_GUIDANCE,
                    help="decoder CFG of the variations from inverted noise (the rest use the decoder's own)")
    ap.add_argument("--reuse-rows", help="an earlier unclip.json whose --reuse rows (same default, steps, prompts) "
                                         "are copied instead of measured again")
    ap.add_argument("--reuse", default="default", help="which rows --reuse-rows gives (default: the default model's)")
    ap.add_argument("--batch-size", type=int, default=40)
    ap.add_argument("--out-dir", default="docs/unclip")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    pipe = load_pipeline(args.model)
    report = {"model": args.model, "default": args.default, "steps": args.steps, "args": vars(args)}
    opts = pipe.defaults.replace(steps=args.steps)
    if args.bars:  # each edit as shipped (from the inverted noise) and from the seeds' noise, the baseline
        inv = opts.replace(guidance_scale=args.edit_scale)
        for key, run in (("variations", lambda: variations_bar(pipe, pipe.clip, inv, args.bars, 0, out_dir, args.eta,
                                                                     "variations", args.candidates)),
                         ("variations_from_noise", lambda: variations_bar(pipe, pipe.clip, opts, args.bars, 0, out_dir,
                                                                          None, "variations_from_noise")),
                         ("interpolation", lambda: interpolation_bar(pipe, pipe.clip, opts, args.bars, 1, 5, out_dir)),
                         ("interpolation_from_noise", lambda: interpolation_bar(
                             pipe, pipe.clip, opts, args.bars, 1, 5, out_dir, False, "interpolation_from_noise"))):
            report[key] = run()
            print(f"{key}:", {k: v for k, v in report[key].items() if k not in ("scenes", "pairs")}, flush=True)
    jobs = [(s, p) for s in SUITES for p in suite_prompts(s, args.prompts_per_category) for _ in range(args.n_per_prompt)]
    suites, prompts, seeds = [s for s, _ in jobs], [p for _, p in jobs], list(range(len(jobs)))
    models = {"default": lambda: load_pipeline(args.default), "unclip": lambda: pipe, "unclip_no_prior": pipe.without_prior,
              "unclip_ar": lambda: pipe.with_prior(components.load("ar_prior", args.ar_prior))}
    if "unclip_ar" in args.rows.split(",") and not args.ar_prior:
        raise SystemExit("--rows unclip_ar: give the prior with --ar-prior FOLDER")
    report["rows"], reused = {}, reused_rows(args)
    for name in filter(None, args.rows.split(",")):
        model = None
        for scale in args.scales:
            if f"{name}@{scale:g}" in reused:
                report["rows"][f"{name}@{scale:g}"] = reused[f"{name}@{scale:g}"] | {"reused_from": args.reuse_rows}
                continue
            model = model or models[name]()
            o = model.defaults.replace(steps=args.steps, guidance_scale=scale)
            row = bench_row(model, o, prompts, suites, seeds, args.n_per_prompt, pipe.clip, args.batch_size)
            report["rows"][f"{name}@{scale:g}"] = row | {"row": name, "guidance_scale": scale}
            print(name, scale, {k: round(v["accuracy"], 3) for k, v in row.items() if isinstance(v, dict)},
                  row["diversity_pixels"], row["diversity_clip"], flush=True)
            (out_dir / "unclip.json").write_text(json.dumps(json_safe(report), indent=1) + "\n")
    cols = [*MAIN, "held_out", "overall"]
    print("| model | CFG | " + " | ".join(cols) + " | diversity (pixels) | diversity (CLIP) | s/image | prior s/sample |"
          " prior z_i . z_t | prior top-1 |\n|" + " --- |" * (len(cols) + 8))
    for r in report["rows"].values():
        print(f"| {r['row']} | {r['guidance_scale']:g} | " + " | ".join(f"{r[c]['accuracy']:.3f}" for c in cols)
              + f" | {r['diversity_pixels']} | {r['diversity_clip']} | {r['seconds_per_image']} | "
              f"{r.get('prior_seconds_per_sample', '')} | {r.get('prior_dot_z_t', '')} | {r.get('prior_top1', '')} |")
    (out_dir / "unclip.json").write_text(json.dumps(json_safe(report), indent=1) + "\n")
    plot(report["rows"], out_dir / "diversity.png")


if __name__ == "__main__":
    main()
