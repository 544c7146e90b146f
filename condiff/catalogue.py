"""The shipped models: names -> folders inside the installed package, never relative to the working directory.

    model_folder("unclip")            # condiff/weights/unclip, wherever condiff is installed
    model_folder("runs/x/model")      # a path is a path
    model_folder(None)                # the default model
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"

DEFAULT_MODEL = WEIGHTS / "layout64"  # text -> boxes -> 64 px latent image (the first release's default: base32)
BASE32 = WEIGHTS / "base32"  # the 32 px pixel model with its 29-word vocabulary
INPAINT_MODEL = WEIGHTS / "inpaint64"  # GLIDE-style inpainting fine-tune of latent64: what inpaints for the default
UNCLIP_DECODER = WEIGHTS / "unclip64"  # decodes clip64 image embeddings (variations, interpolation, text diffs)
CLIP64 = WEIGHTS / "clip64"  # the CLIP the unCLIP decoder and prior read
CONTROLNETS = {"edges": WEIGHTS / "control_edges64", "segmentation": WEIGHTS / "control_segmentation64"}  # control kind -> the shipped ControlNet of the default model
DEFAULT_JUDGES = {"clip": WEIGHTS / "clip32", "noisy_clip": WEIGHTS / "noisy_clip32",
                  "classifier": WEIGHTS / "classifier32"}  # guidance and metric judges
EMOJI_CLIP = WEIGHTS / "clip32_emoji"  # the CLIP trained on the real emoji that judges the emoji model
FEW_STEP = {DEFAULT_MODEL: ((1, WEIGHTS / "pd64"), (8, WEIGHTS / "lcm64"))}  # a model -> its distilled copies, each
# with the most steps it draws: `--steps N` on the model (no sampler or CFG scale asked for) draws with the first copy
# whose bound is at least N (pd64: progressively distilled to 1 step; lcm64: consistency-distilled, 2 to 8 steps)
UPSAMPLERS = {128: WEIGHTS / "sr128", 256: WEIGHTS / "sr256"}  # output side -> the shipped stage that makes it
PACKAGE_PREFIX = ("condiff", "weights")  # configs written before the catalogue name shipped folders this way


def shipped_names() -> list[str]:
    """The names `--model NAME` accepts for the models shipped with this installation."""
    return sorted(p.name for p in WEIGHTS.iterdir() if p.is_dir()) if WEIGHTS.is_dir() else []


def model_folder(name: str | Path | None) -> Path:
    """A model argument as a folder: an existing path, a shipped model's name (`unclip`), or None for the default.

    `condiff/weights/NAME` (how older configs name a shipped folder) resolves inside the package as well.
    """
    if not name:
        return DEFAULT_MODEL
    path = Path(name)
    if path.parts[:2] == PACKAGE_PREFIX and len(path.parts) > 2:
        return WEIGHTS.joinpath(*path.parts[2:])
    if not path.exists() and len(path.parts) == 1 and (WEIGHTS / path).is_dir():
        return WEIGHTS / path
    return path


def few_step_model(model: Path, steps: int | None, sampler_or_scale_given: bool) -> Path:
    """The model that draws `--steps`: the first of a shipped model's distilled copies (FEW_STEP) that draws that
    many steps, when no sampler or guidance scale was asked for; else the model itself."""
    copies = FEW_STEP.get(Path(model).resolve(), ()) if Path(model).exists() else ()
    if steps is None or sampler_or_scale_given:
        return model
    return next((copy for most, copy in copies if steps <= most and copy.is_dir()), model)


def shipped_name(path: str | Path) -> str:
    """A shipped model's folder as `condiff/weights/NAME` (where the package is installed does not matter); any
    other path as given."""
    p = Path(path)
    try:
        return "/".join(PACKAGE_PREFIX + p.resolve().relative_to(WEIGHTS.resolve()).parts)
    except ValueError:
        return str(path)
