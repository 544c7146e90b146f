"""The generation service behind the page and the API: validate a request, queue it, generate, return PNGs.

One lock serialises generation (CPU and GPU work best one batch at a time); concurrent requests wait their turn in a
bounded queue (ServeLimits): past its depth a request is refused at once (429), a request that waits longer than
max_wait gets 503, both with a Retry-After; a request's work (images x steps x pixels over its stages) is capped at
validation. A request's `cancel` event (the client went away) or the service's `stopping` (SIGTERM) ends its
sampling at the next step.
"""
from __future__ import annotations

import contextlib
import io
import math
import random
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

from PIL import Image, PngImagePlugin

from .. import components
from ..config import load_json
from ..catalogue import CONTROLNETS, model_folder
from ..data.imagefolder import check_boxes, check_phrases
from ..diffusion.sampling import SAMPLER_INFO, Sampler, SamplingOptions, start_step
from ..images import (
    box_mask,
    image_tensor,
    mask_image,
    mask_tensor,
    open_image,
    to_model_size,
)
from ..formats import embeddings as textual_inversion
from ..formats import lora
from ..nets.controlnet import ControlKind, ControlNetConfig
from ..pipelines import requests
from ..pipelines.vocabulary import prompt_warnings
from ..pipelines.controlnet import checked_map, fits, with_control
from ..pipelines.editing import inpainting_pipeline
from ..pipelines.guidance import (
    GuidanceMethod,
    GuidanceOptions,
    check_prompts,
    load_judge,
)
from ..pipelines.text2image import Text2ImagePipeline
from .messages import (Busy, Cancelled, EditRequest, GeneratedImage, RequestError, ServeLimits,  # noqa: F401
                       Txt2ImgRequest, UpscaleRequest)
from ..pipelines.upsample import (
    UPSCALE_INPUT,
    StageRun,
    shipped_upsamplers,
    upsampler_chain,
)

MAX_IMAGES, MAX_STEPS, MAX_SCALE, MAX_SEED, MAX_GUIDE_SCALE = 16, 1000, 50.0, 2 ** 32 - 1, 100.0
SAMPLER_BY_LABEL = {label: s for s, (label, _) in SAMPLER_INFO.items()}
GUIDES = ["none", *(m.value for m in GuidanceMethod)]  # the request's `guide`: none or a judge guidance method


def sampler_of(name: str) -> Sampler:
    if name in SAMPLER_BY_LABEL:
        return SAMPLER_BY_LABEL[name]
    try:
        return Sampler(name)
    except ValueError:
        raise RequestError(f"sampler: unknown sampler '{name}' (known: {', '.join(s.value for s in Sampler)})") from None


def check_counts(steps, guidance_scale, num_images, seed) -> None:
    """RequestError naming the first of a request's shared numbers that is out of range."""
    for name, value, kind, lo, hi in (("steps", steps, int, 1, MAX_STEPS), ("guidance_scale", guidance_scale, float, 0, MAX_SCALE),
                                      ("num_images", num_images, int, 1, MAX_IMAGES), ("seed", seed, int, -1, MAX_SEED)):
        if not lo <= kind(value) <= hi:
            raise RequestError(f"{name}: must be {'-1 (random) or ' if name == 'seed' else ''}between "
                               f"{max(lo, 0)} and {hi}, got {value}")


class GenerationService:
    def prompt_warnings(self, prompt: str, literal: bool = False) -> list[str]:
        """The note naming colour words read as others, and the warning when the prompt names nothing the served
        model was trained on (each one line; none when neither applies)."""
        return prompt_warnings([prompt], self.pipe.spec.vocabulary, self.model_tag.name, literal)

    def model_info(self) -> dict:
        return {"name": self.model_tag.name, "hash": self.model_tag.hash, "family": self.pipe.family,
                "kind": self.pipe.kind, "resolution": self.pipe.resolution}

    def __init__(self, model: str | Path | None = None, device: str = "cpu", limits: ServeLimits | None = None,
                 loras: list = (), embeddings: list = ()):
        self.model_path = model_folder(model)
        self.pipe = Text2ImagePipeline.from_pretrained(self.model_path).to(device)
        lora.apply(self.pipe.parts, list(loras))  # `serve --lora FILE[:WEIGHT]`: applied once, at load
        textual_inversion.apply(self.pipe.parts, list(embeddings))  # `serve --embedding FILE`
        self.model_tag = requests.ModelTag.of(self.model_path, loras, embeddings)  # hashed once, at start
        self._controlnets: dict = {}  # kind -> the shipped ControlNet, loaded on the first request with such a map
        self._controlnet_lock = threading.Lock()
        self.adapters = (list(loras), list(embeddings))  # applied to the inpainting model too, when it loads
        self.limits = limits or ServeLimits()
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # set on shutdown: running work ends at its next step
        self._pending, self._pending_lock, self._service_s = 0, threading.Lock(), 2.0  # mean seconds of a request
        self._judges: dict = {}  # guidance method -> judge model, loaded on first use
        self._upsamplers: dict = {}  # (input side, output side) -> upsampler chain, loaded on first use
        self._unclip: tuple | None = None  # (decoder, CLIP) for variations, loaded on first use (ui/variations.py)

    @contextlib.contextmanager
    def turn(self):
        """Hold the generation lock: refuse (429) past max_queue requests, give up (503) after max_wait seconds."""
        with self._pending_lock:
            if self._pending >= self.limits.max_queue:
                raise Busy(429, f"queue full: {self._pending} requests running or waiting (limit {self.limits.max_queue})",
                           self.retry_after())
            self._pending += 1
        try:
            if not self.lock.acquire(timeout=self.limits.max_wait):
                raise Busy(503, f"timed out after {self.limits.max_wait:g} s waiting for a turn", self.retry_after())
            try:
                if self.stopping.is_set():
                    raise Cancelled("the server is stopping")
                import time

                start = time.monotonic()
                yield
                self._service_s = 0.8 * self._service_s + 0.2 * (time.monotonic() - start)
            finally:
                self.lock.release()
        finally:
            with self._pending_lock:
                self._pending -= 1

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on: its length times the mean service time."""
        return max(1, math.ceil(self._pending * self._service_s))

    def step_check(self, cancel: threading.Event | None, callback: Callable | None = None) -> Callable:
        """The sampler callback: the caller's, after ending the request if it was cancelled or the server stops."""
        def check(info):
            if self.stopping.is_set() or (cancel is not None and cancel.is_set()):
                raise Cancelled("the client disconnected" if cancel is not None and cancel.is_set() else "the server is stopping")
            if callback is not None:
                callback(info)
        return check

    def check_work(self, images: int, stages: list[tuple[int, int]]) -> None:
        """RequestError when images x sum(steps x side^2) over the (steps, side) stages passes max_work."""
        work = images * sum(steps * side * side for steps, side in stages)
        if work > self.limits.max_work:
            raise RequestError(f"work: {images} image(s) x {' + '.join(f'{n} steps x {s}^2' for n, s in stages)} = "
                               f"{work:,} is over this server's limit of {self.limits.max_work:,}; use fewer images, "
                               "steps or a smaller size")

    def upsamplers(self, base: int, size: int) -> list:
        """The shipped upsampler chain from base to size px (loaded once), or RequestError."""
        if (base, size) not in self._upsamplers:
            try:
                self._upsamplers[base, size] = [st.to(self.pipe.device) for st in upsampler_chain(base, size)]
            except ValueError as e:
                raise RequestError(str(e)) from None
        return self._upsamplers[base, size]

    def guide_for(self, req: Txt2ImgRequest) -> tuple[GuidanceOptions | None, object]:
        """The guidance options of req.guide and its judge (None, None for 'none'); each judge is loaded once."""
        if req.guide == "none":
            return None, None
        opts = GuidanceOptions(GuidanceMethod(req.guide), float(req.guide_scale))
        if opts.method not in self._judges:
            self._judges[opts.method] = load_judge(opts).to(self.pipe.device)
        return opts, self._judges[opts.method]

    def upscale_to(self, size: int, base: int | None = None, steps: int | None = None) -> requests.Upscale | None:
        """The shipped upsampler stages from base (the model's side) to size, with their saved settings."""
        base = base or self.pipe.resolution
        if size in (0, base):
            return None
        stages = self.upsamplers(base, size)
        runs = [StageRun(st.defaults if steps is None else st.defaults.replace(steps=steps)) for st in stages]
        return requests.Upscale(stages, runs, shipped_upsamplers(base, size))

    def validate(self, req: Txt2ImgRequest) -> tuple[SamplingOptions, int]:
        """SamplingOptions and the seed to use; RequestError naming the first bad field."""
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise RequestError("prompt: must be a non-empty string")
        for name, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
            try:
                self.pipe.text_encoder.tokenizer.encode(text)
            except ValueError as e:
                raise RequestError(f"{name}: {e}") from None
        check_counts(req.steps, req.guidance_scale, req.num_images, req.seed)
        if req.guide not in GUIDES:
            raise RequestError(f"guide: unknown guide '{req.guide}' (known: {', '.join(GUIDES)})")
        if req.guide != "none":
            try:
                check_prompts(req.guide, [req.prompt])
            except ValueError as e:
                raise RequestError(f"prompt: the {req.guide} guide needs a world caption: {e}") from None
        if not 0 <= float(req.guide_scale) <= MAX_GUIDE_SCALE:
            raise RequestError(f"guide_scale: must be between 0 and {MAX_GUIDE_SCALE}, got {req.guide_scale}")
        if not 0 <= float(req.guidance_rescale) <= 1:
            raise RequestError(f"guidance_rescale: must be between 0 and 1, got {req.guidance_rescale}")
        try:
            opts = self.pipe.defaults.replace(steps=int(req.steps), guidance_scale=float(req.guidance_scale),
                                              sampler=sampler_of(req.sampler), negative_prompt=req.negative_prompt,
                                              guidance_rescale=float(req.guidance_rescale))  # the rest: the model's
        except ValueError as e:
            raise RequestError(str(e)) from None
        if req.control is not None:
            try:
                checked_map(req.control, self.control_kind(req), self.pipe, req.control_scale, "control")
                self.controlnet(req.control_kind)
            except ValueError as e:
                raise RequestError(str(e)) from None
        stages = [(opts.steps, self.pipe.resolution)]
        if int(req.size) not in (0, self.pipe.resolution):
            stages += [(st.defaults.steps, self.pipe.resolution * 2 ** (k + 1))
                       for k, st in enumerate(self.upsamplers(self.pipe.resolution, int(req.size)))]
        self.check_work(int(req.num_images), stages)
        seed = random.randint(0, MAX_SEED - MAX_IMAGES) if int(req.seed) == -1 else int(req.seed)
        return opts, seed

    def resolve(self, req: Txt2ImgRequest) -> Txt2ImgRequest:
        """The request validated, with seed -1 replaced by the random seed that will be used."""
        _, seed = self.validate(req)
        return replace(req, seed=seed)

    def txt2img(self, req: Txt2ImgRequest, callback: Callable[[dict], None] | None = None,
                cancel: threading.Event | None = None) -> list[GeneratedImage]:
        """Image i uses seed + i, as `condiff generate` does; callback sees each step's x0_hat."""
        opts, seed = self.validate(req)
        layout = self.check_layout(req)
        seeds = [seed + i for i in range(int(req.num_images))]
        prompts = [req.prompt] * len(seeds)
        callback = self.step_check(cancel, callback)
        with self.turn():
            guide, judge = self.guide_for(req)
            request = requests.Txt2ImgRequest(prompts, seeds, opts, guide, judge, layout=layout,
                                              upscale=self.upscale_to(int(req.size)), batch_size=MAX_IMAGES,
                                              control=self.control_for(req), literal=req.literal)
            return [self._png(g) for batch in requests.txt2img(self.pipe, request, self.model_tag,
                                                               callback=callback) for g in batch]

    def controllable(self) -> list[str]:
        """The control kinds whose shipped ControlNet exists and was made for this server's model (each config read,
        not its weights)."""
        if getattr(self.pipe, "variable_size", False):
            return []
        return [kind for kind, folder in CONTROLNETS.items() if (folder / "config.json").is_file()
                and fits(load_json(ControlNetConfig, folder / "config.json"), self.pipe)]

    @staticmethod
    def control_kind(req: Txt2ImgRequest) -> ControlKind:
        if req.control_kind not in CONTROLNETS:
            raise RequestError(f"control_kind: must be one of {', '.join(CONTROLNETS)}, got {req.control_kind!r}")
        return ControlKind(req.control_kind)

    def controlnet(self, kind: str):
        """The shipped ControlNet of this kind, loaded on first use and checked against the model; ValueError when
        there is none for it. The pipeline's denoiser takes it under a request's turn (control_for)."""
        if kind not in self._controlnets:
            folder = CONTROLNETS[kind]
            if not (folder / "config.json").is_file():
                raise ValueError(f"control: this server has no {kind} ControlNet (no shipped {folder.name})")
            with self._controlnet_lock:
                if kind not in self._controlnets:
                    net = components.load("controlnet", folder)
                    if not fits(net.cfg, self.pipe):
                        raise ValueError(f"control: the shipped {folder.name} was made for another model")
                    self._controlnets[kind] = net
        return self._controlnets[kind]

    def control_for(self, req: Txt2ImgRequest) -> requests.Control | None:
        """The request's control map and settings (validated), its kind's ControlNet put under the pipeline (called
        in the request's turn; a request without a map draws as the base model under any ControlNet)."""
        if req.control is None:
            return None
        kind = self.control_kind(req)
        with_control(self.pipe, self.controlnet(kind.value))
        m = checked_map(req.control, kind, self.pipe, req.control_scale, "control")
        return requests.Control(m, kind.value, float(req.control_scale), CONTROLNETS[kind.value].name,
                                bool(req.control_guess))

    def check_layout(self, req: Txt2ImgRequest) -> list[dict] | None:
        """req.layout checked (boxes in [0, 1], phrases in the prompt, at most the model's slots), or RequestError."""
        if req.layout is None:
            return None
        try:
            boxes = check_boxes(req.layout, "layout")
        except ValueError as e:
            raise RequestError(str(e)) from None
        slots = self.pipe.unet.cfg.grounding_max_boxes if self.pipe.unet.cfg.grounding_dim else 0
        if not slots:
            raise RequestError("layout: this model has no grounding layers")
        if len(boxes) > slots:
            raise RequestError(f"layout: this model takes at most {slots} boxes, got {len(boxes)}")
        try:
            check_phrases(boxes, req.prompt, "layout")
        except ValueError as e:
            raise RequestError(str(e)) from None
        return boxes

    def inpainter(self):
        """The pipeline that inpaints for this model (the default's own inpainting model), with the server's LoRAs
        and embeddings applied as to the main model."""
        pipe = inpainting_pipeline(self.pipe, self.model_path)
        if pipe is not self.pipe:
            try:
                lora.apply(pipe.parts, self.adapters[0])
                textual_inversion.apply(pipe.parts, self.adapters[1])
            except ValueError as e:  # ConfigError: a LoRA made for the main model's layers
                raise RequestError(f"inpaint: the server's adapters do not fit its inpainting model ({e})"[:300]) from None
        return pipe

    def _edit_inputs(self, req: EditRequest, inpaint: bool):
        """(options, seed, image tensor, mask tensor or None), or RequestError naming the bad field."""
        opts, seed = self.validate(Txt2ImgRequest(req.prompt, req.negative_prompt, req.seed, req.steps,
                                                  req.guidance_scale, req.sampler))
        try:
            if not isinstance(req.image, bytes) or not req.image:
                raise ValueError("image: missing")
            img = open_image(req.image, "image")
            mask = None
            if inpaint:
                if (req.mask is None) == (req.box is None):
                    raise ValueError("inpaint: give exactly one of mask and box")
                m = box_mask(req.box, *img.size, what="box") if req.box is not None else mask_image(req.mask, img.size, "mask")
                mask = mask_tensor(m, self.pipe.resolution)
            else:
                start_step(opts, req.strength)
        except ValueError as e:
            raise RequestError(str(e).splitlines()[0][:300]) from None
        return opts, seed, image_tensor(to_model_size(img, self.pipe.resolution)), mask

    def edit(self, req: EditRequest, inpaint: bool, cancel: threading.Event | None = None) -> GeneratedImage:
        """img2img (SDEdit) or RePaint inpainting with the input's pixels pasted back outside the mask."""
        opts, seed, x, mask = self._edit_inputs(req, inpaint)
        check = self.step_check(cancel)
        with self.turn():
            if inpaint:
                pipe = self._inpainter = getattr(self, "_inpainter", None) or self.inpainter()
                run = requests.edit_inpaint(pipe, requests.InpaintRequest(req.prompt, x, mask, [seed], opts),
                                            self.model_tag, callback=check)
            else:
                run = requests.edit_img2img(self.pipe, requests.Img2ImgRequest(req.prompt, x, [seed], opts,
                                                                               float(req.strength)),
                                            self.model_tag, callback=check)
            (image,), = run
        return self._png(image)

    def upscale(self, req: UpscaleRequest, cancel: threading.Event | None = None) -> GeneratedImage:
        """The shipped cascade's upsamplers on one square image; RequestError naming a bad field, before any work."""
        from PIL import Image

        if req.scale not in (2, 4):
            raise RequestError(f"scale: must be 2 or 4, got {req.scale}")
        if not 1 <= int(req.steps) <= MAX_STEPS:
            raise RequestError(f"steps: must be between 1 and {MAX_STEPS}, got {req.steps}")
        if not -1 <= int(req.seed) <= MAX_SEED:
            raise RequestError(f"seed: must be -1 (random) or between 0 and {MAX_SEED}, got {req.seed}")
        try:
            if not isinstance(req.image, bytes) or not req.image:
                raise ValueError("image: missing")
            img = open_image(req.image, "image")
            if img.width != img.height:
                raise ValueError(f"image: it is {img.width}x{img.height}; upscale takes square images")
        except ValueError as e:
            raise RequestError(str(e).splitlines()[0][:300]) from None
        up = self.upscale_to(UPSCALE_INPUT * req.scale, UPSCALE_INPUT, int(req.steps))
        try:
            for st, run in zip(up.stages, up.runs):
                st.check([req.prompt], run.opts)
        except ValueError as e:
            raise RequestError(f"prompt: {e}"[:300]) from None
        self.check_work(1, [(run.opts.steps, UPSCALE_INPUT * 2 ** (k + 1)) for k, run in enumerate(up.runs)])
        seed = random.randint(0, MAX_SEED) if int(req.seed) == -1 else int(req.seed)
        x = image_tensor(img.resize((UPSCALE_INPUT, UPSCALE_INPUT), Image.BICUBIC) if img.width != UPSCALE_INPUT else img)
        check = self.step_check(cancel)
        with self.turn():
            return self._png(requests.upscale(x, req.prompt, seed, up, img.size, callback=check))

    @staticmethod
    def _png(image: requests.Generated) -> GeneratedImage:
        """A generated image as the PNG file the page and the API hand out (its infotext in the parameters chunk)."""
        info = PngImagePlugin.PngInfo()
        text = image.infotext()
        info.add_text("parameters", text)
        buf = io.BytesIO()
        Image.fromarray(image.pixels).save(buf, format="PNG", pnginfo=info)
        return GeneratedImage(buf.getvalue(), text, image.seed, image.pixels, image.layout)
