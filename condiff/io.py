"""Atomic writes and safetensors components (weights + JSON config in one folder). Never unpickles."""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from pathlib import Path

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, load_json, save_json, short
from .fs import atomic_write, atomic_write_bytes, replace_dir

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class CheckpointError(ValueError):
    pass


_INIT_LOCK = threading.RLock()  # re-entered: a component may build a frozen encoder inside


@contextlib.contextmanager
def skipped_init():
    """Layers built without initialising their weights (they are loaded next). Initialising a tensor on the meta
    device runs torch's Python reference kernels, whose first use imports torch._dynamo: 1.5-1.8 s of a cold
    `condiff generate` on 2 CPU cores, for random numbers that are thrown away."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "ones_", "zeros_")
    with _INIT_LOCK:  # torch.nn.init is the process's: no other thread builds layers meanwhile through this
        saved = {n: getattr(nn.init, n) for n in names}
        try:
            for n in names:
                setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
            yield
        finally:
            for n, f in saved.items():
                setattr(nn.init, n, f)


def json_safe(obj):
    """obj with every float NaN replaced by None, recursively: JSON has no NaN, but null."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors streamed to a temporary file and swapped in (fs.atomic_write)."""
    atomic_write(Path(path), lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                                                   str(tmp)))


MAX_HEADER = 100 * 2 ** 20  # bytes of a safetensors JSON header (the format's own limit)
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def physical_memory() -> int:
    """Bytes of RAM of this machine (a large number where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 ** 50


def check_safetensors(path: Path, limit: int | None = None) -> None:
    """Read a safetensors file's header alone and refuse, before anything is allocated, a file whose header is not
    the format's or whose tensors would need more than `limit` bytes (default: this machine's RAM), or more than the
    file holds: a sparse 1 TB file must not become a 1 TB allocation."""
    limit = physical_memory() if limit is None else limit
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(MAX_HEADER, size - 8):
            raise CheckpointError(f"corrupt checkpoint '{path}': not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise CheckpointError(f"corrupt checkpoint '{path}': its header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"corrupt checkpoint '{path}': its header is not a JSON object")
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        itemsize = DTYPE_BYTES.get(info.get("dtype")) if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape) or itemsize is None:
            raise CheckpointError(f"corrupt checkpoint '{path}': tensor {short(name)} has no valid dtype and shape")
        total += math.prod(shape) * itemsize
    if total > size - 8 - n:
        raise CheckpointError(f"corrupt checkpoint '{path}': its header declares {total:,} bytes of tensors, but the "
                              f"file holds {size - 8 - n:,}")
    if total > limit:
        raise CheckpointError(f"checkpoint '{path}': its tensors need {total / 2 ** 30:,.1f} GiB, more than the "
                              f"{limit / 2 ** 30:,.1f} GiB this machine has; refused before loading")


def load_tensors(path: Path, limit: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, its header checked first (check_safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file '{path}'")
    check_safetensors(path, limit)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint '{path}': {e}") from None


def save_component(module: torch.nn.Module, cfg, folder: Path, dtype: torch.dtype | None = None) -> None:
    """folder/config.json + folder/model.safetensors; dtype (e.g. fp16 as shipped) casts every floating tensor but
    those the module names in `full_precision` (tensors whose precision matters more than their size)."""
    state = module.state_dict()
    if dtype is not None:
        keep = set(getattr(module, "full_precision", ()))
        state = {k: v.to(dtype) if v.is_floating_point() and k not in keep else v for k, v in state.items()}
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
    """The module of cfg_cls's config in folder with its weights, each cast to the module's dtype (fp16 files load
    as float32). It is built without initialising its layers (skipped_init) and the file's tensors become its
    parameters (assign: no second copy). Not on the meta device: a tensor made there in __init__ (torch.randn
    for a position table) imports torch._dynamo, 1.5 s of a cold start."""
    folder = Path(folder)
    cfg = load_json(cfg_cls, folder / CONFIG)
    with skipped_init():
        module = module_cls(cfg)
    state = load_tensors(folder / WEIGHTS)
    expected = module.state_dict()
    try:
        module.load_state_dict({k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()},
                               assign=True)
    except RuntimeError:
        raise CheckpointError(f"weights in '{folder / WEIGHTS}' do not match its config: "
                              f"{mismatch(expected, state)}") from None
    return module.eval()


__all__ = ["CheckpointError", "ConfigError", "atomic_write_bytes", "atomic_save_tensors", "check_safetensors", "load_tensors",
           "replace_dir", "save_component", "load_component"]
