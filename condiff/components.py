"""Components: each a folder with config.json + model.safetensors, loadable alone by its type.

    unet = load("unet", "condiff/weights/base32/unet")

A pipeline (pipelines/base.py) is a typed list of components plus per-stage sampler settings.
"""
from __future__ import annotations

import enum
from pathlib import Path

import torch
from torch import nn

from .fs import replace_dir
from .config import load_json, save_json
from .io import CONFIG, load_component, save_component


class ComponentType(str, enum.Enum):
    TEXT_ENCODER = "text_encoder"  # learned word-level transformer (nets/text.py)
    PRETRAINED_TEXT_ENCODER = "pretrained_text_encoder"  # frozen BERT-style encoder from a folder or package
    UNET = "unet"  # the denoiser network of a stage (base, upsampler, decoder)
    AUTOENCODER = "autoencoder"  # latent diffusion's first stage (nets/autoencoder.py)
    LAYOUT_PRIOR = "layout_prior"  # caption -> (phrase, box) sets (nets/layout_prior.py)
    CLIP = "clip"  # condiff CLIP, clean or noise-aware
    CLASSIFIER = "classifier"  # noise-aware classifier over the world's labels


def classes(kind: ComponentType | str) -> tuple[type, type]:
    """(module class, config class) of a component type; imported on demand."""
    kind = ComponentType(kind)
    if kind is ComponentType.TEXT_ENCODER:
        from .nets.text import TextEncoder, TextEncoderConfig
        return TextEncoder, TextEncoderConfig
    if kind is ComponentType.PRETRAINED_TEXT_ENCODER:
        from .nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder
        return PretrainedTextEncoder, PretrainedTextConfig
    if kind is ComponentType.UNET:
        from .nets.unet import UNet, UNetConfig
        return UNet, UNetConfig
    if kind is ComponentType.AUTOENCODER:
        from .nets.autoencoder import Autoencoder, AutoencoderConfig
        return Autoencoder, AutoencoderConfig
    if kind is ComponentType.LAYOUT_PRIOR:
        from .nets.layout_prior import LayoutPrior, LayoutPriorConfig
        return LayoutPrior, LayoutPriorConfig
    if kind is ComponentType.CLIP:
        from .nets.clip import CLIP, CLIPConfig
        return CLIP, CLIPConfig
    from .nets.classifier import ClassifierConfig, NoisyClassifier
    return NoisyClassifier, ClassifierConfig


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
