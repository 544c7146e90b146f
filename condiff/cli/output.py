"""How every command that makes images writes them: one image to OUT; several to OUT-000.png, OUT-001.png, ...
(each with its own A1111 parameters) and a grid of all of them at OUT, as A1111 does."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..pipelines.requests import Generated
from ..png import check_writable, format_parameters, image_grid, save_png


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


def write_images(batches: Iterable[list[Generated]], out: str | Path, n: int, columns: int | None = None) -> list[Generated]:
    """Write each image as its batch arrives (printing its path), then the grid when there are several."""
    paths, done = output_paths(Path(out), n), []
    for batch in batches:
        for image in batch:
            save_png(image.pixels, paths[len(done)], image.infotext())
            print(paths[len(done)])
            done.append(image)
    if len(done) > 1:
        first = done[0]
        save_png(image_grid(np.stack([g.pixels for g in done]), columns=columns), Path(out),
                 format_parameters(first.prompt, first.negative_prompt, {**first.parameters, "Grid": len(done)}))
        print(out)
    return done
