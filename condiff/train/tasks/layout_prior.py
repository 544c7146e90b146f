"""Training the layout prior (nets/layout_prior.py) on captions with boxes: the world's exact ones, or a folder's.

A target is, per object, the caption-token span of its phrase and its box. The span is found by matching the
phrase's words in the caption (without its article, singular or plural: "a blue square" in "three blue squares");
objects that share a span (counting) are ordered left to right, then top to bottom. A box whose phrase is not in
its caption is left out of that caption's target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ... import components
from ...config import ConfigError
from ...data import DataConfig
from ...nets.layout_prior import LayoutPrior, LayoutPriorConfig, target_sequence
from ...nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder
from ..config import defaults, InitConfig, OptimConfig, RunSettings
from ..task import TaskDefaults
from .text2image import FrozenTextCache



@dataclass
class LayoutPriorTrainConfig(RunSettings):
    model: str = "layout_prior"
    seed: int = 0
    data: DataConfig = defaults(DataConfig, resolution=16)  # boxes do not need big renders
    text: PretrainedTextConfig = field(default_factory=PretrainedTextConfig)
    prior: LayoutPriorConfig = field(default_factory=LayoutPriorConfig)
    optim: OptimConfig = defaults(OptimConfig, steps=3000, batch_size=128, lr=5e-4, warmup_steps=200,
                                  ema_decay=0.999, p_uncond=0.0)
    init: InitConfig = field(default_factory=InitConfig)  # from_model: a layout prior, or a pipeline that has one


def pretrained_prior(cfg: LayoutPriorTrainConfig) -> LayoutPrior:
    """init.from_model's layout prior (its own folder, or a layout2image pipeline's); its config must be the run's."""
    folder = Path(cfg.init.from_model)
    folder = folder / "layout_prior" if (folder / "pipeline.json").is_file() else folder
    if not (folder / "config.json").is_file():
        raise ConfigError(f"init.from_model: '{cfg.init.from_model}' holds no layout prior")
    prior = components.load("layout_prior", folder)
    if prior.cfg != cfg.prior:
        raise ConfigError(f"init.from_model: its layout prior's config differs from this run's prior: {prior.cfg}")
    return prior


def phrase_span(caption: str, phrase: str, offsets: list[tuple[int, int]], cursor: int) -> tuple[int, int, int] | None:
    """(first token, last token, end char) of the phrase's words in the caption at or after cursor, else anywhere."""
    low = caption.lower()
    words = phrase.lower().split()
    bare = " ".join(words[1:]) if words and words[0] in ("a", "an") else " ".join(words)
    for text in (phrase.lower(), bare + "s", bare):
        for begin in (cursor, 0):
            at = low.find(text, begin)
            if at >= 0 and text:
                end = at + len(text)
                toks = [i for i, (s, e) in enumerate(offsets) if e > s and s >= at and e <= end]
                if toks:
                    return toks[0], toks[-1], end
    return None


def targets(captions: list[str], box_lists: list[list[dict]], tokenizer, cfg: LayoutPriorConfig) -> torch.Tensor:
    """(B, length) training sequences."""
    rows = []
    for caption, boxes in zip(captions, box_lists):
        offsets = tokenizer.tok.encode(caption).offsets
        found, cursor = [], 0
        for b in boxes:
            span = phrase_span(caption, b["phrase"], offsets, cursor)
            if span is not None:
                found.append(((span[0], span[1]), b["box"]))
                cursor = span[2]
        found.sort(key=lambda f: (f[0][0], f[1][0], f[1][1]))  # caption order; a shared span: left to right
        rows.append(target_sequence(cfg, [f[0] for f in found], [f[1] for f in found]))
    return torch.tensor(rows, dtype=torch.long)


class LayoutPriorTask(TaskDefaults):
    name, config_cls = "layout_prior", LayoutPriorTrainConfig

    def build(self, cfg: LayoutPriorTrainConfig, data, resume: bool) -> nn.Module:
        if not hasattr(data, "boxes"):
            raise ConfigError("the layout prior trains on boxes; this data source has none")
        cfg.prior.context_dim, cfg.prior.max_text = cfg.text.width, cfg.text.max_length
        model = LayoutPrior(cfg.prior)
        if cfg.init.from_model and not resume:
            model.load_state_dict(pretrained_prior(cfg).state_dict())
        return model

    def prepare(self, run) -> None:
        run.state["text"] = FrozenTextCache(PretrainedTextEncoder(run.cfg.text).to(run.device))

    def extras(self, run, raw) -> dict:
        return {"box_lists": run.data.boxes(raw)}

    def loss(self, run, images: torch.Tensor, captions: list[str], box_lists: list) -> torch.Tensor:
        text = run.state["text"]
        cond = text.encode(captions, run.device)
        seq = targets(captions, box_lists, text.encoder.tokenizer, run.cfg.prior).to(run.device)
        return run.model.loss(seq, cond["context"], cond["context_mask"])

    def export(self, run, folder: Path) -> None:
        components.save(run.ema.model, folder)
