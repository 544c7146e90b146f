"""ControlNet (Zhang, Rao & Agrawala 2023): control a frozen text-to-image UNet by an image (an edge map, a
segmentation), through a trainable copy of its encoder and middle block.

    c_f = stem(control map)                              # a small conv stack, pixels -> the UNet's input side
    h_i, m = copy.encode(x_t + ..., hint=c_f)             # the copy's skips and middle output
    eps = unet(x_t, t, control=[Z_i(h_i)..., Z_m(m)])    # added to the frozen UNet's skips and middle

Every Z is a 1x1 convolution initialised to zero (and so is the stem's last layer), so before training the controlled
UNet is the frozen UNet exactly. The maps: `edges` (a Canny-like detector: thin binary edges, 1 channel) and
`segmentation` (each object's pixels in its class's colour, SEGMENT_COLOURS, on black; 3 channels).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..world.oracle import detect_regions
from .unet import UNet, UNetConfig, zero


class ControlKind(str, enum.Enum):
    EDGES = "edges"
    SEGMENTATION = "segmentation"


MAP_CHANNELS = {ControlKind.EDGES: 1, ControlKind.SEGMENTATION: 3}
SEGMENT_COLOURS = {"circle": (220, 20, 60), "square": (70, 130, 180), "triangle": (250, 170, 30),
                   "unknown": (128, 128, 128)}  # one colour per object class (Cityscapes' palette); background black


@dataclass
class ControlNetConfig:
    kind: ControlKind = ControlKind.EDGES
    hint_channels: tuple[int, ...] = (16, 32)  # the stem's widths; a stride-2 step between each pair and to the UNet
    map_resolution: int = 64  # side in pixels of the control map (the base model's image side)
    unet: UNetConfig = field(default_factory=UNetConfig)  # the controlled UNet's config (the copy's architecture)


def skip_channels(cfg: UNetConfig) -> list[int]:
    """The channels of each of the UNet's skip connections, in the encoder's order (as UNet builds them)."""
    mc, out = cfg.model_channels, [cfg.model_channels]
    for level, mult in enumerate(cfg.channel_mult):
        out += [mult * mc] * cfg.num_res_blocks
        if level != len(cfg.channel_mult) - 1:
            out.append(mult * mc)
    return out


def hint_stem(cfg: ControlNetConfig) -> nn.Sequential:
    """Control map (B, k, S, S) -> (B, model_channels, s, s): convolutions with SiLU, stride 2 until the UNet's side,
    the last one zero-initialised."""
    factor = cfg.map_resolution // cfg.unet.resolution
    downs = int(math.log2(factor))
    if 2 ** downs != factor:
        raise ValueError(f"control map side {cfg.map_resolution} is not the UNet's side {cfg.unet.resolution} times a "
                         "power of two")
    widths = list(cfg.hint_channels)
    layers: list[nn.Module] = [nn.Conv2d(MAP_CHANNELS[ControlKind(cfg.kind)], widths[0], 3, padding=1), nn.SiLU()]
    for i in range(downs):
        a, b = widths[min(i, len(widths) - 1)], widths[min(i + 1, len(widths) - 1)]
        layers += [nn.Conv2d(a, a, 3, padding=1), nn.SiLU(), nn.Conv2d(a, b, 3, padding=1, stride=2), nn.SiLU()]
    layers.append(zero(nn.Conv2d(widths[min(downs, len(widths) - 1)], cfg.unet.model_channels, 3, padding=1)))
    return nn.Sequential(*layers)


class ControlNet(nn.Module):
    """net(x_t, t, control_map, **cond) -> the residuals UNet.forward(control=...) adds: one per skip, then middle."""

    def __init__(self, cfg: ControlNetConfig):
        super().__init__()
        self.cfg = cfg
        self.copy = UNet(cfg.unet)
        self.copy.outputs, self.copy.out = nn.ModuleList(), nn.Identity()  # the encoder and middle only
        self.stem = hint_stem(cfg)
        chans = skip_channels(cfg.unet)
        self.zeros = nn.ModuleList(zero(nn.Conv2d(c, c, 1)) for c in chans)
        self.middle_zero = zero(nn.Conv2d(chans[-1], chans[-1], 1))

    @classmethod
    def from_unet(cls, unet: UNet, cfg: ControlNetConfig) -> "ControlNet":
        """A ControlNet whose copy starts as the UNet's encoder and middle (the paper's initialisation)."""
        net = cls(cfg)
        state = {k: v for k, v in unet.state_dict().items() if not k.startswith(("outputs.", "out."))}
        net.copy.load_state_dict(state)
        return net

    def forward(self, x, t, control_map: torch.Tensor, **cond) -> list[torch.Tensor]:
        x, emb, c = self.copy.prepare(x, t, **cond)
        hs, middle = self.copy.encode(x, emb, c, hint=self.stem(control_map.to(x.dtype)))
        return [z(h) for z, h in zip(self.zeros, hs)] + [self.middle_zero(middle)]


class ControlledUNet(nn.Module):
    """The frozen UNet under a ControlNet: net(x_t, t, control_map=, control_scale=, control_guess=, **cond). Without
    a control_map (or at scale 0) it is the UNet exactly. It keeps the UNet's cfg (the pipeline reads it).

    control_scale multiplies the residuals; control_guess is the paper's guess mode, whose residuals grow
    geometrically with depth, from 0.1 x scale at the first skip to scale at the middle (the pipeline then gives the
    map to CFG's conditional branch only: control_on (B,) bool marks the rows it applies to)."""

    def __init__(self, unet: nn.Module, controlnet: ControlNet):
        super().__init__()
        self.unet, self.controlnet = unet, controlnet
        self.cfg = unet.cfg

    def forward(self, x, t, control_map: torch.Tensor | None = None, control_on: torch.Tensor | None = None,
                control_scale: float = 1.0, control_guess: bool = False, **cond):
        if control_map is None or control_scale == 0 or (control_on is not None and not control_on.any()):
            return self.unet(x, t, **cond)
        rows = None if control_on is None or control_on.all() else control_on.nonzero()[:, 0]
        pick = (lambda v: v[rows] if isinstance(v, torch.Tensor) and len(v) == len(x) else v) if rows is not None \
            else (lambda v: v)
        residuals = self.controlnet(pick(x), pick(t), pick(control_map), **{k: pick(v) for k, v in cond.items()})
        scales = torch.logspace(-1, 0, len(residuals)).tolist() if control_guess else [1.0] * len(residuals)
        residuals = [r * (control_scale * s) for r, s in zip(residuals, scales)]
        if rows is not None:  # the ControlNet ran on the marked rows only; the others get no residuals
            residuals = [r.new_zeros(len(x), *r.shape[1:]).index_copy(0, rows, r) for r in residuals]
        return self.unet(x, t, control=residuals, **cond)


# --- control maps ---------------------------------------------------------------------------------------------------

def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma ** 2))
    k = (k / k.sum()).to(x.device)
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def edge_map(images: torch.Tensor, low: float = 0.08, high: float = 0.16, sigma: float = 0.7) -> torch.Tensor:
    """Canny's edges of images (B, 3, H, W) in [-1, 1] -> (B, 1, H, W) in {0, 1}: Gaussian blur, Sobel gradients
    (per colour channel, the strongest channel's), non-maximum suppression across the edge, and hysteresis (pixels
    above `low` kept where connected to one above `high`; both in units of [0, 1] intensity per pixel)."""
    x = _gaussian_blur((images.float().clamp(-1, 1) + 1) / 2, sigma)
    B, C, H, W = x.shape
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device) / 4
    flat = F.pad(x.reshape(B * C, 1, H, W), (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(flat, sx.view(1, 1, 3, 3)), F.conv2d(flat, sx.t().contiguous().view(1, 1, 3, 3))
    mag = (gx ** 2 + gy ** 2).sqrt().view(B, C, H, W)
    best = mag.argmax(1, keepdim=True)
    gx, gy = gx.view(B, C, H, W).gather(1, best), gy.view(B, C, H, W).gather(1, best)
    mag = mag.gather(1, best)  # (B, 1, H, W)
    angle = torch.remainder(torch.atan2(gy, gx) * 180 / math.pi, 180)
    sector = torch.round(angle / 45).long() % 4  # 0: horizontal gradient, 1: 45 degrees, 2: vertical, 3: 135
    padded = F.pad(mag, (1, 1, 1, 1))
    offsets = [((0, 1), (0, -1)), ((1, 1), (-1, -1)), ((1, 0), (-1, 0)), ((1, -1), (-1, 1))]
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for s, ((dy1, dx1), (dy2, dx2)) in enumerate(offsets):
        n1 = padded[:, :, 1 + dy1:1 + dy1 + H, 1 + dx1:1 + dx1 + W]
        n2 = padded[:, :, 1 + dy2:1 + dy2 + H, 1 + dx2:1 + dx2 + W]
        keep |= (sector == s) & (mag >= n1) & (mag >= n2)
    thin = mag * keep
    strong, weak = thin >= high, thin >= low
    edges = strong
    for _ in range(H * W):  # hysteresis: grow the strong edges through weak pixels until nothing changes
        grown = weak & (F.max_pool2d(edges.float(), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.float()


def segmentation_map(images: torch.Tensor) -> torch.Tensor:
    """Semantic segmentation of images (B, 3, H, W) in [-1, 1] -> (B, 3, H, W) in [0, 1]: every object the oracle
    reads (its pixels, anti-aliased fringe included) painted in its class's SEGMENT_COLOURS, the background black."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    maps = np.zeros(pixels.shape, dtype=np.uint8)
    for b, px in enumerate(pixels.numpy()):
        for obj, region in detect_regions(px):
            maps[b][region] = SEGMENT_COLOURS[obj.shape]
    return torch.from_numpy(maps).permute(0, 3, 1, 2).float().div(255).to(images.device)
