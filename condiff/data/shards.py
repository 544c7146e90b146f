"""WebDataset shards (tar files of `KEY.png|jpg|webp` + `KEY.txt` + optional `KEY.json` with {"boxes": [...]}), read
without loading them into memory, and written by `condiff data export-shards`.

Reading is by index: the tar headers are scanned once (no image bytes are read) into (shard, offset, size) records,
and a batch decodes only its own images. So a batch is still a function of (seed, step) alone, `--resume` is exact,
and each process of a launched run decodes only its shard of the batch. (The webdataset library's reader streams
sequentially with a shuffle buffer and cannot seek, which would make resume replay the stream and tie the data order
to the process count; its writer makes the shards, and its brace patterns name them.) A sample whose image cannot
be decoded is skipped: the next good sample takes its place and the skip is counted (`skipped`, in the progress line).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import torch
from PIL import Image

from ..nets.text import words_of
from .imagefolder import (
    DataError,
    IndexedSource,
    check_boxes,
    decode_image,
    read_metadata,
)
from .world import WorldStream

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def expand(pattern: str) -> list[Path]:
    """'shards-{000000..000009}.tar' -> the ten paths (braceexpand, as webdataset names shards); all must exist."""
    from braceexpand import braceexpand

    paths = [Path(p) for p in braceexpand(pattern)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"missing shard '{missing[0]}'" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return paths


def split_key(name: str) -> tuple[str, str]:
    """webdataset's grouping: 'dir/abc.seg.png' -> ('dir/abc', 'seg.png'); the key is up to the basename's first dot."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


class ShardDataset(IndexedSource):
    """Samples of WebDataset shards, indexed; batch(seed, step, size) samples with replacement, seeded by step."""

    name = "shards"

    def __init__(self, pattern: str, resolution: int):
        self.paths, self.resolution = expand(pattern), resolution
        self.records, self.captions, self.box_lists = [], [], []  # records: (shard no., image offset, size)
        for n, path in enumerate(self.paths):
            self._index(n, path)
        if not self.records:
            raise DataError(f"'{pattern}' holds no samples with an image and a .txt caption")
        self.vocab = sorted({w for c in self.captions for w in words_of(c)})
        self._files: dict[int, object] = {}

    def _index(self, n: int, path: Path) -> None:
        try:
            with tarfile.open(path, mode="r:") as tar:
                groups: dict[str, dict] = {}
                for m in tar:
                    if not m.isfile() or "." not in Path(m.name).name:
                        continue
                    key, ext = split_key(m.name)
                    groups.setdefault(key, {})[ext.lower()] = m
                for key, parts in groups.items():
                    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
                    if image is None or "txt" not in parts:
                        continue
                    caption = tar.extractfile(parts["txt"]).read().decode("utf-8").strip()
                    boxes = []
                    if "json" in parts:
                        meta = json.loads(tar.extractfile(parts["json"]).read())
                        boxes = check_boxes(meta.get("boxes", []), f"{path}:{key}.json")
                    self.records.append((n, image.offset_data, image.size))
                    self.captions.append(caption)
                    self.box_lists.append(boxes)
        except (tarfile.TarError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read shard '{path}': {e}") from None

    def _decode(self, i: int) -> torch.Tensor | None:
        n, offset, size = self.records[i]
        f = self._files.get(n) or self._files.setdefault(n, open(self.paths[n], "rb"))
        f.seek(offset)
        return decode_image(f.read(size), self.resolution)


def write_shards(samples, folder: str, per_shard: int, name: str = "shard") -> str:
    """Samples {"key", image ext: bytes, "txt", optional "json"} as folder/NAME-000000.tar, ... with webdataset's
    ShardWriter; returns the brace pattern that names them (what `--data` takes)."""
    import webdataset as wds

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with wds.ShardWriter(str(out / f"{name}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for sample in samples:
            sink.write({"__key__": sample.pop("key"), **sample})
            n += 1
    if not n:
        raise DataError("export-shards: nothing to write")
    last = (n - 1) // per_shard
    return str(out / (f"{name}-000000.tar" if last == 0 else f"{name}-{{000000..{last:06d}}}.tar"))


def world_samples(count: int, resolution: int, seed: int = 0):
    """World scenes as shard samples: PNG, caption and exact boxes."""
    world, k = WorldStream(resolution), 0
    for step in range((count + 255) // 256):
        raw = world.raw(seed, step, 256)
        images, captions = world.materialize(raw)
        for img, caption, b in zip(images, captions, world.boxes(raw)):
            if k == count:
                return
            px = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
            buf = io.BytesIO()
            Image.fromarray(px).save(buf, format="PNG")
            yield {"key": f"{k:08d}", "png": buf.getvalue(), "txt": caption, "json": json.dumps({"boxes": b})}
            k += 1


def folder_samples(path: str):
    """An image folder (metadata.jsonl) as shard samples, its image files' bytes as they are."""
    folder = Path(path)
    for k, row in enumerate(read_metadata(folder)):
        file = folder / row["file_name"]
        ext = file.suffix.lower().lstrip(".")
        if ext not in IMAGE_EXTS:
            raise DataError(f"{file}: not a {', '.join(IMAGE_EXTS)} image")
        sample = {"key": f"{k:08d}", ext: file.read_bytes(), "txt": row["text"]}
        if row.get("boxes"):
            sample["json"] = json.dumps({"boxes": row["boxes"]})
        yield sample
