"""An original-layout Stable Diffusion single file (CompVis / A1111 / ComfyUI .safetensors) as condiff components.

    model.diffusion_model.*   UNet        first_stage_model.*   KL autoencoder
    cond_stage_model.transformer.text_model.*   SD1's CLIP ViT-L text model
    cond_stage_model.model.*                    SD2's OpenCLIP ViT-H text model (read at its penultimate layer)

The architecture is read from the tensors' shapes (widths, level and block counts, where attention sits, linear or
convolutional projections, text width and depth); what shapes cannot tell comes from the family's conventions
(SD1: 8 heads in every UNet attention, CLIP text with 64-dim heads and quick_gelu; SD2: 64-dim UNet heads, OpenCLIP
text with gelu, the last layer dropped; both: VAE scaling 0.18215, the scaled_linear schedule of SD's configs). The
keys are converted in memory by diffusers' own converters (diffusers.loaders.single_file_utils, which need no hub),
and the tokenizer is CLIP's BPE vocabulary shipped in clip_bpe/ (MIT, OpenAI).
"""
from __future__ import annotations

import gzip
import re
import tempfile
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..config import ConfigError
from .diffusers_sd import CLIPTextEncoder, SDAutoencoder, SDUNet, check_safetensors, diffusion_config, quiet, save_folder
from ..pipelines.stable_diffusion import SDPipeline

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_SD1, CLIP_SD2 = "cond_stage_model.transformer.", "cond_stage_model.model."
BPE = Path(__file__).parent / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
VAE_SCALING = 0.18215
SD_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                "beta_end": 0.012, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}


def _count(keys, pattern: str) -> int:
    """How many distinct integers fill the {} of pattern among keys."""
    rx = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def unet_params(sd: dict, sd2: bool) -> dict:
    """LDM's unet_config params of the UNet in sd, from its shapes and the family's head convention."""
    keys = [k[len(UNET):] for k in sd if k.startswith(UNET)]
    get = lambda k: sd[UNET + k]
    mc = get("input_blocks.0.0.weight").shape[0]
    levels = 1 + sum(f"input_blocks.{i}.0.op.weight" in keys for i in range(_count(keys, "input_blocks.{}.")))
    nrb = (_count(keys, "input_blocks.{}.") - levels) // levels
    firsts = [1 + i * (nrb + 1) for i in range(levels)]
    mult = [get(f"input_blocks.{b}.0.out_layers.3.weight").shape[0] // mc for b in firsts]
    attn = [2 ** i for i, b in enumerate(firsts) if f"input_blocks.{b}.1.proj_in.weight" in keys]
    if not attn:
        raise ConfigError("the UNet has no cross-attention: not a text-to-image Stable Diffusion UNet")
    a = f"input_blocks.{firsts[[2 ** i for i in range(levels)].index(attn[0])]}.1."
    heads = {"num_head_channels": 64} if sd2 else {"num_heads": 8}
    return {"model_channels": mc, "in_channels": get("input_blocks.0.0.weight").shape[1],
            "out_channels": get("out.2.weight").shape[0], "channel_mult": mult, "num_res_blocks": nrb,
            "attention_resolutions": attn, "context_dim": get(a + "transformer_blocks.0.attn2.to_k.weight").shape[1],
            "use_linear_in_transformer": get(a + "proj_in.weight").ndim == 2,
            "transformer_depth": _count(keys, a + "transformer_blocks.{}."), **heads}


def vae_params(sd: dict) -> dict:
    """LDM's ddconfig of the KL autoencoder in sd, from its shapes."""
    keys = [k[len(VAE):] for k in sd if k.startswith(VAE)]
    get = lambda k: sd[VAE + k]
    ch = get("encoder.conv_in.weight").shape[0]
    levels = _count(keys, "encoder.down.{}.")
    return {"ch": ch, "in_channels": get("encoder.conv_in.weight").shape[1], "out_ch": get("decoder.conv_out.weight").shape[0],
            "z_channels": get("decoder.conv_in.weight").shape[1], "num_res_blocks": _count(keys, "encoder.down.0.block.{}."),
            "ch_mult": [get(f"encoder.down.{i}.block.0.conv2.weight").shape[0] // ch for i in range(levels)]}


def text_encoder(sd: dict, sd2: bool) -> CLIPTextModel:
    """The CLIP text model in sd (SD1: CLIP ViT-L-like; SD2: OpenCLIP, its last layer dropped), weights loaded."""
    if sd2:
        p = CLIP_SD2
        layers = _count(sd, p + "transformer.resblocks.{}.") - 1  # SD2 reads the penultimate layer's states
        width = sd[p + "token_embedding.weight"].shape[1]
        cfg = dict(vocab_size=sd[p + "token_embedding.weight"].shape[0], hidden_size=width,
                   intermediate_size=sd[p + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                   max_position_embeddings=sd[p + "positional_embedding"].shape[0], hidden_act="gelu")
        last = f"{p}transformer.resblocks.{layers}."
        sd = {k: v for k, v in sd.items() if not k.startswith(last)}
    else:
        p = CLIP_SD1 + "text_model."
        layers = _count(sd, p + "encoder.layers.{}.")
        emb = sd[p + "embeddings.token_embedding.weight"]
        width = emb.shape[1]
        cfg = dict(vocab_size=emb.shape[0], hidden_size=width,
                   intermediate_size=sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0],
                   max_position_embeddings=sd[p + "embeddings.position_embedding.weight"].shape[0],
                   hidden_act="quick_gelu")
    vocab = cfg["vocab_size"]
    model = CLIPTextModel(CLIPTextConfig(**cfg, num_hidden_layers=layers, num_attention_heads=max(width // 64, 1),
                                         bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=1))
    weights = sfu.convert_open_clip_checkpoint(model, sd, CLIP_SD2) if sd2 else sfu.convert_ldm_clip_checkpoint(sd)
    weights = {k.removeprefix("text_model."): v for k, v in weights.items() if not k.endswith("position_ids")}
    weights.pop("text_projection.weight", None)  # OpenCLIP's projection: not part of the text model SD reads
    _load_strict(model, weights, "cond_stage_model")
    return model


def _load_strict(module: torch.nn.Module, weights: dict, part: str) -> None:
    missing, unexpected = module.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConfigError(f"{part}: the file's tensors do not fit the architecture read from their shapes "
                          f"(missing {missing[:2]}, unexpected {unexpected[:2]})")


def clip_tokenizer(sd2: bool) -> CLIPTokenizer:
    """CLIP's 49,408-token BPE tokenizer from the shipped vocabulary (OpenAI's simple_tokenizer order)."""
    import json

    chars = sfu_bytes_to_unicode()
    merges = gzip.open(BPE).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + ["<|startoftext|>",
                                                                                         "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        pad = {"pad_token": "!"} if sd2 else {}  # SD2's OpenCLIP pads with token 0
        return CLIPTokenizer(vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"),
                             model_max_length=77, **pad)


def sfu_bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet: printable bytes as themselves, the rest shifted past 255 (GPT-2's table)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def load_single_file(path: Path, prediction: str | None = None) -> SDPipeline:
    """The SD1 / SD2 pipeline of an original-layout .safetensors file, converted in memory."""
    check_safetensors(path)
    quiet()
    sd = load_file(str(path))
    for prefix in (UNET, VAE):
        if not any(k.startswith(prefix) for k in sd):
            raise ConfigError(f"'{path}': no {prefix}* tensors: not an original-layout Stable Diffusion file")
    sd2 = any(k.startswith(CLIP_SD2) for k in sd)
    if not sd2 and not any(k.startswith(CLIP_SD1) for k in sd):
        raise ConfigError(f"'{path}': no cond_stage_model.* text encoder (SD1 CLIP or SD2 OpenCLIP)")
    try:
        original = {"model": {"params": {"unet_config": {"params": unet_params(sd, sd2)}, "scale_factor": VAE_SCALING,
                                         "first_stage_config": {"params": {"ddconfig": vae_params(sd)}}}}}
        size = 768 if prediction == "v" else 512
        with warnings.catch_warnings():  # image_size= is deprecated there, but the only way to skip a model-type guess
            warnings.simplefilter("ignore", FutureWarning)
            unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, sd, image_size=size)
            vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, sd, image_size=size)
        unet, vae = UNet2DConditionModel(**unet_cfg), AutoencoderKL(**vae_cfg)
        _load_strict(unet, sfu.convert_ldm_unet_checkpoint(sd, unet_cfg), "model.diffusion_model")
        _load_strict(vae, sfu.convert_ldm_vae_checkpoint(sd, vae_cfg), "first_stage_model")
        text = text_encoder(sd, sd2)
    except (KeyError, IndexError, ValueError, RuntimeError, ZeroDivisionError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"'{path}': tensors do not form a Stable Diffusion 1.x/2.x model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    raw = SD_SCHEDULER | {"prediction_type": "v_prediction" if prediction == "v" else "epsilon"}
    config, opts = diffusion_config(raw, str(path))
    return SDPipeline(CLIPTextEncoder(text.eval(), clip_tokenizer(sd2)), SDUNet(unet.eval()), config,
                      SDAutoencoder(vae.eval()), opts, source=path, writer=save_folder)
