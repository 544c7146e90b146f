"""The Gradio page: text to image with live previews, a gallery of PNGs that carry their parameters, PNG-info restore,
an output size through the upsampler cascade, Upscale and (unCLIP) Variations actions on a result; image to image (SDEdit), inpainting
(RePaint, with a brush mask or a box) and upscaling."""
from __future__ import annotations

import hmac
import os
import sys
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no analytics, no share links

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from ..images import draw_boxes  # noqa: E402
from ..png import read_parameters  # noqa: E402
from .edit_tabs import (SAMPLER_LABELS, _brush_mask, _control_png, _edit_controls, _edit_outputs, _first_result,  # noqa: E402,F401
                        _png_bytes, make_edit_handlers)
from .service import (GUIDES, MAX_IMAGES, Busy, Cancelled, GenerationService, RequestError,  # noqa: E402
                      ServeLimits, Txt2ImgRequest)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PREVIEW_SIDE = 128
CSS = "#gallery img, .preview img { image-rendering: pixelated; }"
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def _upscale(px: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    k = max(1, side // px.shape[0])
    return px.repeat(k, 0).repeat(k, 1)


def _previews(x0_hat) -> list[np.ndarray]:
    from ..world.render import to_uint8

    return [_upscale(px) for px in to_uint8(x0_hat.detach().cpu().clamp(-1, 1)).numpy()]


def make_handlers(service: GenerationService, out_dir: Path):
    def generate(prompt, negative_prompt, seed, steps, guidance_scale, sampler, num_images, guide="none",
                 guide_scale=3.0, layout_text="", size=0, control_image=None, control_make=False, control_scale=1.0,
                 control_kind="edges", progress=gr.Progress()):
        import json

        try:
            try:
                layout = json.loads(layout_text) if (layout_text or "").strip() else None
            except json.JSONDecodeError as e:
                raise RequestError(f"layout: not JSON ({e.msg} at character {e.pos})") from None
            req = service.resolve(Txt2ImgRequest(prompt, negative_prompt or "", int(seed), int(steps),
                                                 float(guidance_scale), sampler, int(num_images), guide or "none",
                                                 float(guide_scale), layout=layout, size=int(size or 0),
                                                 control=_control_png(service, control_image, bool(control_make),
                                                                      control_kind or "edges"),
                                                 control_scale=float(control_scale), control_kind=control_kind or "edges"))
            service.check_layout(req)
        except (RequestError, ValueError, TypeError) as e:
            raise gr.Error(str(e)) from None
        for warning in service.prompt_warnings(req.prompt):  # a toast; it draws anyway
            gr.Warning(warning)
        state: dict = {"step": 0, "x0": None, "new": False}
        result: dict = {}

        def callback(d):
            state.update(step=d["i"] + 1, x0=d["x0_hat"], new=True)

        def work():
            try:
                result["images"] = service.txt2img(req, callback)
            except Exception as e:  # reported on the page below
                result["error"] = e

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        progress(0, desc="queued")
        while thread.is_alive():
            thread.join(0.2)
            if state["new"]:
                state["new"] = False
                progress((state["step"], req.steps), desc="sampling", unit="steps")
                yield _previews(state["x0"]), str(req.seed), "", gr.update(), None, gr.update()
        if "error" in result:
            raise gr.Error(f"generation failed: {result['error']}")
        folder = Path(tempfile.mkdtemp(dir=out_dir))
        paths = []
        for im in result["images"]:
            path = folder / f"condiff-{im.seed}.png"
            path.write_bytes(im.png)
            paths.append(str(path))
        first = result["images"][0]
        shown = json.dumps(first.layout) if first.layout is not None else (layout_text or "")
        overlay = draw_boxes(_upscale(first.pixels, 256), first.layout) if first.layout else None
        yield paths, str(req.seed), first.parameters, shown, overlay, json.dumps([paths[0], req.prompt])

    def restore(file):
        """Read a PNG's 'parameters' chunk back into the controls."""
        if file is None:
            return [gr.update()] * 8 + [""]
        path = file if isinstance(file, str) else file.name
        p = read_parameters(path)
        if "Steps" not in p:
            return [gr.update()] * 8 + ["this PNG carries no generation parameters"]
        sampler = p.get("Sampler", "DDIM")
        guide = p.get("Guidance", "none")
        return (p["prompt"], p["negative_prompt"], int(p.get("Seed", -1)), int(p["Steps"]),
                float(p.get("CFG scale", 3.0)), sampler if sampler in SAMPLER_LABELS else gr.update(),
                guide if guide in GUIDES else gr.update(), float(p.get("Guidance scale", 3.0)),
                f"restored the parameters of {Path(path).name}")

    return generate, restore


def make_variations_handler(service: GenerationService, out_dir: Path):
    """The Text to image tab's Variations action: 4 unCLIP variations of its first result (seeds 0..3)."""
    from .variations import VariationsRequest, variations

    def vary(first: str) -> list[str]:
        png, _ = _first_result(first, out_dir)
        if png is None:
            raise gr.Error("image: generate an image first")
        try:
            images = variations(service, VariationsRequest(png, 4, "", 0))
        except (RequestError, Busy, Cancelled, ValueError, TypeError) as e:
            raise gr.Error(str(e)) from None
        folder = Path(tempfile.mkdtemp(dir=out_dir))
        for im in images:
            (folder / f"condiff-variation-{im.seed}.png").write_bytes(im.png)
        return [str(folder / f"condiff-variation-{im.seed}.png") for im in images]

    return vary


def build_page(service: GenerationService, out_dir: Path) -> gr.Blocks:
    from ..catalogue import UNCLIP_DECODER as DECODER
    from ..pipelines.unclip import UnCLIPPipeline
    from ..catalogue import UPSAMPLERS

    generate, restore = make_handlers(service, out_dir)
    img2img, inpaint, upscale = make_edit_handlers(service, out_dir)
    grounded = bool(service.pipe.unet.cfg.grounding_dim)
    controllable = service.controllable()
    has_unclip = isinstance(service.pipe, UnCLIPPipeline) or (DECODER / "pipeline.json").is_file()
    res = service.pipe.resolution
    sizes = [res] + [s for s in sorted(UPSAMPLERS) if s > res and all(
        (UPSAMPLERS[k] / "pipeline.json").is_file() for k in UPSAMPLERS if res < k <= s)]
    with gr.Blocks(title="condiff", analytics_enabled=False) as page:
        info = service.model_info()
        gr.Markdown(f"## condiff &nbsp; <small>model: `{info['name']}` [{info['hash']}], {info['family']}, "
                    f"{info['resolution']}×{info['resolution']}</small>")
        with gr.Tab("Text to image"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                        placeholder="a red circle to the left of a blue square")
                    negative = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                    with gr.Row():
                        seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id="seed")
                        sampler = gr.Dropdown(SAMPLER_LABELS, value="DDIM", label="Sampler", elem_id="sampler")
                    steps = gr.Slider(1, 250, 25, step=1, label="Steps", elem_id="steps")
                    scale = gr.Slider(0, 15, 3, step=0.5, label="Guidance scale", elem_id="guidance-scale")
                    count = gr.Slider(1, MAX_IMAGES, 4, step=1, label="Number of images", elem_id="num-images")
                    size = gr.Dropdown(sizes, value=res, label="Output size (above the model's: the upsampler cascade)",
                                       elem_id="size", visible=len(sizes) > 1)
                    with gr.Accordion("Judge guidance (classifier / CLIP)", open=False):
                        guide = gr.Dropdown(GUIDES, value="none", label="Guide", elem_id="guide")
                        guide_scale = gr.Slider(0, 20, 3, step=0.5, label="Guide scale", elem_id="guide-scale")
                    with gr.Accordion("Layout (grounded models)", open=True, visible=grounded):
                        layout_box = gr.Textbox(label='Boxes as JSON [{"phrase", "box": [x0, y0, x1, y1]}] in [0, 1]; '
                                                      "empty: the model's layout stage predicts them. Edit and "
                                                      "generate again to move an object.", lines=3, elem_id="layout")
                    with gr.Accordion("ControlNet (a map decides the layout)", open=False, visible=bool(controllable)):
                        control_kind = gr.Radio(controllable or ["edges"], value=(controllable or ["edges"])[0],
                                                label="Map kind", elem_id="control-kind")
                        control_image = gr.Image(label=f"Control map ({res}x{res}: white edges on black, or one colour "
                                                       "per form), or any image with the box below ticked", type="pil",
                                                 elem_id="control-map")
                        control_make = gr.Checkbox(False, label="Make the map of this kind from this image first",
                                                   elem_id="control-make")
                        control_scale = gr.Slider(0, 2, 1, step=0.05, label="Control scale", elem_id="control-scale")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    png_in = gr.File(label="Drop a PNG here to restore its parameters", file_types=[".png"],
                                     elem_id="png-info")
                    restored = gr.Markdown(elem_id="restored")
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="Images", elem_id="gallery", columns=4, height=420, format="png",
                                         object_fit="contain", buttons=["download"])
                    used_seed = gr.Textbox(label="Seed used (image i: seed + i)", interactive=False, elem_id="used-seed")
                    overlay = gr.Image(label="Layout over the first image", interactive=False, visible=grounded,
                                       elem_id="layout-overlay", format="png")
                    params = gr.Textbox(label="Parameters of the first image", interactive=False, lines=3,
                                        elem_id="parameters")
                    with gr.Row(visible=len(sizes) > 1):
                        up_scale = gr.Radio([2, 4], value=2, label="Upscale", elem_id="result-upscale-scale")
                        up_button = gr.Button("Upscale the first image", elem_id="result-upscale")
                    upscaled = gr.Image(label="Upscaled", type="filepath", format="png", interactive=False,
                                        elem_id="result-upscaled", visible=len(sizes) > 1)
                    up_params = gr.Textbox(visible=False)
                    vary_button = gr.Button("Variations of the first image (unCLIP)", elem_id="result-variations",
                                            visible=has_unclip)
                    varied = gr.Gallery(label="Variations", elem_id="result-variations-gallery", columns=4, height=180,
                                        format="png", object_fit="contain", visible=has_unclip)
            first = gr.Textbox(visible=False)  # JSON [PNG path, prompt] of the last result's first image (no gr.State:
            # its session heartbeat would keep a connection open)
            inputs = [prompt, negative, seed, steps, scale, sampler, count, guide, guide_scale, layout_box, size,
                      control_image, control_make, control_scale, control_kind]
            outputs = [gallery, used_seed, params, layout_box, overlay, first]
            up_button.click(lambda f, k: upscale(*_first_result(f, out_dir), k, 0, 20), [first, up_scale], [upscaled, up_params],
                            api_name=False)
            vary_button.click(make_variations_handler(service, out_dir), [first], [varied], api_name=False)
            button.click(generate, inputs, outputs, api_name="txt2img")
            prompt.submit(generate, inputs, outputs, api_name=False)
            png_in.upload(restore, png_in, [prompt, negative, seed, steps, scale, sampler, guide, guide_scale, restored],
                          api_name=False)
        with gr.Tab("Image to image"):
            with gr.Row():
                with gr.Column(scale=2):
                    init = gr.Image(label="Init image", type="pil", image_mode="RGB", elem_id="init-image")
                    controls = _edit_controls("img2img")
                    strength = gr.Slider(0, 1, 0.6, step=0.05, label="Denoising strength (0: the input, 1: text to image)",
                                         elem_id="strength")
                    go = gr.Button("Generate", variant="primary", elem_id="img2img-generate")
                with gr.Column(scale=3):
                    outputs = _edit_outputs("img2img")
            go.click(img2img, [init, *controls, strength], outputs, api_name="img2img")
        with gr.Tab("Inpainting"):
            with gr.Row():
                with gr.Column(scale=2):
                    editor = gr.ImageEditor(label="Image; paint the region to repaint", type="pil", image_mode="RGBA",
                                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                            elem_id="inpaint-editor")
                    box = gr.Textbox(label="or a box X0,Y0,X1,Y1 in pixels (X1, Y1 exclusive)", elem_id="inpaint-box")
                    controls = _edit_controls("inpaint")
                    go = gr.Button("Generate", variant="primary", elem_id="inpaint-generate")
                with gr.Column(scale=3):
                    outputs = _edit_outputs("inpaint")
            go.click(inpaint, [editor, box, *controls], outputs, api_name="inpaint")
        with gr.Tab("Upscale"):
            with gr.Row():
                with gr.Column(scale=2):
                    up_in = gr.Image(label="Square image (resized to 64 px)", type="pil", image_mode="RGB",
                                     elem_id="upscale-image")
                    up_prompt = gr.Textbox(label="Caption (optional)", elem_id="upscale-prompt")
                    with gr.Row():
                        up_k = gr.Radio([2, 4], value=2, label="Scale", elem_id="upscale-scale")
                        up_seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id="upscale-seed")
                    up_steps = gr.Slider(1, 100, 20, step=1, label="Steps per stage", elem_id="upscale-steps")
                    go = gr.Button("Upscale", variant="primary", elem_id="upscale-generate")
                with gr.Column(scale=3):
                    outputs = _edit_outputs("upscale")
            go.click(upscale, [up_in, up_prompt, up_k, up_seed, up_steps], outputs, api_name="upscale")
    return page


def create_app(model: str | None = None, device: str = "cpu", out_dir: str | None = None,
               limits: ServeLimits | None = None, token: str | None = None, auth: tuple[str, str] | None = None,
               adapters: tuple = ((), ())):
    """FastAPI app: the JSON API under /api, the page at /, the generation service at app.state.service. token guards
    the API (Bearer); auth (user, password) the page, whose login otherwise takes the token as its password."""
    from .api import create_api

    service = GenerationService(model, device, limits, *adapters)  # (LoRA specs, embedding specs)
    out = Path(out_dir or tempfile.mkdtemp(prefix="condiff-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    app = create_api(service, token)
    page = build_page(service, out)
    page.queue(default_concurrency_limit=1)
    app.state.service = service
    return gr.mount_gradio_app(app, page, path="/", allowed_paths=[str(out)], ssr_mode=False, theme=THEME, css=CSS,
                               footer_links=["api"], auth=page_login(token, auth))


def page_login(token: str | None, auth: tuple[str, str] | None):
    """Gradio's auth: the (user, password) pair; else, with a token, any user name and the token as password."""
    if auth is not None:
        return [auth]
    if token:
        return lambda user, password: hmac.compare_digest(password.encode(), token.encode())
    return None


def exposure_warning(host: str, token: str | None, auth: tuple[str, str] | None) -> str | None:
    """The warning for a non-loopback bind that leaves the API or the page open; None when both are guarded."""
    open_parts = ([] if token else ["the API (add --token T or CONDIFF_TOKEN)"]) + \
                 ([] if token or auth else ["the page (add --auth USER:PASS)"])
    if host in LOOPBACK or not open_parts:
        return None
    return (f"condiff serve: WARNING: bound to {host} without authentication for {' and '.join(open_parts)}: anyone "
            "who can reach this address can generate (see SECURITY.md)")


def serve(host: str = "127.0.0.1", port: int = 7860, model: str | None = None, device: str = "cpu",
          limits: ServeLimits | None = None, token: str | None = None, auth: tuple[str, str] | None = None,
          adapters: tuple = ((), ())) -> None:
    """Serve until SIGINT / SIGTERM, which end running sampling at its next step (so the process exits in ~a step).
    The token and password are never printed or logged."""
    import uvicorn

    if warning := exposure_warning(host, token, auth):
        print(warning, file=sys.stderr, flush=True)
    app = create_app(model, device, limits=limits, token=token, auth=auth, adapters=adapters)
    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.stopping.set()  # running work raises Cancelled at its next step; its client gets a 503
            super().handle_exit(sig, frame)

    guard = (f"; API token required, page {'login' if token or auth else 'open'}" if token
             else "; page login required, API open" if auth else "")
    print(f"condiff serve: http://{host}:{port}  (API: POST /api/txt2img, /api/img2img, /api/inpaint, /api/upscale; "
          f"docs /api/docs{guard})", flush=True)
    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)).run()


__all__ = ["build_page", "create_app", "exposure_warning", "page_login", "serve"]
