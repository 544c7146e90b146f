"""Foreign formats, converted at the door: Stable Diffusion as a diffusers folder (model_index.json) or as one
original-layout single file (A1111 / ComfyUI's .safetensors), and transformers CLIP folders.

    detect(path)              # Format.DIFFUSERS, Format.SINGLE_FILE, Format.PICKLE or None (a condiff folder)
    load(path)                # -> pipelines.stable_diffusion.SDPipeline, whose parts keep condiff's contracts
    load_clip(path)           # a CLIP judge: a transformers CLIPModel folder or condiff's own CLIP

Past this package nothing knows where a weight came from: the UNet is a denoiser net(x_t, t, **cond), the VAE an
autoencoder encode/decode, the text model a text encoder encode(texts) -> {"context"}. This module imports neither
diffusers nor transformers (the `sd` extra); the modules it loads for a foreign model do.
"""
from __future__ import annotations

import enum
import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..config import ConfigError

MODEL_INDEX = "model_index.json"  # a diffusers pipeline folder's table of components
SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")  # never unpickled: torch.load runs the file's code


class Format(str, enum.Enum):
    DIFFUSERS = "diffusers"  # a folder with model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/
    SINGLE_FILE = "single_file"  # the original (CompVis / A1111) layout in one safetensors file
    PICKLE = "pickle"  # a .ckpt / .pt: refused


def detect(path: str | Path) -> Format | None:
    """The foreign format at path, from its name and folder alone (nothing is read); None: not a foreign model."""
    path = Path(path)
    if path.is_dir():
        return Format.DIFFUSERS if (path / MODEL_INDEX).is_file() else None
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return Format.SINGLE_FILE
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return Format.PICKLE
    return None


def require_sd() -> None:
    """ValueError naming the extra when diffusers or transformers is missing (they are imported only for SD)."""
    missing = [m for m in ("diffusers", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"Stable Diffusion models need {' and '.join(missing)}: pip install 'condiff[sd]'")


@dataclass(frozen=True)
class AdapterFile:
    """An adapter (a LoRA, a textual-inversion embedding) given as a safetensors file or as a diffusers folder that
    holds one named `weight_name`; subclasses name the file, their flag and kind, and the largest size they take."""
    path: str
    weight_name: ClassVar[str] = ""
    option: ClassVar[str] = ""  # the command-line flag the errors name
    kind: ClassVar[str] = ""
    max_bytes: ClassVar[int] = 0

    @property
    def name(self) -> str:
        """What infotexts call it (A1111): a folder's name, a file's stem."""
        p = Path(self.path)
        return p.name if p.is_dir() else p.stem

    @property
    def file(self) -> Path:
        p = Path(self.path)
        return p / self.weight_name if p.is_dir() else p

    def checked_file(self) -> Path:
        """The file, or a one-line ConfigError: a pickle (refused unread), a missing file, one too large."""
        path = self.file
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ConfigError(f"{self.option}: '{path}' is a pickle ({path.suffix}), which can run code when loaded; "
                              f"condiff reads {self.kind}s as .safetensors only")
        if not path.is_file():
            raise ConfigError(f"{self.option}: no such file '{path}'")
        if path.stat().st_size > self.max_bytes:
            raise ConfigError(f"{self.option}: '{path}' is {path.stat().st_size / 2 ** 20:,.0f} MiB, too large for "
                              f"a {self.kind}")
        return path


def refuse_pickle(path: Path) -> None:
    raise ConfigError(f"'{path}': a pickle checkpoint ({path.suffix}) is never unpickled (loading it runs its code); "
                      "convert it to .safetensors with the tool that made it, then use condiff on that file")


def load(path: str | Path, prediction: str | None = None):
    """The Stable Diffusion pipeline at path (a diffusers folder or a single file), weights loaded where they lie.

    prediction ('epsilon' or 'v'): what a single file's UNet predicts, which the file cannot say (default: SD1's
    epsilon, or v for an SD2-768 file); a diffusers folder's scheduler_config.json says it.
    """
    path = Path(path)
    kind = detect(path)
    if kind is None:
        raise ConfigError(f"'{path}': not a diffusers folder ({MODEL_INDEX}) or a .safetensors single file")
    if kind is Format.PICKLE:
        refuse_pickle(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file '{path}'")
    require_sd()
    if kind is Format.DIFFUSERS:
        if prediction is not None:
            raise ValueError("--prediction: a diffusers folder's scheduler_config.json says what its UNet predicts")
        return importlib.import_module("condiff.formats.diffusers_sd").load_folder(path)
    return importlib.import_module("condiff.formats.single_file").load_single_file(path, prediction)


def load_clip(path: str | Path):
    """A CLIP judge: a transformers CLIP folder (config.json of model_type "clip") or a condiff CLIP folder."""
    path = Path(path)
    if is_transformers_clip(path):
        require_sd()
        return importlib.import_module("condiff.formats.transformers_clip").TransformersCLIP.load(path)
    return importlib.import_module("condiff.nets.clip").load_clip(path)


def is_transformers_clip(path: Path) -> bool:
    """A transformers CLIP folder: its config.json says model_type "clip" (condiff's own CLIP config does not)."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        raw = json.loads(config.read_text())
    except ValueError:
        return False
    return isinstance(raw, dict) and raw.get("model_type") == "clip"


def convert(source: str | Path, out: str | Path, prediction: str | None = None) -> None:
    """Write the Stable Diffusion model at source (folder or single file) as a diffusers folder at out."""
    load(source, prediction).save_pretrained(out)
