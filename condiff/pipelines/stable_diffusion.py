"""Stable Diffusion (1.x, 2.x) as a text2image pipeline: a CLIP text encoder, a UNet and a KL autoencoder that
formats/ loaded from a diffusers folder or an original single file, composed exactly as Text2ImagePipeline composes
condiff's own. What differs is only what SD users expect: the output size is chosen per run (`at_size`, pixels, a
multiple of 8), and the model is saved as a diffusers folder.

Seed parity: for a seed S, x_T = torch.randn((4, H/f, W/f), generator=Generator().manual_seed(S)), as diffusers'
pipeline draws it with generator=torch.Generator().manual_seed(S) (or one generator per image).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..diffusion.denoiser import DiffusionConfig
from ..diffusion.sampling import SamplingOptions
from .text2image import EditConvention, Text2ImagePipeline

SIZE_MULTIPLE = 8  # diffusers' check_inputs: height and width divisible by 8


def check_size(width: int | None, height: int | None, option: str = "--size") -> None:
    """ValueError unless each given side is a positive multiple of 8 (pixels)."""
    for name, side in ((f"{option}" if width == height else "--width", width), ("--height", height)):
        if side is not None and (side <= 0 or side % SIZE_MULTIPLE):
            raise ValueError(f"{name}: a Stable Diffusion model draws sides that are multiples of {SIZE_MULTIPLE} "
                             f"pixels, got {side}")


class SDPipeline(Text2ImagePipeline):
    kind = "stable_diffusion"
    variable_size = True  # the output size is a per-run choice (at_size), not the model's
    edit_convention = EditConvention.DIFFUSERS  # img2img and inpainting draw what diffusers' SD pipelines draw

    def __init__(self, text_encoder: nn.Module, unet: nn.Module, cfg: DiffusionConfig, autoencoder: nn.Module,
                 sampling: SamplingOptions, source: str | Path, writer=None):
        super().__init__(text_encoder, unet, cfg, autoencoder, sampling)
        self.writer = writer  # formats' diffusers-folder writer, given by the loader (pipelines import no format)
        self.source = Path(source)  # the folder or file the weights were read from (they stay there)
        side = unet.cfg.resolution * autoencoder.cfg.factor
        self.size = (side, side)  # (H, W) in pixels: the model's native size until at_size

    @property
    def family(self) -> str:
        """'SD1' / 'SD2' by the text encoder's width (768: CLIP ViT-L, 1024: OpenCLIP ViT-H), else 'SD-like'."""
        width = self.text_encoder.model.config.hidden_size
        return {768: "SD1", 1024: "SD2"}.get(width, "SD-like")

    def at_size(self, width: int | None = None, height: int | None = None) -> "SDPipeline":
        """Draw images of width x height pixels (one given: square; none: the model's native size)."""
        width, height = width or height, height or width
        check_size(width, height)
        if width is not None:
            self.size = (height, width)
        return self

    @property
    def resolution(self) -> int:
        return self.size[0]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H/f, W/f) of the latents the sampler denoises."""
        f = self.autoencoder.cfg.factor
        return (self.unet.cfg.in_channels, self.size[0] // f, self.size[1] // f)

    def save_pretrained(self, folder: str | Path, dtype=None) -> None:
        """Write a diffusers folder (model_index.json, unet/, vae/, ...) that diffusers itself reads."""
        if dtype is not None:
            raise ValueError("--fp16: a Stable Diffusion model is written as it is loaded (float32)")
        if self.writer is None:
            raise ValueError("this Stable Diffusion pipeline was not loaded by condiff.formats; it has no writer")
        self.writer(self, folder)
