"""Atomic file and folder writes: a reader never sees a half-written file, and a crash leaves the old one."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """The one way condiff writes a file: write(tmp) fills a temporary file beside `path`, which is flushed to disk
    and renamed over `path`. A full disk, a crash or Ctrl-C mid-write leaves the old file, never half a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide images and weights from other users
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only after the swap."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


WEIGHT_SUFFIXES = (".safetensors",)


def hash_cache() -> Path:
    """Where model hashes are remembered: $XDG_CACHE_HOME/condiff/hashes.json (~/.cache by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "condiff" / "hashes.json"


def weight_files(path: Path) -> list[Path]:
    """The weight files that make a model: the file itself, or a folder's .safetensors files in path order."""
    path = Path(path)
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)


def model_hash(path: Path) -> str:
    """The first 10 hex digits of the SHA-256 of a model's weights, as A1111 writes `Model hash` (for a single file
    its 'AutoV2' hash, the same digits). A folder hashes its .safetensors files in path order. Hashes are cached in
    hash_cache() by path, size and modification time (as A1111 caches them), so a 4 GB checkpoint is read once."""
    import hashlib
    import json

    cache, files = hash_cache(), weight_files(path)
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: hashed again and written anew
        known = {}
    known = known if isinstance(known, dict) else {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    short = digest.hexdigest()[:10]
    try:
        atomic_write_bytes(cache, json.dumps(dict(list(known.items())[-999:]) | {key: short}).encode())
    except OSError:  # a read-only home: the hash is still right, only not remembered
        pass
    return short


def short_hash(file: Path, addnet: bool = False) -> str:
    """A1111's short hash of a LoRA or an embedding (12 hex digits of a SHA-256): of the whole file, or with addnet
    (a LoRA in safetensors, as A1111's `Lora hashes` and Civitai give it) of the tensor data after the header."""
    import hashlib

    digest = hashlib.sha256()
    with open(file, "rb") as f:
        if addnet:
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        for chunk in iter(lambda: f.read(2 ** 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]
