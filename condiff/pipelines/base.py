"""A pipeline is a typed list of components plus per-stage sampler settings, saved as pipeline.json.

    {"format": 2, "kind": "text2image",
     "components": [{"name": "text_encoder", "type": "text_encoder"}, {"name": "unet", "type": "unet"}],
     "stages": [{"name": "base", "unet": "unet", "diffusion": {...}, "sampling": {...}}]}

Each component lives in its own folder (by default the pipeline folder's subfolder of its name; `path` may point
elsewhere, relative to the pipeline folder). `kind` picks the registered Pipeline class that composes them.
The first releases wrote pipeline.json as a bare diffusion config ({"schedule", "prediction", "learn_sigma"});
read_spec converts it.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .. import components
from ..components import ComponentType
from ..config import ConfigError, from_dict, read_json, save_json
from ..diffusion.denoiser import DiffusionConfig
from ..diffusion.sampling import SamplingOptions
from ..fs import replace_dir

SPEC = "pipeline.json"


@dataclass
class ComponentSpec:
    name: str
    type: ComponentType
    path: str | None = None  # folder relative to the pipeline folder (default: the name)


@dataclass
class UpscaleSettings:
    """A super-resolution stage's input: how much it enlarges, and the augmentation level it samples at."""
    scale: int = 2  # output side / input side
    noise_level: int = 0  # aug_t of the low-res input at sampling (a timestep of the stage's schedule; 0: clean)


@dataclass
class StageSpec:
    """One diffusion stage: which UNet component denoises, how it was trained, and its default sampler settings."""
    name: str = "base"
    unet: str = "unet"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    upscale: UpscaleSettings | None = None  # super-resolution stages only


@dataclass
class PipelineSpec:
    kind: str = "text2image"
    components: list[ComponentSpec] = field(default_factory=list)
    stages: list[StageSpec] = field(default_factory=lambda: [StageSpec()])
    format: int = 2
    vocabulary: list[str] | None = None  # the words of its training captions (pipelines/vocabulary.py); None: unknown

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"pipeline has no stage '{name}' (stages: {', '.join(s.name for s in self.stages)})")


def read_spec(folder: Path) -> PipelineSpec:
    """folder/pipeline.json as a PipelineSpec; a first-release file (a bare diffusion config) is converted."""
    path = Path(folder) / SPEC
    data = read_json(path)
    if isinstance(data, dict) and "kind" not in data:  # format 1: {"schedule", "prediction", "learn_sigma"}
        legacy = from_dict(DiffusionConfig, data, SPEC)
        return PipelineSpec("text2image", [ComponentSpec("text_encoder", ComponentType.TEXT_ENCODER),
                                           ComponentSpec("unet", ComponentType.UNET)], [StageSpec(diffusion=legacy)])
    return from_dict(PipelineSpec, data, SPEC)


KINDS = {  # pipeline kind -> the module that defines it, imported when a spec names it (base imports none of them)
    "text2image": "condiff.pipelines.text2image",
    "layout2image": "condiff.pipelines.layout2image",
    "upsample": "condiff.pipelines.upsample",
    "unclip": "condiff.pipelines.unclip",
    "stable_diffusion": "condiff.pipelines.stable_diffusion",  # built by condiff.formats, never from a pipeline.json
}
FOREIGN = "condiff.formats"  # models in other toolkits' formats (diffusers folders, SD single files), read at the door
PIPELINES: dict[str, type["Pipeline"]] = {}  # kind -> class, filled as each class is defined


def pipeline_class(kind: str, where: str = SPEC) -> type["Pipeline"]:
    """The Pipeline class of a kind: already defined, or defined by importing the module KINDS names for it."""
    if kind not in PIPELINES and kind in KINDS:
        importlib.import_module(KINDS[kind])
    if kind not in PIPELINES:
        raise ConfigError(f"{where}: unknown pipeline kind '{kind}' (known: {', '.join(sorted({*KINDS, *PIPELINES}))})")
    return PIPELINES[kind]


class Pipeline:
    """Named components composed by a subclass; loading, saving and device moves are shared."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            PIPELINES[cls.kind] = cls

    def __init__(self, parts: dict[str, nn.Module], spec: PipelineSpec):
        self.parts, self.spec = parts, spec

    @classmethod
    def from_parts(cls, parts: dict[str, nn.Module], spec: PipelineSpec) -> "Pipeline":
        return cls(parts, spec)

    @classmethod
    def assemble(cls, parts: dict[str, nn.Module], spec: PipelineSpec) -> "Pipeline":
        """from_parts, keeping what the spec holds beyond components and stages (the vocabulary), which a subclass's
        from_parts, building its spec anew, does not read."""
        pipe = cls.from_parts(parts, spec)
        pipe.spec.vocabulary = spec.vocabulary
        return pipe

    @classmethod
    def from_pretrained(cls, folder: str | Path, prediction: str | None = None) -> "Pipeline":
        """The pipeline saved in folder, which must be of this class (or a subclass); ValueError naming its kind."""
        pipe = load_pipeline(folder, prediction)
        if not isinstance(pipe, cls):
            raise ValueError(f"'{folder}' holds a {pipe.spec.kind} pipeline, not {getattr(cls, 'kind', cls.__name__)}")
        return pipe

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.parts.values())).parameters()).device

    def to(self, device) -> "Pipeline":
        for module in self.parts.values():
            module.to(device)
        return self

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None,
                        shared: dict[str, str] | None = None) -> None:
        """Write the spec and every component (each into its own subfolder) to a temporary folder, then swap it in.

        A component loaded from elsewhere (`path`) is copied in, so the saved folder stands alone, unless `shared`
        names it: {component: folder relative to the saved folder} is written as its `path` instead of a copy (a
        distilled or fine-tuned model that keeps its base's other parts).
        """
        folder, shared = Path(folder), shared or {}
        tmp = folder.with_name(folder.name + ".tmp")
        spec = replace(self.spec, components=[ComponentSpec(c.name, c.type, shared.get(c.name))
                                              for c in self.spec.components])
        save_json(spec, tmp / SPEC)
        for c in spec.components:
            if c.name not in shared:
                components.save(self.parts[c.name], tmp / c.name, dtype)
        replace_dir(tmp, folder)


def shared_parts(pipe: Pipeline, base: Pipeline, base_folder: Path, out: Path) -> dict[str, str]:
    """{component: its folder in base_folder, relative to out} for each of pipe's components that equals base's of
    the same name (type, config and weights, compared in float32): what `save_pretrained(out, shared=...)` need not
    copy."""
    types = {c.name: c.type for c in base.spec.components}
    paths = {c.name: Path(base_folder) / (c.path or c.name) for c in base.spec.components}
    same = {}
    for c in pipe.spec.components:
        mine, theirs = pipe.parts[c.name], base.parts.get(c.name)
        if theirs is None or types.get(c.name) != c.type or getattr(mine, "cfg", None) != getattr(theirs, "cfg", None):
            continue
        a, b = mine.state_dict(), theirs.state_dict()
        if a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a):
            same[c.name] = os.path.relpath(paths[c.name].resolve(), Path(out).resolve())
    return same


def load_pipeline(folder: str | Path, prediction: str | None = None) -> Pipeline:
    """The pipeline saved in folder, as the class its spec's kind names; a foreign model (a diffusers folder, a single
    file) through condiff.formats. prediction: what a single file's UNet predicts ('epsilon' or 'v')."""
    folder = Path(folder)
    formats = importlib.import_module(FOREIGN)
    if not (folder / SPEC).is_file() and formats.detect(folder) is not None:
        return formats.load(folder, prediction)
    if prediction is not None:
        raise ValueError("--prediction: only for a Stable Diffusion single file (a condiff model's pipeline.json says)")
    if not folder.is_dir():
        raise ConfigError(f"missing model folder '{folder}'")
    spec = read_spec(folder)
    cls = pipeline_class(spec.kind, str(folder / SPEC))
    names = [c.name for c in spec.components]
    if len(set(names)) != len(names):
        raise ConfigError(f"{folder / SPEC}: component names repeat: {names}")
    parts = {c.name: components.load(c.type, folder / (c.path or c.name)) for c in spec.components}
    return cls.assemble(parts, spec)
