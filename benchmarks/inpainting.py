"""Inpainting, compared on the same masks: the fine-tuned inpainting model (GLIDE) against RePaint (with and without
its resampling jumps) on the default and on the inpainting model's own base, judged by the oracle.

    python benchmarks/inpainting.py --n 16 --out docs/editing/inpainting.json

The cases are benchmarks/editing.py's: a two-object position scene drawn by the renderer without its second object;
that object's box (grown by 2 px) is repainted with the two-object caption. Success: the oracle reads both objects
(after the paste-back, so outside the mask the image is the input's). Also reported: outside-mask PSNR before the
paste-back (a latent model's leakage: the decoder and the generated latent move the kept pixels) and seconds an image.
The baseline in the same command is the input itself (the missing object stays missing).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from editing import inpaint_cases, ok  # noqa: E402

from condiff.diffusion.sampling import Resample  # noqa: E402
from condiff.eval.grid import save_grid  # noqa: E402
from condiff.pipelines.editing import inpaint, leakage  # noqa: E402
from condiff.pipelines.text2image import Text2ImagePipeline  # noqa: E402
from condiff.catalogue import DEFAULT_MODEL, INPAINT_MODEL, WEIGHTS


def run(pipe, method: str, resample, cases, steps: int, scale: float, batch: int = 8) -> tuple[dict, torch.Tensor]:
    images, masks = torch.cat([c[0] for c in cases]), torch.cat([c[1] for c in cases])
    prompts, n = [c[2] for c in cases], len(cases)
    opts = replace(pipe.defaults, steps=steps, guidance_scale=scale)
    t, raw = time.time(), []
    for i in range(0, n, batch):
        raw.append(inpaint(pipe, prompts[i:i + batch], images[i:i + batch], masks[i:i + batch], list(range(i, min(n, i + batch))),
                           opts, method, paste_back=False, resample=resample)[0])
    seconds = (time.time() - t) / n
    raw = torch.cat(raw)
    out = masks * raw + ~masks * images
    correct = ok(out, prompts)
    psnrs = [leakage(images[i:i + 1], raw[i:i + 1], masks[i:i + 1]) for i in range(n)]
    return {"success": sum(correct), "of": n, "correct": correct, "outside_psnr_before_paste_back_min": min(psnrs),
            "outside_psnr_before_paste_back_mean": sum(psnrs) / n, "seconds_per_image": seconds}, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inpaint-model", default=str(INPAINT_MODEL))
    p.add_argument("--base", default=str(WEIGHTS / "latent64"), help="the inpainting model's base (RePaint on it)")
    p.add_argument("--default", default=str(DEFAULT_MODEL))
    p.add_argument("--jumps", default="10,2", help="RePaint's jump_length,jump_n_sample for the resampled rows")
    p.add_argument("--rows", help="comma-separated row numbers to run (1: the fine-tuned model; default: all five)")
    p.add_argument("--out", help="JSON report (and a grid PNG beside it)")
    args = p.parse_args()
    jl, jn = (int(v) for v in args.jumps.split(","))
    pipes = {name: Text2ImagePipeline.from_pretrained(path) for name, path in
             (("inpaint", args.inpaint_model), ("base", args.base), ("default", args.default))}
    cases = inpaint_cases(args.n, pipes["inpaint"].resolution, args.seed)
    rows = [("fine-tuned inpainting model", "inpaint", "model", None),
            ("RePaint on its base", "base", "repaint", None),
            (f"RePaint + jumps ({jl}, {jn}) on its base", "base", "repaint", Resample(jl, jn)),
            ("RePaint on the default", "default", "repaint", None),
            (f"RePaint + jumps ({jl}, {jn}) on the default", "default", "repaint", Resample(jl, jn))]
    if args.rows:
        rows = [rows[int(i) - 1] for i in args.rows.split(",")]
    images = torch.cat([c[0] for c in cases])
    prompts = [c[2] for c in cases]
    report = {"n": args.n, "steps": args.steps, "guidance_scale": args.guidance_scale,
              "models": {k: str(v) for k, v in vars(args).items() if k in ("inpaint_model", "base", "default")},
              "baseline_input_success": sum(ok(images, prompts)), "rows": {}}
    k = min(8, args.n)  # the grid: the inputs, then each method's results, on the first k cases
    grids, labels, verdicts = [images[:k]], [f"input: {q}" for q in prompts[:k]], [None] * k
    for label, which, method, resample in rows:
        report["rows"][label], out = run(pipes[which], method, resample, cases, args.steps, args.guidance_scale)
        r = report["rows"][label]
        grids.append(out[:k])
        labels += [label] * k
        verdicts += r["correct"][:k]
        print(f"{label}: {r['success']}/{args.n}, outside PSNR before paste-back min {r['outside_psnr_before_paste_back_min']:.1f} "
              f"dB, {r['seconds_per_image']:.2f} s/image", flush=True)
    print("| method | success (of %d) | outside PSNR before paste-back, min / mean | s / image |\n| --- | --- | --- | --- |" % args.n)
    print(f"| input as output (baseline) | {report['baseline_input_success']} | inf | 0 |")
    for label, r in report["rows"].items():
        print(f"| {label} | {r['success']} | {r['outside_psnr_before_paste_back_min']:.1f} / "
              f"{r['outside_psnr_before_paste_back_mean']:.1f} dB | {r['seconds_per_image']:.2f} |")
    if args.out:
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1) + "\n")
        save_grid(torch.cat(grids), labels, out_path.with_suffix(".png"), verdicts, columns=k)


if __name__ == "__main__":
    main()
