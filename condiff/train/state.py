"""Training state <-> safetensors + JSON, in a folder written atomically; resume is exact."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..io import CheckpointError, atomic_save_tensors, atomic_write_bytes, load_tensors, replace_dir


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, idx, k = name.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for name, v in meta["scalars"].items():
        idx, k = name.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(folder: Path, step: int, model, ema_model, opt, generator: torch.Generator, keep: int) -> Path:
    """folder/checkpoints/step_N/{state.safetensors, state.json}; then folder/checkpoints/latest -> N."""
    ckpts = folder / "checkpoints"
    final = ckpts / f"step_{step:08d}"
    tmp = ckpts / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema_model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors |= opt_tensors
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    try:
        atomic_save_tensors(tensors, tmp / "state.safetensors")
        atomic_write_bytes(tmp / "state.json", json.dumps({"step": step, "optimizer": opt_meta}).encode())
        replace_dir(tmp, final)
        atomic_write_bytes(ckpts / "latest", final.name.encode())
    except OSError as e:  # e.g. ENOSPC: the pointer still names the last complete checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        pointer = ckpts / "latest"
        kept = f"'{ckpts / pointer.read_text().strip()}' is intact" if pointer.is_file() else "there is no earlier one"
        raise CheckpointError(f"writing the checkpoint of step {step} failed ({e.strerror or e}); {kept}: "
                              f"free space and continue with --resume") from None
    for old in sorted(ckpts.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path:
    pointer = folder / "checkpoints" / "latest"
    if not pointer.is_file():
        raise CheckpointError(f"no checkpoint to resume in '{folder}' (missing '{pointer}')")
    return folder / "checkpoints" / pointer.read_text().strip()


def load_state(ckpt: Path, model, ema_model, opt, generator: torch.Generator) -> int:
    tensors = load_tensors(ckpt / "state.safetensors")
    try:
        meta = json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt checkpoint '{ckpt / 'state.json'}': {e}") from None
    take = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model.load_state_dict(take("model."))
    ema_model.load_state_dict(take("ema."))
    opt.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"])
