"""Components: each a folder with config.json + model.safetensors, loadable alone by its type.

    unet = load("unet", "condiff/weights/base32/unet")

A pipeline (pipelines/base.py) is a typed list of components plus per-stage sampler settings.
"""
from __future__ import annotations

import enum
from pathlib import Path

import torch
from torch import nn

from .config import load_json, read_json, save_json
from .fs import replace_dir
from .io import CONFIG, load_component, save_component


class ComponentType(str, enum.Enum):
    TEXT_ENCODER = "text_encoder"  # learned word-level transformer (nets/text.py)
    PRETRAINED_TEXT_ENCODER = "pretrained_text_encoder"  # frozen BERT-style encoder from a folder or package
    UNET = "unet"  # the denoiser network of a stage (base, upsampler, decoder)
    AUTOENCODER = "autoencoder"  # latent diffusion's first stage (nets/autoencoder.py)
    LAYOUT_PRIOR = "layout_prior"  # caption -> (phrase, box) sets (nets/layout_prior.py)
    EMBEDDING_PRIOR = "embedding_prior"  # unCLIP's diffusion prior: caption -> CLIP image embedding
    AR_PRIOR = "ar_prior"  # unCLIP's autoregressive prior: caption -> the embedding's PCA codes
    CLIP = "clip"  # condiff CLIP, clean or noise-aware
    CLASSIFIER = "classifier"  # noise-aware classifier over the world's labels
    CONTROLNET = "controlnet"  # a ControlNet: a trainable copy of a UNet's encoder, read by a control map


CLASSES = {  # type -> (module, network class, config class), imported on demand
    ComponentType.TEXT_ENCODER: ("nets.text", "TextEncoder", "TextEncoderConfig"),
    ComponentType.PRETRAINED_TEXT_ENCODER: ("nets.pretrained_text", "PretrainedTextEncoder", "PretrainedTextConfig"),
    ComponentType.UNET: ("nets.unet", "UNet", "UNetConfig"),
    ComponentType.AUTOENCODER: ("nets.autoencoder", "Autoencoder", "AutoencoderConfig"),
    ComponentType.LAYOUT_PRIOR: ("nets.layout_prior", "LayoutPrior", "LayoutPriorConfig"),
    ComponentType.EMBEDDING_PRIOR: ("nets.embedding_prior", "EmbeddingPrior", "EmbeddingPriorConfig"),
    ComponentType.AR_PRIOR: ("nets.ar_prior", "ARPrior", "ARPriorConfig"),
    ComponentType.CLIP: ("nets.clip", "CLIP", "CLIPConfig"),
    ComponentType.CLASSIFIER: ("nets.classifier", "NoisyClassifier", "ClassifierConfig"),
    ComponentType.CONTROLNET: ("nets.controlnet", "ControlNet", "ControlNetConfig"),
}


def classes(kind: ComponentType | str) -> tuple[type, type]:
    """(module class, config class) of a component type."""
    import importlib

    module, net, cfg = CLASSES[ComponentType(kind)]
    mod = importlib.import_module(f"condiff.{module}")
    return getattr(mod, net), getattr(mod, cfg)


def guess_type(folder: str | Path) -> ComponentType:
    """The type of a component folder, from the keys its config.json alone has."""
    cfg = read_json(Path(folder) / CONFIG)
    if isinstance(cfg, dict) and "_class_name" in cfg:  # diffusers' configs name their class; condiff's never do
        raise ValueError(f"'{folder}': a diffusers {cfg['_class_name']} config, not a condiff component "
                         "(give the whole Stable Diffusion folder, with its model_index.json, as --model)")
    marks = [("source", ComponentType.PRETRAINED_TEXT_ENCODER), ("bins", ComponentType.LAYOUT_PRIOR),
             ("buckets", ComponentType.AR_PRIOR), ("text_width", ComponentType.EMBEDDING_PRIOR),
             ("latent_channels", ComponentType.AUTOENCODER),
             ("hint_channels", ComponentType.CONTROLNET), ("vocab", ComponentType.TEXT_ENCODER),
             ("channel_mult", ComponentType.UNET), ("text", ComponentType.CLIP), ("image", ComponentType.CLASSIFIER)]
    for key, kind in marks:
        if key in cfg:
            return kind
    raise ValueError(f"'{folder}': cannot tell which component its config.json describes")


def load(kind: ComponentType | str, folder: str | Path) -> nn.Module:
    """A component of this type from folder/{config.json, model.safetensors}, in eval mode (float32 weights).

    A frozen pretrained component's folder holds its config only; the config says where its weights are.
    """
    module_cls, cfg_cls = classes(kind)
    if getattr(module_cls, "frozen", False):
        return module_cls(load_json(cfg_cls, Path(folder) / CONFIG)).eval()
    return load_component(module_cls, cfg_cls, Path(folder))


def save(module: nn.Module, folder: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write module.cfg and its weights (optionally cast, e.g. fp16 as shipped) into folder, atomically."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if getattr(module, "frozen", False):
        save_json(module.cfg, tmp / CONFIG)
    else:
        save_component(module, module.cfg, tmp, dtype)
    replace_dir(tmp, folder)
