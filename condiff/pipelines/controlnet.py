"""A pipeline under a ControlNet: control maps made from images or read from files, and the pipeline's denoiser
swapped for the controlled UNet (`generate --control MAP`).

    pipe = with_control(Text2ImagePipeline.from_pretrained(...), components.load("controlnet", folder), scale=1.0)
    pipe(prompts, seeds, opts, control_map=maps, boxes=[[]] * n)   # the map goes to both branches of CFG
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..images import image_tensor, open_image, to_model_size
from ..nets.controlnet import (MAP_CHANNELS, SEGMENT_COLOURS, ControlKind, ControlledUNet, ControlNet,
                               ControlNetConfig, edge_map, segmentation_map)
from ..world.grammar import SHAPES
from ..world.oracle import DetectedObject, detect_silhouettes
from .text2image import Text2ImagePipeline


def control_maps(images: torch.Tensor, kind: ControlKind) -> torch.Tensor:
    """Control maps (B, k, H, W) in [0, 1] of images (B, 3, H, W) in [-1, 1]."""
    if ControlKind(kind) is ControlKind.EDGES:
        return edge_map(images)
    if ControlKind(kind) is ControlKind.SEGMENTATION:
        return segmentation_map(images)
    raise ValueError(f"unknown control kind '{kind}'")


def map_from_image(img, kind: ControlKind, side: int) -> torch.Tensor:
    """The control map (1, k, side, side) in [0, 1] of a PIL image, centre-cropped and resized to side first (what
    `condiff control KIND IN` writes, and the web page's 'make the map from this image')."""
    return control_maps(image_tensor(to_model_size(img, side)), kind)


def map_objects(m: torch.Tensor, kind: ControlKind) -> list[DetectedObject]:
    """The objects a control map (1, k, H, W) in [0, 1] draws, each with its box and form: an edge map's closed
    outlines (bridged over one-pixel gaps, then filled), or a segmentation map's regions (the form its colour names)."""
    if ControlKind(kind) is ControlKind.EDGES:
        edges = m[0, 0].cpu().numpy() > 0.5
        return detect_silhouettes(ndimage.binary_erosion(ndimage.binary_fill_holes(ndimage.binary_dilation(edges)),
                                                         border_value=1))
    pixels = m[0].permute(1, 2, 0).cpu().numpy() * 255
    found = []
    for form, colour in SEGMENT_COLOURS.items():
        mask = np.abs(pixels - np.array(colour)).max(-1) < 32
        found += [replace(o, shape=form) for o in detect_silhouettes(mask)]
    return sorted(found, key=lambda o: (o.cx, o.cy))


def map_grounding(objects: list[DetectedObject], layout: list[dict]) -> list[dict]:
    """The layout stage's boxes moved onto a control map's objects, so that a grounded model binds each phrase (its
    colour) to the outline it belongs to. Each phrase takes the free object of the form it names nearest its own box;
    then the phrases naming no such form take the nearest free object of any form; phrases left over are dropped."""
    free, placed = list(objects), {}

    def take(i: int, candidates: list[DetectedObject]) -> None:
        x0, y0, x1, y1 = layout[i]["box"]
        o = min(candidates, key=lambda o: (o.cx - (x0 + x1) / 2) ** 2 + (o.cy - (y0 + y1) / 2) ** 2)
        free.remove(o)
        placed[i] = {"phrase": layout[i]["phrase"], "box": [round(v, 4) for v in (o.cx - o.w / 2, o.cy - o.h / 2,
                                                                                    o.cx + o.w / 2, o.cy + o.h / 2)]}
    for i, item in enumerate(layout):
        forms = set(item["phrase"].lower().split()) & set(SHAPES)
        same = [o for o in free if o.shape in forms]
        if same:
            take(i, same)
    for i in range(len(layout)):
        if i not in placed and free:
            take(i, free)
    return [placed[i] for i in sorted(placed)]


def map_png(m: torch.Tensor) -> np.ndarray:
    """A map (1, k, H, W) in [0, 1] as (H, W, 3) uint8 pixels, a 1-channel map repeated in grey."""
    pixels = (m[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.repeat(pixels, 3, -1) if pixels.shape[-1] == 1 else pixels


def read_control_map(path: str | Path | bytes, kind: ControlKind, side: int, what: str = "--control") -> torch.Tensor:
    """A control map file or its bytes (a PNG as `condiff control` writes it) -> (1, k, side, side) in [0, 1];
    ValueError in one line, naming `what`, when it is not an image or not side x side pixels."""
    name = "the image" if isinstance(path, bytes) else f"'{path}'"
    img = open_image(path, what)  # its errors name `what` in one line (never the bytes)
    if img.size != (side, side):
        raise ValueError(f"{what}: {name} is {img.size[0]}x{img.size[1]} pixels; this model's control maps are "
                         f"{side}x{side} (make one with `condiff control {ControlKind(kind).value} IN --out MAP`)")
    x = (image_tensor(img) + 1) / 2  # (1, 3, side, side) in [0, 1]
    return x[:, :1] if MAP_CHANNELS[ControlKind(kind)] == 1 else x


MAX_SCALE = 2.0  # the largest control scale a request may ask for


def checked_map(source: str | Path | bytes, kind: ControlKind, pipe: Text2ImagePipeline, scale: float,
                what: str = "--control") -> torch.Tensor:
    """The control map for pipe, everything checked first: a finite scale in [0, MAX_SCALE], a condiff model (not a
    Stable Diffusion one), an image file of the model's side. ValueError in one line naming `what`."""
    if not 0 <= float(scale) <= MAX_SCALE:  # NaN fails too
        raise ValueError(f"{what}{'-' if what.startswith('--') else '_'}scale: must be between 0 and {MAX_SCALE}, "
                         f"got {scale}")
    if getattr(pipe, "variable_size", False):
        raise ValueError(f"{what}: ControlNets apply to condiff models so far, not to Stable Diffusion")
    return read_control_map(source, kind, pipe.resolution, what)


def fits(cfg: ControlNetConfig, pipe: Text2ImagePipeline) -> bool:
    """Whether a ControlNet of this config was made for pipe's model (its UNet's architecture and side)."""
    norm = lambda c: {k: tuple(v) if isinstance(v, list) else v for k, v in vars(c).items()}  # noqa: E731
    return cfg.map_resolution == pipe.resolution and norm(cfg.unet) == norm(pipe.unet.cfg)


def with_control(pipe: Text2ImagePipeline, controlnet: ControlNet) -> Text2ImagePipeline:
    """pipe, its denoiser reading control_map= (control_scale=, control_guess=) through the ControlNet; without a
    map it draws as before. ValueError in one line for a ControlNet made for another model."""
    if not fits(controlnet.cfg, pipe):
        raise ValueError("--control-model: this ControlNet was made for another model (its UNet's architecture or "
                         f"side differs: {controlnet.cfg.map_resolution} px)")
    controlnet.to(pipe.device)
    pipe.denoiser.net = ControlledUNet(pipe.unet, controlnet)
    return pipe
