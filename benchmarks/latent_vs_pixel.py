"""Latent against pixel diffusion at 64 px with the same UNet: training images/s and sampling s/image, as ratios in
one run; optionally shapes-bench accuracy against training wall time for two runs' snapshots (LDM's claim: a given
quality for a fraction of the compute).

The pixel model is the latent config with the autoencoder removed: the same UNet widths, levels and text encoder,
on 3x64x64 pixels instead of 4x16x16 latents; attention sits at the same levels (16 and 8 px in latent space are
64 and 32 px in pixel space), so the pixel model pays for attention over 4096 positions, which is what working
in pixels at matched architecture costs.

    python benchmarks/latent_vs_pixel.py --config configs/latent64.json --train-steps 3 --sample-images 4
    python benchmarks/latent_vs_pixel.py --curve-latent runs/latent64 --curve-pixel runs/pixel64 --out-dir docs/latent_vs_pixel
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from condiff.diffusion.sampling import SamplingOptions
from condiff.train.tasks import load_train_config
from condiff.train.trainer import setup, train_step


def pixel_twin(cfg, same_depth: bool = True):
    """The same config without the autoencoder. same_depth: attention at the same levels of the UNet (16 and 8 px in
    latent space are 64 and 32 px in pixel space); otherwise attention only where the pixel UNet's feature maps are
    as small as the latent UNet's (its lowest level, 16 px): a cheaper pixel baseline with less attention."""
    from condiff import components

    twin = copy.deepcopy(cfg)
    factor = components.load("autoencoder", cfg.autoencoder).cfg.factor
    twin.autoencoder = None
    twin.unet.in_channels = 3
    lowest = cfg.data.resolution // 2 ** (len(cfg.unet.channel_mult) - 1)
    twin.unet.attention_resolutions = (tuple(r * factor for r in cfg.unet.attention_resolutions) if same_depth else
                                       tuple(r for r in cfg.unet.attention_resolutions if r >= lowest))
    return twin


def train_rate(cfg, steps: int, device: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run = setup(cfg, tmp, device=device)
        for _ in range(3):  # warm-up, and the frozen text cache
            train_step(run)
        start = time.perf_counter()
        for _ in range(steps):
            train_step(run)
        return steps * cfg.optim.batch_size / (time.perf_counter() - start)


def sample_seconds(cfg, images: int, steps: int, device: str) -> float:
    """Seconds per image of DDIM with CFG from a fresh (untrained) model of the config: the cost, not the quality."""
    with tempfile.TemporaryDirectory() as tmp:
        run = setup(cfg, tmp, device=device)
        pipe = run.task.pipeline(run)
        prompts = ["a red circle to the left of a blue square"] * images
        opts = SamplingOptions(steps=steps)
        pipe(prompts[:1], [0], SamplingOptions(steps=2))
        start = time.perf_counter()
        pipe(prompts, list(range(images)), opts)
        return (time.perf_counter() - start) / images


def throughput(args) -> dict:
    latent = load_train_config(args.config)
    latent.optim.batch_size = args.batch_size
    rows = {}
    for name, cfg in (("pixel", pixel_twin(latent)), ("pixel_attention_16px", pixel_twin(latent, same_depth=False)),
                      ("latent", latent)):
        rows[name] = {"train_img_s": train_rate(cfg, args.train_steps, args.device),
                      "sample_s_per_image": sample_seconds(cfg, args.sample_images, args.sample_steps, args.device),
                      "unet_input": [cfg.unet.in_channels, cfg.unet.resolution, cfg.unet.resolution],  # set by setup
                      "attention_resolutions": list(cfg.unet.attention_resolutions)}
        print(name, rows[name], flush=True)
    for pixel in ("pixel", "pixel_attention_16px"):
        rows[f"ratio_to_{pixel}"] = ratio = {
            "train": rows["latent"]["train_img_s"] / rows[pixel]["train_img_s"],
            "sample": rows[pixel]["sample_s_per_image"] / rows["latent"]["sample_s_per_image"]}
        print(f"latent / {pixel}: training {ratio['train']:.2f}x the images/s, sampling {ratio['sample']:.2f}x faster "
              f"per image (DDIM {args.sample_steps}, CFG; baseline: {pixel})")
    return rows


def snapshot_minutes(run: Path) -> list[tuple[float, Path]]:
    """(wall minutes since the run began, snapshot folder): the config is written at the start, each snapshot when done."""
    t0 = (run / "config.json").stat().st_mtime
    snaps = sorted((run / "snapshots").glob("step_*"))
    return [(((s / "pipeline.json").stat().st_mtime - t0) / 60, s) for s in snaps]


def curve(args) -> dict:
    from condiff.eval.bench import bench_samples, summarize
    from condiff.pipelines.text2image import Text2ImagePipeline

    opts = SamplingOptions(steps=args.sample_steps, guidance_scale=args.guidance_scale)
    out = {}
    for name, run in (("latent", args.curve_latent), ("pixel", args.curve_pixel)):
        if run is None:
            continue
        out[name] = []
        for minutes, snap in snapshot_minutes(Path(run)):
            pipe = Text2ImagePipeline.from_pretrained(snap).to(args.device)
            table = summarize(bench_samples(pipe, opts, args.prompts_per_category, args.n_per_prompt, 0, 64))
            out[name].append({"minutes": round(minutes, 1), "snapshot": snap.name,
                              **{k: v["accuracy"] for k, v in table.items()}})
            print(name, out[name][-1], flush=True)
    return out


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in curves.items():
        ax.plot([r["minutes"] for r in rows], [r["overall"] for r in rows], marker="o", label=f"{name}, overall")
    ax.set_xlabel("training wall time (minutes, 2 CPU cores)")
    ax.set_ylabel("shapes-bench accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/latent64.json", help="a latent text2image config")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--sample-images", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--curve-latent", help="a latent run folder with snapshots/ (learning curve against wall time)")
    parser.add_argument("--curve-pixel", help="a pixel run folder with snapshots/")
    parser.add_argument("--prompts-per-category", type=int, default=10)
    parser.add_argument("--n-per-prompt", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", default="latent_vs_pixel")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": args.config, "device": args.device}
    if args.curve_latent or args.curve_pixel:
        report["curves"] = curve(args)
        plot(report["curves"], out / "curve.png")
    else:
        report["throughput"] = throughput(args)
    (out / "latent_vs_pixel.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {out / 'latent_vs_pixel.json'}")


if __name__ == "__main__":
    main()
