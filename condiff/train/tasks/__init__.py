"""Model kinds the one trainer trains: each a config class, a module, a loss, an export (and maybe sample grids).

A training config names its kind in "model" (absent: text2image, the configs' original format).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ...catalogue import PACKAGE_PREFIX, model_folder
from ...config import ConfigError, from_dict, read_json
from .autoencoder import AutoencoderTask
from .controlnet import ControlNetTask
from .distill import ConsistencyDistillationTask, ProgressiveDistillationTask
from .embedding_prior import ARPriorTask, EmbeddingPriorTask
from .judges import JudgeTask
from .layout_prior import LayoutPriorTask
from .text2image import Text2ImageTask
from .upsampler import UpsamplerTask


def tasks() -> dict:
    return {"text2image": Text2ImageTask(), "clip": JudgeTask("clip"), "classifier": JudgeTask("classifier"),
            "autoencoder": AutoencoderTask(), "layout_prior": LayoutPriorTask(),
            "upsampler": UpsamplerTask(), "embedding_prior": EmbeddingPriorTask(), "ar_prior": ARPriorTask(),
            "controlnet": ControlNetTask(),
            "consistency_distillation": ConsistencyDistillationTask(),
            "progressive_distillation": ProgressiveDistillationTask()}


def task_named(name: str):
    known = tasks()
    if name not in known:
        raise ConfigError(f"model: unknown kind '{name}' (known: {', '.join(known)})")
    return known[name]


def task_of(cfg):
    """The task whose config class cfg is (a judge config says clip or classifier in cfg.model)."""
    name = getattr(cfg, "model", "text2image")
    return task_named(getattr(name, "value", name))


def load_train_config(path: str | Path):
    """The config at path, parsed by its kind's config class."""
    data = read_json(path)
    kind = data.get("model", "text2image") if isinstance(data, dict) else "text2image"
    return resolve_shipped(from_dict(task_named(str(kind)).config_cls, data, Path(path).name))


def resolve_shipped(cfg):
    """cfg with every `condiff/weights/NAME` folder (a shipped model) resolved inside the installed package."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            resolve_shipped(value)
        elif isinstance(value, str) and Path(value).parts[:2] == PACKAGE_PREFIX:
            setattr(cfg, f.name, str(model_folder(value)))
    return cfg
