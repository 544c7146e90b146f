"""Stable Diffusion 1.5-sized sampling: condiff against diffusers on the same weights, machine and threads.

    python benchmarks/sd_speed.py --sizes 256 512 --out docs/stable-diffusion/sd_speed.json

The UNet is SD 1.5's architecture (860 M parameters, diffusers' config of runwayml/stable-diffusion-v1-5) and the
autoencoder SD's (83 M), both with random weights: no checkpoint can be downloaded here, and speed does not depend on
the values. The text encoder is a one-layer CLIP of SD's width (768), since it runs once per image. One pipeline of
diffusers components is built in memory; condiff wraps the very same modules (formats/diffusers_sd.py), so both draw
from identical weights. Each side generates one image with DDIM and CFG 7.5 at `--steps-short` and at
`--steps-long` steps (after a 1-step warm-up, whose two images are compared: the same seed draws the same image);
the difference of the two wall times over the difference of the steps is the cost of one
sampling step (two UNet calls, for CFG), without the fixed costs (text encoding, VAE decoding), which are reported
beside it. The ratio is condiff / diffusers seconds per step: below 1 means condiff is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              sample_size=512, scaling_factor=0.18215)
PROMPT = "a photograph of an astronaut riding a horse"


def diffusers_pipeline(dtype: torch.dtype):
    """SD 1.5's UNet and VAE (random weights), a one-layer 768-wide CLIP text model, SD's DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from condiff.formats.single_file import clip_tokenizer

    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**SD15_UNET).to(dtype).eval(), AutoencoderKL(**SD_VAE).to(dtype).eval()
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                        num_attention_heads=12, vocab_size=49408, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=1)).to(dtype).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=clip_tokenizer(sd2=False),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def condiff_pipeline(pipe):
    """condiff's SD pipeline around the same modules (as formats/diffusers_sd.load_folder builds it)."""
    from condiff.formats.diffusers_sd import CLIPTextEncoder, SDAutoencoder, SDUNet, diffusion_config
    from condiff.pipelines.stable_diffusion import SDPipeline

    config, opts = diffusion_config(dict(pipe.scheduler.config), "in memory")
    return SDPipeline(CLIPTextEncoder(pipe.text_encoder, pipe.tokenizer), SDUNet(pipe.unet), config,
                      SDAutoencoder(pipe.vae), opts, source="in memory")


def wall(fn) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - t


def measure(pipe, ours, size: int, steps: tuple[int, int]) -> dict:
    from condiff.diffusion.sampling import SamplingOptions
    from condiff.world.render import to_uint8

    ours.at_size(size)

    def run_diffusers(n):
        return pipe(PROMPT, num_inference_steps=n, guidance_scale=7.5, height=size, width=size,
                    generator=torch.Generator().manual_seed(0), output_type="np")

    def run_condiff(n):
        return ours([PROMPT], [0], SamplingOptions(steps=n, guidance_scale=7.5, sampler="ddim", schedule="leading",
                                                  threshold="none"))

    row, images = {"size": size, "steps": list(steps)}, {}
    for name, run in (("diffusers", run_diffusers), ("condiff", run_condiff)):
        wall(lambda: images.setdefault(name, run(1)))  # warm-up (first-call allocations, oneDNN kernels); its image
        short, long = wall(lambda: run(steps[0])), wall(lambda: run(steps[1]))
        per_step = (long - short) / (steps[1] - steps[0])
        row[name] = {"s_per_step": round(per_step, 3), "fixed_s": round(short - steps[0] * per_step, 3),
                     "wall_s": [round(short, 2), round(long, 2)]}
        print(f"{size:4d} px  {name:9s} {per_step:7.3f} s/step  fixed {row[name]['fixed_s']:6.2f} s", flush=True)
    theirs = torch.from_numpy(images["diffusers"].images[0] * 255).round()
    mine = to_uint8(images["condiff"].float())[0].float()
    row["same_image_max_diff_of_255"] = int((theirs - mine).abs().max())  # both drew the 1-step image of seed 0
    row["ratio_condiff_over_diffusers"] = round(row["condiff"]["s_per_step"] / row["diffusers"]["s_per_step"], 3)
    print(f"{size:4d} px  condiff / diffusers s/step = {row['ratio_condiff_over_diffusers']:.3f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps-short", type=int, default=2)
    ap.add_argument("--steps-long", type=int, default=4)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    pipe = diffusers_pipeline(dtype)
    ours = condiff_pipeline(pipe)
    params = sum(p.numel() for p in pipe.unet.parameters())
    print(f"UNet {params / 1e6:.0f} M parameters, {a.dtype}, {torch.get_num_threads()} threads", flush=True)
    rows = [measure(pipe, ours, s, (a.steps_short, a.steps_long)) for s in a.sizes]
    report = {"unet_parameters": params, "dtype": a.dtype, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "device": "cpu",
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
