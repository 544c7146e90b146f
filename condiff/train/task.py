"""The contract between the one trainer and a model kind (train/tasks/): the Run a kind is handed, what a kind must
give (Task), and defaults for what it may leave out. The trainer calls every Task method without probing for it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..config import ConfigError
from ..pipelines.base import load_pipeline
from ..pipelines.text2image import Text2ImagePipeline
from .config import Precision
from .distributed import World
from .ema import EMA


class Task(Protocol):
    """What one model kind adds to the trainer."""

    name: str
    config_cls: type  # a dataclass built on config.RunSettings
    batch_coupled: bool  # its loss couples the whole batch (in-batch negatives): one shard on one process

    def build(self, cfg, data, resume: bool) -> nn.Module: ...  # fills the config's derived fields (vocab, resolution)

    def prepare(self, run: Run) -> None: ...  # run.state extras, after the model exists

    def drop_handed(self) -> None: ...  # forget what an earlier build handed on to prepare (before each build)

    def extras(self, run: Run, raw) -> dict: ...  # the loss's inputs besides images and captions (e.g. boxes)

    def loss(self, run: Run, images: torch.Tensor, captions: list[str], **extras) -> torch.Tensor: ...

    def sample(self, run: Run) -> Path | None: ...  # a grid of samples every cfg.sample_every steps (None: none)

    def export(self, run: Run, folder: Path) -> None: ...  # the EMA model as loadable component(s)


@dataclass
class Run:
    task: Task
    cfg: object
    folder: Path
    data: object
    model: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    generator: torch.Generator
    device: torch.device
    step: int = 0
    state: dict = field(default_factory=dict)  # task-owned extras (e.g. the noise schedule)
    logs: dict = field(default_factory=dict)  # task-reported figures of the last step (e.g. codebook perplexity)
    world: World = field(default_factory=World)  # the launched processes (rank 0 of 1 when not launched)
    shards: int = 1  # optim.micro_batches resolved for this world (train/distributed.py)
    saved_step: int = -1  # the step save() last wrote (a signal right after a periodic save does not save twice)

    def summary(self) -> str:
        skipped = getattr(self.data, "skipped", 0)
        return (f"trained {self.task.name} for {self.step} steps; model in {self.folder / 'model'}"
                + (f"; skipped {skipped} unusable images (unreadable, truncated, empty or too large)" if skipped else ""))

    def autocast(self):
        if Precision(self.cfg.precision) is Precision.BF16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def base_model(path: str, field: str, resolution: int) -> Text2ImagePipeline:
    """The condiff text-to-image model a task builds on (a ControlNet's base, a distillation's teacher), loaded;
    a one-line ConfigError naming the config's field when path is no condiff model folder, holds another kind of
    pipeline, or draws at another side than the data's resolution."""
    if not (Path(path) / "pipeline.json").is_file():
        raise ConfigError(f"{field}: '{path}' is not a condiff model folder (no pipeline.json)")
    pipe = load_pipeline(path)
    if not isinstance(pipe, Text2ImagePipeline) or getattr(pipe, "variable_size", False):
        raise ConfigError(f"{field}: '{path}' holds a {pipe.spec.kind} pipeline, not a condiff text-to-image model")
    if pipe.resolution != resolution:
        raise ConfigError(f"data.resolution {resolution} is not the {field} model's side {pipe.resolution}")
    return pipe


class TaskDefaults:
    """What a kind may leave out: no coupling across the batch, no extra loss inputs, no sample grids."""

    batch_coupled = False

    def prepare(self, run: Run) -> None:
        pass

    def hand_on(self, key, thing) -> None:
        """Keep something build loaded (a frozen teacher, a CLIP) for prepare to take instead of loading it again;
        before each build the trainer drops whatever an earlier run left."""
        self.__dict__.setdefault("handed", {})[key] = thing

    def take(self, key, load):
        """What build handed on under key (the source's name in it), else load()."""
        handed = self.__dict__.get("handed", {})
        return handed.pop(key) if key in handed else load()

    def drop_handed(self) -> None:
        self.__dict__.pop("handed", None)

    def extras(self, run: Run, raw) -> dict:
        return {}

    def sample(self, run: Run) -> Path | None:
        return None
