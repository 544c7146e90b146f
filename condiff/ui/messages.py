"""What the generation service takes and gives: its requests, limits, results and refusals (service.py re-exports
them), kept apart so that the service module stays about the work."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class RequestError(ValueError):
    """A request the service refuses; the message names the field and the problem."""


class Busy(Exception):
    """The queue is full (429) or the request waited past max_wait (503); retry after `retry_after` seconds."""

    def __init__(self, status: int, message: str, retry_after: int):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class Cancelled(Exception):
    """The client went away or the server is stopping: the request's sampling ended at a step boundary."""


@dataclass
class ServeLimits:
    """What one server accepts (`condiff serve --max-work --max-queue --max-wait`)."""
    max_work: int = 4_000_000  # images x sum over stages of steps x side^2: 4 images of 64 px at 244 steps; one 256 px
    # cascade image (50 + 20 + 20 steps at 64, 128, 256 px) is 1.8 M
    max_queue: int = 8  # requests running or waiting; the next one is refused with 429
    max_wait: float = 25.0  # seconds a request may wait for its turn before a 503

    def __post_init__(self):
        if isinstance(self.max_work, bool) or not isinstance(self.max_work, int) or self.max_work < 1:
            raise ValueError(f"--max-work: must be a positive integer, got {self.max_work!r}")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise ValueError(f"--max-queue: must be a positive integer, got {self.max_queue!r}")
        if not (isinstance(self.max_wait, (int, float)) and math.isfinite(self.max_wait) and self.max_wait > 0):
            raise ValueError(f"--max-wait: must be a positive number of seconds, got {self.max_wait!r}")


@dataclass
class Txt2ImgRequest:
    prompt: str
    negative_prompt: str = ""
    seed: int = -1  # -1: a random seed, reported back
    steps: int = 25
    guidance_scale: float = 3.0
    sampler: str = "ddim"  # a name of `condiff samplers` or its A1111 label ("DPM++ 2M")
    num_images: int = 1
    guide: str = "none"  # gradient guidance by a shipped judge: none, classifier, clip, clip_x0, contrastive
    guide_scale: float = 3.0
    guidance_rescale: float = 0.0  # phi of CFG rescale
    layout: list | None = None  # grounding: [{"phrase", "box": [x0, y0, x1, y1]}] in [0, 1]; None: the model's layout
    # stage predicts it (a layout2image model), or no boxes
    size: int = 0  # output side: 0 (or the model's) as the model makes it; 128, 256 through the upsampler cascade
    control: bytes | None = None  # ControlNet: an encoded map of the model's size (condiff control KIND IN --out MAP)
    control_kind: str = "edges"  # which shipped ControlNet reads it: edges or segmentation
    control_scale: float = 1.0  # multiplies the ControlNet's residuals
    control_guess: bool = False  # guess mode: the map in CFG's conditional branch only, residuals graded by depth
    literal: bool = False  # the prompt as written: no colour word the model never saw read as one it knows


@dataclass
class UpscaleRequest:
    """One square image enlarged 2x or 4x by the shipped upsamplers (resized to their 64 px input first)."""
    image: bytes
    prompt: str = ""  # its caption; empty: the unconditional upsampler
    scale: int = 2
    seed: int = -1
    steps: int = 20


@dataclass
class EditRequest:
    """img2img (strength) or inpainting (mask or box) of one encoded input image."""
    prompt: str
    image: bytes  # PNG, JPEG, ... of any size: centre-cropped and resized to the model's
    strength: float = 0.6  # img2img's denoising strength: 0 returns the input, 1 is text-to-image
    mask: bytes | None = None  # inpainting: an image of the input's size, white = repaint
    box: list[int] | None = None  # or [x0, y0, x1, y1] in pixels of the input, x1 and y1 exclusive
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 25
    guidance_scale: float = 3.0
    sampler: str = "ddim"


@dataclass
class GeneratedImage:
    png: bytes
    parameters: str
    seed: int
    pixels: np.ndarray = field(repr=False)
    layout: list | None = None  # the boxes it was drawn from
