"""Training data: every source yields (images (B, 3, H, W) in [-1, 1], captions) for a given step, deterministically.

A source has raw(seed, step, size) -> cheap picklable description of the batch (made by loader workers),
materialize(raw, device) -> (images, captions) on the training device, and batch() = both.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .imagefolder import ImageFolder
from .shards import ShardDataset
from .world import WorldStream


class Source(str, enum.Enum):
    WORLD = "world"
    IMAGEFOLDER = "imagefolder"
    SHARDS = "shards"  # WebDataset tar shards, read by index (data/shards.py)


@dataclass
class DataConfig:
    source: Source = Source.WORLD
    path: str | None = None  # image folder with metadata.jsonl (imagefolder), or a shard pattern (shards)
    resolution: int = 32
    exclude_held_out: bool = True  # world: never show the held-out (colour, shape) pairs
    paraphrase: float = 0.0  # world: the share of captions said by a training-list paraphrase (world/language.py)
    paraphrase_list: int = 1  # world: which version of the training list (1: one synonym a word; 2: several)
    memory_limit_mb: int = 2048  # imagefolder: decode into memory up to this size, else read from disk per batch


def source_of(path: str) -> Source:
    """`--data`'s source: WebDataset shards for a .tar path or brace pattern, else an image folder."""
    return Source.SHARDS if path.endswith(".tar") or (".tar" in path and "{" in path) else Source.IMAGEFOLDER


def make_dataset(cfg: DataConfig):
    if Source(cfg.source) is Source.WORLD:
        return WorldStream(cfg.resolution, cfg.exclude_held_out, cfg.paraphrase, cfg.paraphrase_list)
    if not cfg.path:
        raise ValueError(f"data.path is required for source '{Source(cfg.source).value}'")
    if Source(cfg.source) is Source.SHARDS:
        return ShardDataset(cfg.path, cfg.resolution)
    return ImageFolder(cfg.path, cfg.resolution, cfg.memory_limit_mb)
