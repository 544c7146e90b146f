"""LoRA files: diffusers/PEFT's layout (condiff's own) and kohya's, read into one form, written in the first, and
attached to a loaded pipeline's parts (`--lora FILE[:WEIGHT]`, several at once).

    diffusers / PEFT  <component>.<layer>.lora_A.weight, .lora_B.weight; alphas in the safetensors metadata
                      `lora_adapter_metadata` ({"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {...}}),
                      alpha = r when it says nothing (diffusers' rule)
    kohya (sd-scripts) lora_unet_<layer with _ for .>.lora_down.weight, .lora_up.weight, .alpha;
                      lora_te_ for the text encoder

read(path) -> {component: {layer: Entry}}, with kohya's underscored layer names still to be matched against a
model's own (resolve). A file's keys name a pipeline part (unet, text_encoder) and a layer inside that part's network
as diffusers names it: for a Stable Diffusion model the diffusers UNet2DConditionModel and transformers
CLIPTextModel themselves (their `lora_root`), so adapters trained with diffusers or kohya's scripts load; for a condiff
model its own UNet. apply() attaches them unmerged: weight 0 is the base model exactly. Only safetensors are read: a pickled .bin/.pt/.ckpt is refused, never loaded.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import ConfigError
from ..nets import lora
from . import AdapterFile

METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for the PEFT LoraConfig of each component
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name in a LoRA folder
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
PEFT_KEY = re.compile(r"^(?P<comp>[A-Za-z0-9_]+)\.(?P<layer>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
KOHYA_KEY = re.compile(r"^(?P<layer>lora_[a-z0-9]+_.+?)\.(?P<what>lora_down\.weight|lora_up\.weight|alpha)$")
MAX_FILE_BYTES = 4 * 2 ** 30  # a LoRA larger than this is not one


@dataclass
class Entry:
    A: torch.Tensor  # (r, in[, k...])
    B: torch.Tensor  # (out, r[, 1...])
    alpha: float | None = None  # None: alpha = r

    @property
    def rank(self) -> int:
        return self.A.shape[0]


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value or abs(value) == float("inf"):
        raise ConfigError(f"--lora: {what} in its metadata is {str(value)[:40]!r}, not a number")
    return float(value)


def _alpha(meta: dict, comp: str, layer: str, rank: int) -> float | None:
    """The layer's alpha from PEFT's metadata (alpha_pattern by layer name, else lora_alpha); with use_rslora the
    update is scaled by alpha / sqrt(r), which is returned as the alpha that divided by r gives that scale."""
    pattern = meta.get(f"{comp}.alpha_pattern") or {}
    if not isinstance(pattern, dict):
        raise ConfigError(f"--lora: {comp}.alpha_pattern in its metadata is not a table")
    alpha = None
    for key, value in pattern.items():  # PEFT's keys are layer names or suffixes (never run as regular expressions)
        if layer == key or layer.endswith("." + str(key)):
            alpha = _number(value, f"{comp}.alpha_pattern[{str(key)[:40]}]")
            break
    if alpha is None and meta.get(f"{comp}.lora_alpha") is not None:
        alpha = _number(meta[f"{comp}.lora_alpha"], f"{comp}.lora_alpha")
    if meta.get(f"{comp}.use_rslora") is True:  # rank-stabilised LoRA: alpha / sqrt(r)
        alpha = (rank if alpha is None else alpha) * rank ** 0.5
    return alpha


def read(path: str | Path) -> tuple[dict[str, dict[str, Entry]], bool]:
    """{component: {layer: Entry}} and whether the layer names are kohya's (underscored, see resolve)."""
    path = LoRASpec(str(path)).checked_file()
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get(METADATA_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"--lora: '{path}' is not a readable safetensors file ({str(e)[:120]})") from None
    try:
        meta = json.loads(raw_meta) if raw_meta else {}
        meta = meta if isinstance(meta, dict) else {}
    except json.JSONDecodeError:
        raise ConfigError(f"--lora: '{path}': its {METADATA_KEY} metadata is not JSON") from None
    if not tensors:
        raise ConfigError(f"--lora: '{path}' holds no tensors")
    kohya = all(KOHYA_KEY.match(k) for k in tensors)
    parts: dict[str, dict[str, dict]] = {}
    for key, value in tensors.items():
        if kohya:
            m = KOHYA_KEY.match(key)
            prefix = next((p for p in KOHYA_PREFIXES if m["layer"].startswith(p)), None)
            if prefix is None:
                raise ConfigError(f"--lora: '{path}': kohya key '{key[:120]}' adapts no part condiff knows "
                                  f"({', '.join(KOHYA_PREFIXES)})")
            comp, layer = KOHYA_PREFIXES[prefix], m["layer"][len(prefix):]
            what = {"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}[m["what"]]
        else:
            m = PEFT_KEY.match(key)
            if m is None:
                raise ConfigError(f"--lora: '{path}': '{key[:120]}' is neither diffusers/PEFT's "
                                  f"(<part>.<layer>.lora_A.weight) nor kohya's (lora_unet_<layer>.lora_down.weight)")
            comp, layer, what = m["comp"], m["layer"], m["ab"]
        parts.setdefault(comp, {}).setdefault(layer, {})[what] = value
    out: dict[str, dict[str, Entry]] = {}
    for comp, layers in parts.items():
        for layer, got in layers.items():
            if "A" not in got or "B" not in got:
                raise ConfigError(f"--lora: '{path}': {comp}.{layer} has only {', '.join(sorted(got))} of A (down) and "
                                  f"B (up)")
            A, B = got["A"].float(), got["B"].float()
            if A.ndim < 2 or A.shape[0] < 1 or B.ndim != A.ndim or B.shape[1] != A.shape[0] or any(s != 1 for s in B.shape[2:]):
                raise ConfigError(f"--lora: '{path}': {comp}.{layer}: A {tuple(A.shape)} and B {tuple(B.shape)} do "
                                  f"not make a rank-r update")
            if not (A.isfinite().all() and B.isfinite().all()):
                raise ConfigError(f"--lora: '{path}': {comp}.{layer} holds NaN or infinite values")
            if "alpha" in got and got["alpha"].numel() != 1:
                raise ConfigError(f"--lora: '{path}': {comp}.{layer}.alpha is not one number")
            alpha = _number(float(got["alpha"]), f"{comp}.{layer}.alpha") if "alpha" in got else \
                _alpha(meta, comp, layer, A.shape[0])
            out.setdefault(comp, {})[layer] = Entry(A, B, alpha)
    return out, kohya


def resolve(entries: dict[str, Entry], names: list[str], kohya: bool, where: str) -> dict[str, Entry]:
    """The entries keyed by the model's own layer names; kohya's underscored names are matched to them."""
    if not kohya:
        return entries
    by_underscore = {n.replace(".", "_"): n for n in names}
    missing = [k for k in entries if k not in by_underscore]
    if missing:
        raise ConfigError(f"--lora: {where}: no layer of this model is named like kohya's '{missing[0][:100]}'"
                          f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    return {by_underscore[k]: e for k, e in entries.items()}


def write(path: str | Path, parts: dict[str, dict[str, Entry]], extra: dict[str, str] | None = None) -> None:
    """A LoRA in diffusers/PEFT's layout (loads with diffusers' load_lora_weights), with each part's rank and alpha
    in the metadata; written beside the target and renamed into place."""
    tensors, meta = {}, {}
    for comp, layers in parts.items():
        ranks = {e.rank for e in layers.values()}
        alphas = {(e.rank if e.alpha is None else e.alpha) for e in layers.values()}
        if len(ranks) != 1 or len(alphas) != 1:
            raise ValueError(f"{comp}: one rank and one alpha per part, got ranks {ranks} and alphas {alphas}")
        meta |= {f"{comp}.r": ranks.pop(), f"{comp}.lora_alpha": alphas.pop(), f"{comp}.target_modules": sorted(layers)}
        for layer, e in layers.items():
            tensors[f"{comp}.{layer}.lora_A.weight"] = e.A.detach().float().contiguous()
            tensors[f"{comp}.{layer}.lora_B.weight"] = e.B.detach().float().contiguous()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)} | (extra or {}))
    tmp.replace(path)



@dataclass(frozen=True)
class LoRASpec(AdapterFile):
    weight: float = 1.0
    weight_name: ClassVar[str] = WEIGHT_NAME
    option: ClassVar[str] = "--lora"
    kind: ClassVar[str] = "LoRA"
    max_bytes: ClassVar[int] = MAX_FILE_BYTES

    @classmethod
    def parse(cls, text: str) -> LoRASpec:
        """FILE or FILE:WEIGHT (the weight a number; a colon inside the path stays part of it)."""
        head, sep, tail = text.rpartition(":")
        if sep:
            try:
                weight = float(tail)
            except ValueError:
                return cls(text)
            if weight != weight or abs(weight) == float("inf"):
                raise ConfigError(f"--lora: the weight of '{head}' must be a finite number, got {tail}")
            return cls(head, weight)
        return cls(text)


def root(part: nn.Module) -> nn.Module:
    """The network a LoRA file's layer names start from: a foreign part's wrapped model, else the part itself."""
    return getattr(part, "lora_root", part)


def layer_names(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def check(parts: dict[str, nn.Module], spec: LoRASpec) -> dict[str, dict[str, Entry]]:
    """The file's entries matched to the pipeline's layers, every shape checked, before anything is changed."""
    entries, kohya = read(spec.path)
    matched = {}
    for comp, layers in entries.items():
        if comp not in parts:
            raise ConfigError(f"--lora: '{spec.path}' adapts a '{comp}' that this model has no part named "
                              f"(it has {', '.join(parts)})")
        net = root(parts[comp])
        modules = dict(net.named_modules())
        layers = resolve(layers, layer_names(net), kohya, f"'{spec.path}' ({comp})")
        for name, e in layers.items():
            layer = modules.get(name)
            if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                raise ConfigError(f"--lora: '{spec.path}' adapts {comp}.{name}, which this model has no Linear or "
                                  f"convolution layer named")
            shape = lora.Adapter(layer, e.rank, e.alpha)
            if shape.A.weight.shape != e.A.shape or shape.B.weight.shape != e.B.shape:
                raise ConfigError(f"--lora: '{spec.path}' does not fit {comp}.{name}: A {tuple(e.A.shape)}, "
                                  f"B {tuple(e.B.shape)} against the layer's {tuple(layer.weight.shape)} "
                                  f"(made for another model?)")
        matched[comp] = layers
    return matched


def apply(parts: dict[str, nn.Module], specs: list[LoRASpec]) -> None:
    """Attach each file's adapters with its weight (unmerged: weight 0 is the base model exactly). Every file is read
    and checked first; a bad one changes nothing."""
    checked = [check(parts, s) for s in specs]
    names = set()
    for spec, matched in zip(specs, checked):
        name = spec.name
        while name in names:
            name += "_"
        names.add(name)
        for comp, layers in matched.items():
            modules = dict(root(parts[comp]).named_modules())
            for layer_name, e in layers.items():
                layer = modules[layer_name]
                adapter = lora.Adapter(layer, e.rank, e.alpha)
                with torch.no_grad():
                    adapter.A.weight.copy_(e.A), adapter.B.weight.copy_(e.B)
                adapter.weight = spec.weight
                adapter.requires_grad_(False)
                lora.attach(layer, name, adapter)


def entries_of(net: nn.Module, name: str) -> dict[str, Entry]:
    """A trained adapter's A, B and alpha on each of its layers (for lora_format.write)."""
    return {layer: Entry(a.A.weight, a.B.weight, a.scaling * a.rank)
            for layer, a in lora.adapters(net, name).items()}
