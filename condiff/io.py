"""Atomic writes and safetensors components (weights + JSON config in one folder). Never unpickles."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, load_json, save_json
from .fs import atomic_write_bytes, remove_quietly, replace_dir

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class CheckpointError(ValueError):
    pass


def json_safe(obj):
    """obj with every float NaN replaced by None, recursively: JSON has no NaN, but null."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide weights from other users (as atomic_write_bytes does)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:  # a full disk or Ctrl-C mid-write: no half-written file is left behind
        remove_quietly(tmp)
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file '{path}'")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint '{path}': {e}") from None


def save_component(module: torch.nn.Module, cfg, folder: Path, dtype: torch.dtype | None = None) -> None:
    """folder/config.json + folder/model.safetensors."""
    state = module.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    atomic_save_tensors(state, folder / WEIGHTS)
    save_json(cfg, folder / CONFIG)


def mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """A short account of how a state dict differs from a module's: counts, and one example of each kind."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and expected[k].shape != got[k].shape]
    parts = [f"{len(missing)} tensor(s) missing (e.g. '{missing[0]}')" if missing else "",
             f"{len(extra)} unexpected (e.g. '{extra[0]}')" if extra else "",
             f"{len(shapes)} of another shape (e.g. '{shapes[0]}': {tuple(got[shapes[0]].shape)} for "
             f"{tuple(expected[shapes[0]].shape)})" if shapes else ""]
    return "; ".join(p for p in parts if p)[:300] or "the tensors do not load"


def load_component(module_cls, cfg_cls, folder: Path) -> torch.nn.Module:
    folder = Path(folder)
    cfg = load_json(cfg_cls, folder / CONFIG)
    module = module_cls(cfg)
    state = load_tensors(folder / WEIGHTS)
    expected = module.state_dict()
    try:
        module.load_state_dict({k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()})
    except RuntimeError:
        raise CheckpointError(f"weights in '{folder / WEIGHTS}' do not match its config: "
                              f"{mismatch(expected, state)}") from None
    return module.eval()


__all__ = ["CheckpointError", "ConfigError", "atomic_write_bytes", "atomic_save_tensors", "load_tensors",
           "replace_dir", "save_component", "load_component"]
