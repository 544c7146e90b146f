"""A diffusers Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) as
condiff components. The networks stay diffusers' and transformers' own classes, read where they lie:

    SDUNet(unet)(x_t, t, context=...)              # the UNet's raw output (eps, v or x0): condiff's net contract
    SDAutoencoder(vae).encode(images) / .decode(z)  # with the VAE's scaling_factor
    CLIPTextEncoder(model, tokenizer).encode(texts) # {"context": (B, 77, D)}, padded to 77 tokens as SD does
    diffusion_config(scheduler_config.json)         # betas, steps_offset, set_alpha_to_one, spacing, prediction

Imports diffusers and transformers (the `sd` extra): formats/__init__ imports this module only for an SD model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from ..config import ConfigError
from ..diffusion.denoiser import DiffusionConfig, Prediction
from ..diffusion.sampling import SamplingOptions
from ..diffusion.schedule import BetaSchedule, ScheduleConfig
from ..pipelines.stable_diffusion import SDPipeline

PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SAMPLERS = {"DDIMScheduler": "ddim", "PNDMScheduler": "ddim", "DDPMScheduler": "ddpm", "EulerDiscreteScheduler": "euler",
            "EulerAncestralDiscreteScheduler": "euler_a", "DPMSolverMultistepScheduler": "dpmpp_2m",
            "HeunDiscreteScheduler": "heun", "LMSDiscreteScheduler": "euler"}  # the model's default sampler
PREDICTIONS = {"epsilon": Prediction.EPSILON, "v_prediction": Prediction.V, "sample": Prediction.X0}
SPACINGS = {"leading": "leading", "trailing": "trailing", "linspace": "uniform"}  # diffusers -> condiff's names
DDIM_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                 "trained_betas": None, "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon",
                 "timestep_spacing": "leading", "rescale_betas_zero_snr": False}  # a key a config leaves out
SD_GUIDANCE_SCALE = 7.5  # diffusers' StableDiffusionPipeline default


@dataclass
class SDUNetInfo:
    """What condiff's pipelines read of a UNet's config (nets.unet.UNetConfig's names)."""
    in_channels: int  # latent channels the sampler denoises
    extra_in_channels: int = 0  # an inpainting UNet's mask (1) + masked-image latents (4)
    resolution: int = 64  # latent side it was trained at (diffusers' sample_size)
    grounding_dim: int = 0  # no GLIGEN layers
    image_embed_dim: int = 0  # not an unCLIP decoder (no CLIP image-embedding input)


class SDUNet(nn.Module):
    """diffusers' UNet2DConditionModel as net(x_t, t, context=, [mask=, masked_image=]) -> its raw prediction."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet
        c = unet.config
        side = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
        self.cfg = SDUNetInfo(c.out_channels, c.in_channels - c.out_channels, side)

    @property
    def lora_root(self) -> nn.Module:
        """Where a LoRA file's unet layer names start (formats/lora.py): diffusers' own module names."""
        return self.unet

    def forward(self, x_t, t, context, mask=None, masked_image=None, **_):
        if self.cfg.extra_in_channels:  # diffusers' inpainting input: [latents, mask, masked-image latents]
            x_t = torch.cat([x_t, mask, masked_image], dim=1)  # (B, 9, h, w)
        return self.unet(x_t, t, encoder_hidden_states=context).sample  # (B, 4, h, w)


@dataclass
class SDAutoencoderInfo:
    factor: int  # pixel side / latent side
    latent_channels: int
    scaling_factor: float  # latents the UNet sees = the VAE's latents * scaling_factor (SD1: 0.18215)


class SDAutoencoder(nn.Module):
    """diffusers' AutoencoderKL as condiff's autoencoder: images in [-1, 1] <-> the UNet's (scaled) latents."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae
        c = vae.config
        self.cfg = SDAutoencoderInfo(2 ** (len(c.block_out_channels) - 1), c.latent_channels, c.scaling_factor)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 4, H/f, W/f): the posterior's mean, or a sample of it drawn from generator."""
        dist = self.vae.encode(images).latent_dist
        return (dist.mode() if generator is None else dist.sample(generator)) * self.cfg.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.cfg.scaling_factor).sample


class CLIPTextEncoder(nn.Module):
    """transformers' CLIPTextModel + CLIPTokenizer as condiff's text encoder: texts -> {"context": (B, L, D)}.

    Every text is padded to the tokenizer's length (77) and read without an attention mask, as diffusers' SD does;
    the unconditional branch is the states of "" (or of a negative prompt).
    """

    def __init__(self, model: CLIPTextModel, tokenizer: CLIPTokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
        self.expand: dict[str, str] = {}  # a textual-inversion token -> the n tokens it stands for

    @property
    def lora_root(self) -> nn.Module:
        """Where a LoRA file's text_encoder layer names start: transformers' CLIPTextModel (text_model.encoder...)."""
        return self.model

    def add_concepts(self, concepts: dict[str, torch.Tensor]) -> None:
        """Textual inversion as diffusers' load_textual_inversion does it: each token (and token_1 ... for more
        vectors) added to the tokenizer, the embedding matrix grown and the new rows set."""
        emb = self.model.get_input_embeddings()
        for token, vectors in concepts.items():
            if vectors.shape[1] != emb.weight.shape[1]:
                raise ValueError(f"embedding '{token}': {tuple(vectors.shape)} vectors, this CLIP's are "
                                 f"{emb.weight.shape[1]} wide")
            names = [token] + [f"{token}_{i}" for i in range(1, len(vectors))]
            if any(t in self.tokenizer.get_vocab() for t in names):
                raise ValueError(f"the token '{token}' is already in the tokenizer's vocabulary")
            self.tokenizer.add_tokens(names)
            self.model.resize_token_embeddings(len(self.tokenizer))
            emb = self.model.get_input_embeddings()
            with torch.no_grad():
                for name, v in zip(names, vectors):
                    emb.weight[self.tokenizer.convert_tokens_to_ids(name)] = v.to(emb.weight)
            self.expand[token] = " ".join(names)

    def encode(self, texts: list[str], device=None) -> dict[str, torch.Tensor]:
        for token, names in self.expand.items():
            texts = [t.replace(token, names) for t in texts]
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.length, truncation=True,
                             return_tensors="pt").input_ids
        device = device or next(self.model.parameters()).device
        return {"context": self.model(ids.to(device)).last_hidden_state}  # (B, 77, D)


def diffusion_config(raw: dict, where: str) -> tuple[DiffusionConfig, SamplingOptions]:
    """scheduler_config.json -> the schedule and prediction, and the model's default sampler settings.

    Keys it leaves out take DDIMScheduler's defaults, so the schedule is `DDIMScheduler.from_config(raw)`'s."""
    c = DDIM_DEFAULTS | {k: v for k, v in raw.items() if not k.startswith("_")}
    if c["trained_betas"] is not None or c["rescale_betas_zero_snr"]:
        raise ConfigError(f"{where}: trained_betas and rescale_betas_zero_snr are not supported")
    if c["beta_schedule"] not in ("linear", "scaled_linear") or c["prediction_type"] not in PREDICTIONS:
        raise ConfigError(f"{where}: beta_schedule {c['beta_schedule']!r} / prediction_type {c['prediction_type']!r} "
                          f"is not supported (linear, scaled_linear; {', '.join(PREDICTIONS)})")
    if c["timestep_spacing"] not in SPACINGS:
        raise ConfigError(f"{where}: timestep_spacing {c['timestep_spacing']!r} (known: {', '.join(SPACINGS)})")
    schedule = ScheduleConfig(c["num_train_timesteps"], BetaSchedule(c["beta_schedule"]), c["beta_start"], c["beta_end"],
                              c["steps_offset"], c["set_alpha_to_one"])
    sampler = SAMPLERS.get(raw.get("_class_name"), "ddim")
    spacing = "karras" if raw.get("use_karras_sigmas") and sampler != "ddim" else SPACINGS[c["timestep_spacing"]]
    opts = SamplingOptions(steps=50, guidance_scale=SD_GUIDANCE_SCALE, sampler=sampler, schedule=spacing,
                           threshold="none")
    return DiffusionConfig(schedule, PREDICTIONS[c["prediction_type"]]), opts


def check_folder(folder: Path) -> dict:
    """model_index.json, the five parts, a tokenizer and readable safetensors weights, checked before any loading."""
    index = json.loads((folder / "model_index.json").read_text())
    name = index.get("_class_name") if isinstance(index, dict) else None
    if name not in PIPELINES:
        raise ConfigError(f"{folder / 'model_index.json'}: _class_name {name!r} is not a pipeline condiff reads "
                          f"(it reads {', '.join(PIPELINES)})")
    for part in PARTS:
        if not (folder / part).is_dir():
            raise ConfigError(f"{folder}: no {part}/ folder (a Stable Diffusion folder has {', '.join(PARTS)})")
    tok = folder / "tokenizer"
    if not (tok / "tokenizer.json").is_file() and not ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()):
        raise ConfigError(f"{tok}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    for part, weights in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                          ("text_encoder", "model")):
        files = sorted((folder / part).glob(f"{weights}*.safetensors"))
        if not files:
            raise ConfigError(f"{folder / part}: no {weights}.safetensors (pickled .bin weights are never unpickled)")
        for f in files:
            check_safetensors(f)
    return index


def check_safetensors(path: Path) -> None:
    """ConfigError for a file that is not whole safetensors: a bad header, or tensors past the file's end."""
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own error types, and OSError
        raise ConfigError(f"'{path}': not a readable safetensors file ({str(e).splitlines()[0]})") from None


def quiet() -> None:
    """No progress bars or hub notices from diffusers / transformers while they load local files."""
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _load(part: str, load):
    try:
        return load()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"{part}: cannot load ({str(e).strip().splitlines()[0]})") from None


def load_folder(folder: Path) -> SDPipeline:
    """The SD pipeline of a diffusers folder, in float32 on the CPU."""
    check_folder(folder)
    quiet()
    config, opts = diffusion_config(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
                                    str(folder / "scheduler" / "scheduler_config.json"))
    tokenizer = _load("tokenizer", lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer"))
    text = _load("text_encoder", lambda: CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True))
    unet = _load("unet", lambda: UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True))
    vae = _load("vae", lambda: AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=True))
    return SDPipeline(CLIPTextEncoder(text.float().eval(), tokenizer), SDUNet(unet.float().eval()), config,
                      SDAutoencoder(vae.float().eval()), opts, source=folder, writer=save_folder)


def scheduler_config(cfg: DiffusionConfig, opts: SamplingOptions) -> dict:
    """The DDIMScheduler config of a pipeline's schedule (what `save_folder` writes as scheduler_config.json)."""
    s = cfg.schedule
    prediction = {v: k for k, v in PREDICTIONS.items()}[Prediction(cfg.prediction)]
    spacing = {v: k for k, v in SPACINGS.items()}.get(opts.schedule.value, "leading")
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": s.num_timesteps,
            "beta_schedule": BetaSchedule(s.beta_schedule).value, "beta_start": s.beta_start, "beta_end": s.beta_end,
            "steps_offset": s.steps_offset, "set_alpha_to_one": s.set_alpha_to_one, "clip_sample": False,
            "prediction_type": prediction, "timestep_spacing": spacing}


def save_folder(pipe: SDPipeline, folder: str | Path) -> None:
    """Write pipe as a diffusers folder that diffusers' StableDiffusionPipeline.from_pretrained reads."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline  # the whole pipeline class only to write one

    quiet()
    sd = StableDiffusionPipeline(vae=pipe.autoencoder.vae, text_encoder=pipe.text_encoder.model,
                                 tokenizer=pipe.text_encoder.tokenizer, unet=pipe.unet.unet,
                                 scheduler=DDIMScheduler.from_config(scheduler_config(pipe.cfg, pipe.defaults)),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(folder, safe_serialization=True)
