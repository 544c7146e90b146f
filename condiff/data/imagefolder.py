"""A folder of images with captions in metadata.jsonl ({"file_name", "text", optional "boxes"}), as diffusers' imagefolder."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ..images import image_tensor, open_image, to_model_size
from ..nets.text import words_of


class DataError(ValueError):
    pass


def decode_image(source: Path | bytes, resolution: int) -> torch.Tensor | None:
    """A training image, centre-cropped to a square and resized -> (3, H, W) in [-1, 1]; None when it cannot be used:
    unreadable, truncated, empty, a mode with no RGB conversion, or more pixels than images.MAX_PIXELS (checked
    before decoding, so a decompression bomb costs nothing)."""
    try:
        return image_tensor(to_model_size(open_image(source), resolution))[0]
    except (ValueError, OSError):
        return None


def check_boxes(value, where: str) -> list[dict]:
    """A metadata row's optional "boxes": [{"phrase": str, "box": [x0, y0, x1, y1]}] with 0 <= x0 < x1 <= 1, likewise y."""
    if not isinstance(value, list):
        raise DataError(f"{where}: 'boxes' must be a list of {{\"phrase\", \"box\"}} objects")
    out = []
    for i, b in enumerate(value):
        box = b.get("box") if isinstance(b, dict) else None
        ok = (isinstance(b, dict) and isinstance(b.get("phrase"), str) and b["phrase"].strip()
              and isinstance(box, list) and len(box) == 4
              and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1 for c in box)
              and box[0] < box[2] and box[1] < box[3])
        if not ok:
            raise DataError(f"{where}: boxes[{i}] must be {{\"phrase\": text, \"box\": [x0, y0, x1, y1]}} "
                            f"with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {b!r}"[:300])
        out.append({"phrase": b["phrase"], "box": [float(c) for c in box]})
    return out


def check_phrases(boxes: list[dict], prompt: str, where: str) -> None:
    """DataError unless every box's phrase occurs in the prompt (case-insensitively)."""
    for b in boxes:
        if b["phrase"].lower().strip() not in prompt.lower():
            raise DataError(f"{where}: the phrase '{b['phrase'][:80]}' is not in the prompt")


def read_metadata(folder: Path) -> list[dict]:
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise DataError(f"missing file '{meta}' (one JSON object per line with 'file_name' and 'text')")
    rows = []
    try:
        text = meta.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"'{meta}' is not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"file_name": str(row["file_name"]), "text": str(row["text"])})
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deeply
            raise DataError(f"{meta}:{n}: expected a JSON object with 'file_name' and 'text'") from None
        if "boxes" in row:
            rows[-1]["boxes"] = check_boxes(row["boxes"], f"{meta}:{n}")
    if not rows:
        raise DataError(f"'{meta}' lists no images")
    return rows


class IndexedSource:
    """A data source of N captioned images read by index: batch(seed, step, size) samples with replacement, seeded
    by step. Subclasses set captions, box_lists, the RNG `name`, and `_decode(i)` -> (3, H, W) or None when the
    image will not decode; such a sample is skipped (the next good one takes its place) and counted in `skipped`
    (each undecodable sample once)."""

    name = "source"
    dropped = 0  # rows removed before training (an in-memory folder drops the images it cannot decode at load)

    @property
    def bad(self) -> set[int]:
        """Indices found undecodable; never decoded again."""
        return self.__dict__.setdefault("_bad", set())

    @property
    def skipped(self) -> int:
        return self.dropped + len(self.bad)

    def raw(self, seed: int, step: int, size: int) -> list[int]:
        rng = random.Random(f"{self.name}/{seed}/{step}")
        return [rng.randrange(len(self.captions)) for _ in range(size)]

    @staticmethod
    def shard(idx: list[int], sl: slice) -> list[int]:
        return list(idx)[sl]

    def _decode(self, i: int) -> torch.Tensor | None:
        raise NotImplementedError

    def resolve(self, idx: list[int]) -> tuple[list[int], list[torch.Tensor]]:
        """The samples of idx with each undecodable one replaced by the next good one (and counted)."""
        out, images = [], []
        for i in idx:
            for tries in range(len(self.captions)):
                j = (i + tries) % len(self.captions)
                image = None if j in self.bad else self._decode(j)
                if image is not None:
                    out.append(j), images.append(image)
                    break
                self.bad.add(j)
            else:
                raise DataError(f"no image of this {self.name} can be decoded")
        return out, images

    def materialize(self, idx: list[int], device="cpu") -> tuple[torch.Tensor, list[str]]:
        resolved, images = self.resolve(list(idx))
        self._last = (list(idx), resolved)  # boxes() of the same batch follow the replacements
        return torch.stack(images).to(device), [self.captions[i] for i in resolved]

    def boxes(self, idx: list[int]) -> list[list[dict]]:
        asked, resolved = getattr(self, "_last", (None, None))
        return [self.box_lists[i] for i in (resolved if asked == list(idx) else idx)]

    def batch(self, seed: int, step: int, size: int, device="cpu") -> tuple[torch.Tensor, list[str]]:
        return self.materialize(self.raw(seed, step, size), device)


class ImageFolder(IndexedSource):
    """The images are decoded once into memory when they fit in memory_limit_mb; a larger folder is read from disk
    batch by batch."""

    name = "folder"

    def __init__(self, path: str, resolution: int, memory_limit_mb: int = 2048):
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"missing folder '{folder}'")
        rows = read_metadata(folder)
        self.files, self.resolution = [folder / r["file_name"] for r in rows], resolution
        missing = next((f for f in self.files if not f.is_file()), None)
        if missing is not None:
            raise DataError(f"missing image '{missing}' (listed in {folder / 'metadata.jsonl'})")
        self.captions = [r["text"] for r in rows]
        self.box_lists = [r.get("boxes", []) for r in rows]  # WORLD.md v2's record; empty where a row has none
        self.streams = len(rows) * 3 * resolution ** 2 * 4 > memory_limit_mb * 2 ** 20
        self.images = None if self.streams else self._decode_all(folder)  # (N, 3, H, W)
        self.vocab = sorted({w for c in self.captions for w in words_of(c)})

    def _decode_all(self, folder: Path) -> torch.Tensor:
        """Every image decoded once; the rows of images that cannot be used are dropped and counted in `skipped`."""
        images = [decode_image(f, self.resolution) for f in self.files]
        keep = [i for i, im in enumerate(images) if im is not None]
        if not keep:
            raise DataError(f"no usable image in '{folder}' ({len(images)} listed, none decodes)")
        self.dropped = len(images) - len(keep)
        self.files, self.captions, self.box_lists = ([xs[i] for i in keep]
                                                     for xs in (self.files, self.captions, self.box_lists))
        return torch.stack([images[i] for i in keep])

    def _decode(self, i: int) -> torch.Tensor | None:
        return decode_image(self.files[i], self.resolution)

    def materialize(self, idx: list[int], device="cpu") -> tuple[torch.Tensor, list[str]]:
        if not self.streams:
            return self.images[idx].to(device), [self.captions[i] for i in idx]
        return super().materialize(idx, device)
