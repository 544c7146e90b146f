"""Text -> boxes -> image: the layout prior samples (phrase, box) sets, and a grounded text-to-image model draws them.

A Text2ImagePipeline with one more component, `layout_prior`; both read the same frozen text encoder. Given
boxes= it draws those; otherwise image i's layout is sampled with seed i (so it, too, depends on its seed alone).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .. import components
from ..components import ComponentType
from ..nets.layout_prior import sample_layouts
from .base import ComponentSpec, PipelineSpec
from .text2image import Text2ImagePipeline


class Layout2ImagePipeline(Text2ImagePipeline):
    kind = "layout2image"

    def __init__(self, text_encoder: nn.Module, unet: nn.Module, cfg, layout_prior: nn.Module,
                 autoencoder: nn.Module | None = None, sampling=None, temperature: float = 0.4):
        super().__init__(text_encoder, unet, cfg, autoencoder, sampling)
        if not getattr(text_encoder, "frozen", False) or not unet.cfg.grounding_dim:
            raise ValueError("layout2image needs a frozen pretrained text encoder and a UNet with grounding layers")
        self.layout_prior, self.temperature = layout_prior, temperature
        self.parts["layout_prior"] = layout_prior
        self.spec.kind = self.kind
        self.spec.components.append(ComponentSpec("layout_prior", ComponentType.LAYOUT_PRIOR))

    @classmethod
    def from_parts(cls, parts: dict[str, nn.Module], spec: PipelineSpec) -> "Layout2ImagePipeline":
        base = spec.stage("base")
        return cls(parts["text_encoder"], parts[base.unet], base.diffusion, parts["layout_prior"],
                   parts.get("autoencoder"), base.sampling)

    @classmethod
    def compose(cls, text2image: str | Path, layout_prior: str | Path) -> "Layout2ImagePipeline":
        """A grounded text2image pipeline folder and a layout prior folder, as one pipeline."""
        t2i = Text2ImagePipeline.from_pretrained(text2image)
        prior = components.load("layout_prior", layout_prior)
        pipe = cls(t2i.text_encoder, t2i.unet, t2i.cfg, prior, t2i.autoencoder, t2i.defaults)
        pipe.spec.vocabulary = t2i.spec.vocabulary
        return pipe

    def layouts(self, prompts: list[str], seeds: list[int]) -> list[list[dict]]:
        return sample_layouts(self.layout_prior, self.text_encoder, prompts, seeds, self.temperature)

    def denoise(self, prompts, seeds, opts, *args, boxes=None, **kw):
        if boxes is None:
            boxes = self.layouts(prompts, seeds)
        return super().denoise(prompts, seeds, opts, *args, boxes=boxes, **kw)
