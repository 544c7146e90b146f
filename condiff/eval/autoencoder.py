"""condiff eval autoencoder: how much of a world scene survives encode -> decode.

Per model: reconstruction PSNR, the oracle's agreement on reconstructed scenes of every category (the shipped
autoencoder must reach 0.99), FD of reconstructions against the originals (condiff CLIP features at 32 px, and 8x8
pixels), the latent shape and the std of the scaled latents (about 1 when the scale factor is right), and for VQ
the codebook usage and perplexity.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import components
from ..catalogue import DEFAULT_JUDGES
from ..eval.grid import save_grid
from ..eval.metrics import clip_metric_features
from ..eval.retrieval import scenes
from ..nets.autoencoder import perplexity
from ..nets.clip import load_clip
from ..world.grammar import Category
from ..world.render import to_uint8


@torch.no_grad()
def reconstruct(ae, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(decode(encode(x)) clamped to [-1, 1], the scaled latents) for images (B, 3, H, W) in [-1, 1]."""
    recs, zs = [], []
    for i in range(0, len(images), batch_size):
        z = ae.encode(images[i:i + batch_size])
        zs.append(z)
        recs.append(ae.decode(z).clamp(-1, 1))
    return torch.cat(recs), torch.cat(zs)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], on the [0, 1] scale: 10 log10(1 / MSE)."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1 / mse)


def evaluate(ae, n: int, seed: int = 0, clip=None) -> tuple[dict, dict]:
    """(report, {category: (originals, reconstructions, verdicts)}) on n fresh scenes per category."""
    from ..eval.fd import fd, pixel_features
    from ..world.oracle import judge
    res = ae.cfg.resolution
    rows, shown, all_orig, all_rec, all_z = {}, {}, [], [], []
    for cat in Category:
        images, captions = scenes(cat, n, res, seed=seed + 1)
        rec, z = reconstruct(ae, images)
        verdicts = [judge(px, c) for px, c in zip(to_uint8(rec).numpy(), captions)]
        rows[cat.value] = {"oracle": sum(v.correct for v in verdicts) / n, "psnr": float(psnr(images, rec).mean()), "n": n}
        shown[cat.value] = (images[:8], rec[:8], verdicts[:8], captions[:8])
        all_orig.append(images), all_rec.append(rec), all_z.append(z)
    orig, rec, z = torch.cat(all_orig), torch.cat(all_rec), torch.cat(all_z)
    report = {"kind": ae.cfg.kind.value if hasattr(ae.cfg.kind, "value") else ae.cfg.kind, "factor": ae.cfg.factor,
              "latent_shape": list(ae.latent_shape(res)), "scale_factor": ae.cfg.scale_factor,
              "scaled_latent_std": float(z.std()), "parameters": sum(p.numel() for p in ae.parameters()),
              "oracle": sum(r["oracle"] for r in rows.values()) / len(rows), "psnr": float(psnr(orig, rec).mean()),
              "fd_pixels": fd(orig, rec, pixel_features), "categories": rows}
    if clip is not None:
        small = lambda x: F.interpolate(x, size=clip.cfg.image.resolution, mode="area")
        report["fd_clip"] = fd(small(orig), small(rec), lambda x: clip_metric_features(clip, x))
    if ae.quantizer is not None:
        idx = ae.quantizer.indices(z / ae.cfg.scale_factor)
        report["codebook_used"] = int(idx.unique().numel()) / ae.cfg.codebook_size
        report["perplexity"] = perplexity(idx, ae.cfg.codebook_size)
    return report, shown


def markdown(reports: dict) -> str:
    cats = [c.value for c in Category]
    head = "| model | kind | latent | oracle | " + " | ".join(cats) + " | PSNR (dB) | FD (CLIP) | FD (pixels) | latent std | codebook (used / ppl) |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, r in reports.items():
        cb = f"{r['codebook_used']:.2f} / {r['perplexity']:.0f}" if "perplexity" in r else "-"
        fdc = f"{r['fd_clip']:.3f}" if "fd_clip" in r else "-"
        lines.append(f"| {name} | {r['kind']}-f{r['factor']} | {'x'.join(map(str, r['latent_shape']))} | {r['oracle']:.3f} | "
                     + " | ".join(f"{r['categories'][c]['oracle']:.3f}" for c in cats)
                     + f" | {r['psnr']:.1f} | {fdc} | {r['fd_pixels']:.4f} | {r['scaled_latent_std']:.2f} | {cb} |")
    return "\n".join(lines)


def run_eval_autoencoder(args) -> dict:
    if args.n < 2:
        raise ValueError(f"--n: need at least 2 scenes per category, got {args.n}")
    folders = [Path(m) for m in args.model]
    models = {f.name if f.name not in ("autoencoder", "model") else f.parent.name: components.load("autoencoder", f)
              for f in folders}
    clip = load_clip(args.metric_clip or DEFAULT_JUDGES["clip"])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for name, ae in models.items():
        reports[name], shown = evaluate(ae, args.n, args.seed, clip)
        images, labels, verdicts = [], [], []
        for cat, (orig, rec, vs, caps) in shown.items():
            images += [orig, rec]
            labels += caps + ["reconstruction"] * len(rec)
            verdicts += [None] * len(orig) + vs
        save_grid(torch.cat(images), labels, out / f"{name}_grid.png", verdicts)
    (out / "autoencoders.json").write_text(json.dumps(reports, indent=1) + "\n")
    print(markdown(reports))
    print(f"report: {out / 'autoencoders.json'}  grids: {out}/*_grid.png")
    return reports
