"""LoRA (Hu et al. 2021): a frozen weight W gets a low-rank update, h = W x + (alpha / r) * B A x, with A (r x in)
and B (out x r), B initialised to zero so that a fresh adapter changes nothing.

An adapter hangs on its layer as a child (`<layer>.lora_adapters.<name>.A/.B`) and adds its term by a forward hook,
so the base model's own weights and state-dict keys stay as they were: a pipeline loads as usual, adapters are added
after, several at once, each with its own weight (scale), merged into W or kept apart:

    add_adapter(unet, "style", targets=["qkv", "proj"], rank=4)   # trainable A, B on every matching layer
    set_weight(unet, "style", 0.8)                                 # h = W x + 0.8 * (alpha / r) * B A x
    merge(unet) / unmerge(unet)                                    # W += / -= the weighted updates

Linear, Conv1d and Conv2d layers take adapters (PEFT's rule for a convolution: A is a convolution of the layer's
kernel, stride and padding into r channels, B a 1x1 convolution back). A target names a layer by its qualified
name or a dotted suffix of it, as PEFT's target_modules do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

ADAPTERS = "lora_adapters"  # the child ModuleDict an adapted layer holds its adapters in


@dataclass
class LoRAConfig:
    """A LoRA adapter to train (`"lora"` in a training config): its rank, alpha and the layers it adapts."""
    rank: int = 4
    alpha: float | None = None  # the update is scaled by alpha / rank; None: alpha = rank (scale 1)
    targets: list[str] = field(default_factory=lambda: ["qkv", "context_kv", "proj"])  # condiff UNet's attention

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"lora.targets must be a non-empty list of layer names, got {self.targets!r}")


class Adapter(nn.Module):
    """One layer's A and B; `scaling` is alpha / r, `weight` the user's multiplier (0 switches it off exactly)."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float | None):
        super().__init__()
        if isinstance(layer, nn.Linear):
            self.A = nn.Linear(layer.in_features, rank, bias=False)
            self.B = nn.Linear(rank, layer.out_features, bias=False)
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            conv = type(layer)
            self.A = conv(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                          bias=False)
            self.B = conv(rank, layer.out_channels, 1, bias=False)
        else:
            raise TypeError(f"LoRA adapts Linear, Conv1d and Conv2d layers, not {type(layer).__name__}")
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))  # PEFT's initialisation: A random, B zero
        nn.init.zeros_(self.B.weight)
        self.A.to(layer.weight), self.B.to(layer.weight)
        self.scaling = (rank if alpha is None else alpha) / rank
        self.weight, self.merged = 1.0, False

    @property
    def rank(self) -> int:
        return self.A.weight.shape[0]

    def delta(self) -> torch.Tensor:
        """The update to the layer's weight, (alpha / r) * B A, shaped like the weight."""
        a, b = self.A.weight, self.B.weight
        d = b.flatten(1) @ a.flatten(1)  # (out, in * kernel)
        return (d * self.scaling).view(b.shape[0], *a.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x)) * (self.scaling * self.weight)


def _hook(layer: nn.Module, inputs, output):
    for adapter in getattr(layer, ADAPTERS).values():
        if adapter.weight != 0 and not adapter.merged:
            output = output + adapter(inputs[0])
    return output


def matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def adapted_layers(root: nn.Module) -> dict[str, nn.Module]:
    """The layers of root that hold adapters, by qualified name."""
    return {n: m for n, m in root.named_modules() if isinstance(getattr(m, ADAPTERS, None), nn.ModuleDict)}


def attach(layer: nn.Module, name: str, adapter: Adapter) -> None:
    if not isinstance(getattr(layer, ADAPTERS, None), nn.ModuleDict):
        layer.add_module(ADAPTERS, nn.ModuleDict())
        layer.register_forward_hook(_hook)
    if name in getattr(layer, ADAPTERS):
        raise ValueError(f"a LoRA adapter named '{name}' is already loaded")
    getattr(layer, ADAPTERS)[name] = adapter


def add_adapter(root: nn.Module, name: str, targets: list[str], rank: int, alpha: float | None = None) -> list[str]:
    """A fresh adapter (B = 0: the output is unchanged) on every Linear/Conv layer of root that a target names;
    returns their names. ValueError when no layer matches."""
    chosen = [(n, m) for n, m in root.named_modules() if matches(n, targets)
              and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not chosen:
        raise ValueError(f"lora.targets {targets} name no Linear or convolution layer of this model")
    for n, m in chosen:
        attach(m, name, Adapter(m, rank, alpha))
    return [n for n, _ in chosen]


def adapters(root: nn.Module, name: str) -> dict[str, Adapter]:
    """The named adapter on each layer that has it, by the layer's qualified name."""
    return {n: getattr(m, ADAPTERS)[name] for n, m in adapted_layers(root).items() if name in getattr(m, ADAPTERS)}


def set_weight(root: nn.Module, name: str, weight: float) -> None:
    for a in adapters(root, name).values():
        if a.merged:
            raise ValueError(f"LoRA '{name}' is merged: unmerge it before changing its weight")
        a.weight = float(weight)


@torch.no_grad()
def merge(root: nn.Module) -> None:
    """Fold every unmerged adapter (times its weight) into its layer's weight: the same outputs, no extra compute."""
    for layer in adapted_layers(root).values():
        for a in getattr(layer, ADAPTERS).values():
            if not a.merged:
                layer.weight += (a.delta() * a.weight).to(layer.weight.dtype)
                a.merged = True


@torch.no_grad()
def unmerge(root: nn.Module) -> None:
    for layer in adapted_layers(root).values():
        for a in getattr(layer, ADAPTERS).values():
            if a.merged:
                layer.weight -= (a.delta() * a.weight).to(layer.weight.dtype)
                a.merged = False


def remove(root: nn.Module, name: str) -> None:
    """Take the named adapter off (unmerged first, so the base weights are back as they were)."""
    for layer in adapted_layers(root).values():
        held = getattr(layer, ADAPTERS)
        if name in held:
            if held[name].merged:
                with torch.no_grad():
                    layer.weight -= (held[name].delta() * held[name].weight).to(layer.weight.dtype)
            del held[name]
