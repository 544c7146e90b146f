"""How every command that makes images writes them: one image to OUT; several to OUT-000.png, OUT-001.png, ...
(each with its own A1111 parameters) and a grid of all of them at OUT, as A1111 does."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from ..pipelines.requests import Generated
from ..png import check_writable, format_parameters, image_grid, save_png


MAX_GRID = 256  # images in the grid at OUT; a call that makes more writes them all as files, the grid shows the first


def output_paths(out: Path, n: int) -> list[Path]:
    """The files n images go to: [out] for one, else out-000.png ... plus out (the grid) last."""
    out = Path(out)
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix or '.png'}") for i in range(n)] + [out]


def checked_paths(out: str | Path, n: int) -> list[Path]:
    """output_paths, each checked writable before any work starts."""
    paths = output_paths(Path(out), n)
    check_writable(paths)
    return paths


def write_images(batches: Iterable[list[Generated]], out: str | Path, n: int, columns: int | None = None) -> list[Path]:
    """Write each image as its batch arrives (printing its path), then the grid when there are several; returns the
    paths written. Only the grid's images are kept (at most MAX_GRID), so memory does not grow with n."""
    paths, done, grid, first = output_paths(Path(out), n), [], [], None
    for batch in batches:
        for image in batch:
            save_png(image.pixels, paths[len(done)], image.infotext())
            print(paths[len(done)])
            done.append(paths[len(done)])
            first = first or image
            if len(grid) < MAX_GRID:
                grid.append(image.pixels)
    if len(done) > 1:
        save_png(image_grid(np.stack(grid), columns=columns), Path(out),
                 format_parameters(first.prompt, first.negative_prompt, {**first.parameters, "Grid": len(grid)}))
        print(out)
        if len(done) > MAX_GRID:
            print(f"the grid at {out} shows the first {MAX_GRID} of {len(done)} images", file=sys.stderr)
    return done
