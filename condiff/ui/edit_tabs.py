"""The page's image-to-image, inpainting and upscaling handlers and their shared controls, and the helpers the
Text to image tab shares with them (a PIL image as PNG bytes, its first result, a brush mask)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from ..diffusion.sampling import SAMPLER_INFO
from ..pipelines.controlnet import map_from_image, map_png
from .service import Busy, Cancelled, EditRequest, GenerationService, RequestError, UpscaleRequest

SAMPLER_LABELS = [label for label, _ in SAMPLER_INFO.values()]


def _png_bytes(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _control_png(service: GenerationService, image, make_map: bool, kind: str = "edges") -> bytes | None:
    """The Text to image tab's control map as PNG bytes: the uploaded image itself, or (make_map) its map of this
    kind (edges, segmentation) at the model's side; None without an image."""
    if image is None:
        return None
    if not make_map:
        return _png_bytes(image)
    from PIL import Image

    return _png_bytes(Image.fromarray(map_png(map_from_image(image, kind, service.pipe.resolution))))


def _first_result(text: str, out_dir: Path) -> tuple[bytes | None, str]:
    """(PNG bytes, prompt) of the Text to image tab's first result, from its hidden JSON [path, prompt]; only a file
    this server wrote (under out_dir) is read, whatever a client puts in that field."""
    import json

    try:
        path, prompt = json.loads(text or "null") or (None, "")
    except (ValueError, TypeError):
        return None, ""
    if path is None or not isinstance(prompt, str):
        return None, ""
    path = Path(path).resolve()
    if not path.is_file() or Path(out_dir).resolve() not in path.parents:
        raise gr.Error("image: not a result of this server")
    return path.read_bytes(), prompt


def _brush_mask(layers, size) -> bytes | None:
    """The ImageEditor's brush layers as one mask (white where any layer is painted), or None if nothing is."""
    from PIL import Image

    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        if layer is not None:
            a = np.asarray(layer.convert("RGBA"))
            if a.shape[:2] == painted.shape:
                painted |= a[..., 3] > 0
    return _png_bytes(Image.fromarray(painted.astype(np.uint8) * 255)) if painted.any() else None


def make_edit_handlers(service: GenerationService, out_dir: Path):
    def run(req: EditRequest, inpaint: bool):
        try:
            im = service.edit(req, inpaint)
        except (RequestError, Busy, Cancelled, ValueError, TypeError) as e:
            raise gr.Error(str(e)) from None
        folder = Path(tempfile.mkdtemp(dir=out_dir))
        path = folder / f"condiff-{'inpaint' if inpaint else 'img2img'}-{im.seed}.png"
        path.write_bytes(im.png)
        return str(path), im.parameters

    def img2img(image, prompt, negative, seed, steps, scale, sampler, strength):
        if image is None:
            raise gr.Error("image: upload an init image first")
        return run(EditRequest(prompt, _png_bytes(image), float(strength), None, None, negative or "", int(seed),
                               int(steps), float(scale), sampler), inpaint=False)

    def inpaint(editor, box, prompt, negative, seed, steps, scale, sampler):
        background = (editor or {}).get("background")
        if background is None:
            raise gr.Error("image: upload an image to paint on first")
        box = (box or "").strip()
        mask = None if box else _brush_mask(editor.get("layers"), background.size)
        if not box and mask is None:
            raise gr.Error("mask: paint the region to repaint with the brush, or give a box")
        return run(EditRequest(prompt, _png_bytes(background), 0.0, mask, box.split(",") if box else None,
                               negative or "", int(seed), int(steps), float(scale), sampler), inpaint=True)

    def upscale(image, prompt, scale, seed, steps):
        """The Upscale tab, and the Text to image tab's action on its first result (image: PNG bytes or PIL)."""
        if image is None:
            raise gr.Error("image: generate or upload an image first")
        try:
            im = service.upscale(UpscaleRequest(image if isinstance(image, bytes) else _png_bytes(image), prompt or "",
                                                int(scale), int(seed), int(steps)))
        except (RequestError, Busy, Cancelled, ValueError, TypeError) as e:
            raise gr.Error(str(e)) from None
        path = Path(tempfile.mkdtemp(dir=out_dir)) / f"condiff-upscaled-{im.seed}.png"
        path.write_bytes(im.png)
        return str(path), im.parameters

    return img2img, inpaint, upscale


def _edit_controls(prefix: str):
    prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{prefix}-prompt")
    negative = gr.Textbox(label="Negative prompt", elem_id=f"{prefix}-negative-prompt")
    with gr.Row():
        seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id=f"{prefix}-seed")
        sampler = gr.Dropdown(SAMPLER_LABELS, value="DDIM", label="Sampler", elem_id=f"{prefix}-sampler")
    steps = gr.Slider(1, 250, 25, step=1, label="Steps", elem_id=f"{prefix}-steps")
    scale = gr.Slider(0, 15, 3, step=0.5, label="Guidance scale", elem_id=f"{prefix}-guidance-scale")
    return [prompt, negative, seed, steps, scale, sampler]


def _edit_outputs(prefix: str):
    out = gr.Image(label="Result", type="filepath", format="png", elem_id=f"{prefix}-result", interactive=False)
    params = gr.Textbox(label="Parameters", interactive=False, lines=3, elem_id=f"{prefix}-parameters")
    return [out, params]
