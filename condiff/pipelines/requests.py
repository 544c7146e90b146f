"""The assembly layer the command line and the web service share: a typed request -> images with their infotext.

    for batch in txt2img(pipe, Txt2ImgRequest(prompts, seeds, opts), ModelTag.of(folder)):
        for image in batch:          # Generated: uint8 pixels, the prompt, the A1111 parameters
            save(image.pixels, image.infotext())

A front end parses its input into a request, calls one function here and presents what comes back (files, JSON,
a gallery). It knows nothing of which pipeline kinds exist: the layout stage of a layout2image model, the
upsampler cascade to `size`, judge guidance and CLIP-optimised x_T are composed here. Results come one batch at a
time, so a caller that writes them as they arrive holds one batch in memory whatever the number of images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..diffusion.sampling import SAMPLER_INFO, Resample, SamplingOptions
from ..diffusion.thresholding import Threshold
from ..fs import model_hash, short_hash
from ..png import format_parameters
from ..world.render import to_uint8
from .editing import img2img, inpaint, leakage
from .guidance import GuidanceOptions, NoiseOptimization, make_guide, make_initializer
from .lexicon import read_colours
from .text2image import Text2ImagePipeline
from .upsample import StageRun, UpsamplePipeline, cascade


@dataclass(frozen=True)
class ModelTag:
    """The model an image came from, as its infotext names it: A1111's `Model hash` and `Model`."""
    name: str
    hash: str | None = None
    loras: tuple[tuple[str, float, str], ...] = ()  # (name, weight, hash) of each --lora
    embeddings: tuple[tuple[str, str], ...] = ()  # (name, hash) of each --embedding

    @classmethod
    def of(cls, path: str | Path, loras=(), embeddings=()) -> ModelTag:
        """A single file by its stem (as A1111 names checkpoints), a folder by its name; the hash of its weights.
        loras, embeddings: the LoRASpecs and EmbeddingSpecs applied (formats/), named and hashed likewise."""
        path = Path(path)
        tags = tuple((s.name, s.weight, short_hash(s.file, addnet=True)) for s in loras)
        embs = tuple((s.name, short_hash(s.file)) for s in embeddings)
        return cls(path.stem if path.is_file() else path.name, model_hash(path), tags, embs)

    def parameters(self) -> dict:
        out = ({"Model hash": self.hash} if self.hash else {}) | {"Model": self.name}
        if self.loras:  # A1111's "Lora hashes", and the weight each was applied with
            out |= {"Lora hashes": ", ".join(f"{n}: {h}" for n, _, h in self.loras),
                    "Lora weights": ", ".join(f"{n}: {w:g}" for n, w, _ in self.loras)}
        if self.embeddings:  # A1111's "TI hashes"
            out |= {"TI hashes": ", ".join(f"{n}: {h}" for n, h in self.embeddings)}
        return out


@dataclass
class Generated:
    """One image and what made it: the A1111 `parameters` text is `infotext()`."""
    pixels: np.ndarray = field(repr=False)  # (H, W, 3) uint8
    prompt: str
    negative_prompt: str
    parameters: dict  # "Steps", "Sampler", "Seed", ... in A1111's names and order
    seed: int
    layout: list | None = None  # the boxes it was drawn from, rounded as recorded

    def infotext(self) -> str:
        return format_parameters(self.prompt, self.negative_prompt, self.parameters)


@dataclass
class Upscale:
    """The super-resolution stages after the base model, each with its run settings and the folder it came from."""
    stages: list[UpsamplePipeline]
    runs: list[StageRun]
    folders: list[str | Path]

    def parameters(self) -> dict:
        """Infotext of every stage (one JSON list under 'Upscale stages')."""
        rows = [{"model": Path(str(f)).name, "scale": st.scale, "steps": r.opts.steps,
                 "sampler": SAMPLER_INFO[r.opts.sampler][0], "cfg": r.opts.guidance_scale,
                 "noise_level": st.noise_level if r.noise_level is None else r.noise_level}
                for st, r, f in zip(self.stages, self.runs, self.folders)]
        return {"Upscale stages": json.dumps(rows)} if rows else {}


@dataclass
class Control:
    """A ControlNet's map for every image of a request (the pipeline already under with_control)."""
    map: torch.Tensor  # (1, k, H, W) in [0, 1]
    kind: str
    scale: float
    model: str  # the ControlNet's name, for the infotext
    guess: bool = False  # guess mode: the map in CFG's conditional branch only, residuals graded by depth

    def parameters(self) -> dict:
        return ({"ControlNet": self.kind, "Control scale": self.scale, "Control model": self.model}
                | ({"Control mode": "guess"} if self.guess else {}))


@dataclass
class Txt2ImgRequest:
    """Text to image: image i is prompts[i] drawn from seeds[i] (its own noise generator)."""
    prompts: list[str]
    seeds: list[int]
    opts: SamplingOptions
    guide: GuidanceOptions | None = None  # gradient guidance by a judge, on top of CFG
    judge: torch.nn.Module | None = None  # the guide's judge, already loaded (default: load the guide's)
    noise_optimization: NoiseOptimization | None = None  # CLIP-optimised x_T
    layout: list[dict] | None = None  # the same boxes for every image; None: the model's layout stage, if any
    boxes_in_uncond: bool = False
    x_T: torch.Tensor | None = None  # (B, C, h, w) initial noise, e.g. DDIM-inverted; no boxes then
    upscale: Upscale | None = None
    batch_size: int = 32
    control: Control | None = None  # a control map (the pipeline's denoiser reads it: pipelines.controlnet)
    literal: bool = False  # read the prompts as written: no colour-name lookup (lexicon.py)


@dataclass
class Img2ImgRequest:
    """SDEdit: image i is `image` noised to `strength` with seeds[i]'s noise, then denoised with the prompt."""
    prompt: str
    image: torch.Tensor  # (1, 3, H, W) in [-1, 1] at the model's size
    seeds: list[int]
    opts: SamplingOptions
    strength: float = 0.6  # 0 returns the input, 1 is text to image
    batch_size: int = 32
    literal: bool = False


@dataclass
class InpaintRequest:
    """The mask's pixels of `image` drawn again with the prompt, image i from seeds[i]."""
    prompt: str
    image: torch.Tensor  # (1, 3, H, W) in [-1, 1] at the model's size
    mask: torch.Tensor  # (1, 1, H, W) bool, True = repaint
    seeds: list[int]
    opts: SamplingOptions
    method: str = "auto"  # editing.INPAINT_METHODS
    resample: Resample = field(default_factory=Resample)  # RePaint's jumps
    paste_back: bool = True  # the input's own pixels outside the mask
    batch_size: int = 32
    literal: bool = False


def sampling_parameters(opts: SamplingOptions, seed: int, pixels: np.ndarray, model: ModelTag) -> dict:
    """The infotext fields every sampled image carries."""
    threshold = opts.threshold.value + (f" {opts.percentile}" if opts.threshold is Threshold.DYNAMIC else "")
    params = {"Steps": opts.steps, "Sampler": SAMPLER_INFO[opts.sampler][0], "Schedule type": opts.schedule.value,
              "Threshold": threshold, "CFG scale": opts.guidance_scale, "Seed": seed,
              "Size": f"{pixels.shape[1]}x{pixels.shape[0]}", **model.parameters(), "Eta": opts.eta}
    if opts.guidance_rescale:
        params["Guidance rescale"] = opts.guidance_rescale
    return params


def rounded_layout(boxes: list[dict]) -> list[dict]:
    return [{"phrase": b["phrase"], "box": [round(c, 4) for c in b["box"]]} for b in boxes]


def results(images: torch.Tensor, prompts: list[str], seeds: list[int], opts: SamplingOptions, model: ModelTag,
            extra: dict, layouts: list[list[dict]] | None = None) -> list[Generated]:
    """Images in [-1, 1] (B, 3, H, W) as Generated, each with its seed's parameters plus `extra`."""
    out = []
    for i, px in enumerate(to_uint8(images.cpu()).numpy()):
        layout = rounded_layout(layouts[i]) if layouts is not None else None
        params = {**sampling_parameters(opts, seeds[i], px, model), **extra,
                  **({"Layout": json.dumps(layout)} if layout is not None else {})}
        out.append(Generated(px, prompts[i], opts.negative_prompt, params, seeds[i], layout))
    return out


def guidance_parameters(req: Txt2ImgRequest) -> dict:
    params = {}
    if req.guide is not None:
        params.update({"Guidance": req.guide.method.value, "Guidance scale": req.guide.scale,
                       "Guidance form": req.guide.form.value})
    if req.noise_optimization is not None:
        params.update({"CLIP x_T iterations": req.noise_optimization.iters,
                       "CLIP x_T chain": req.noise_optimization.chain_steps})
    return params


def said(pipe: Text2ImagePipeline, prompts: list[str], literal: bool = False) -> list[str]:
    """The prompts as the model reads them: a colour word it never saw, by the nearest colour it knows (lexicon.py).
    The images' infotext keeps the prompts as written; reading them again gives the same words."""
    return list(prompts) if literal else [read_colours(p, pipe.spec.vocabulary)[0] for p in prompts]


def boxes_for(pipe: Text2ImagePipeline, req: Txt2ImgRequest) -> list[list[dict]] | None:
    """Each image's boxes: the request's layout, none for an inverted x_T, else the model's layout stage (if any),
    moved onto the objects of the control map when there is one."""
    if req.layout is not None:
        return [req.layout] * len(req.prompts)
    if req.control is not None and hasattr(pipe, "layouts"):  # the map says where, the phrases say what
        from .controlnet import map_grounding, map_objects

        objects = map_objects(req.control.map, req.control.kind)
        return [map_grounding(objects, layout) for layout in pipe.layouts(req.prompts, req.seeds)]
    if (req.x_T is not None or req.control is not None) and pipe.unet.cfg.grounding_dim:
        return [[] for _ in req.prompts]  # an inverted x_T (as `edit invert` used) or a control map decides the layout
    if hasattr(pipe, "layouts"):  # a layout2image pipeline: its layout stage predicts the boxes (recorded)
        return pipe.layouts(req.prompts, req.seeds)
    return None


def txt2img(pipe: Text2ImagePipeline, req: Txt2ImgRequest, model: ModelTag, progress: bool = False,
            callback: Callable[[dict], None] | None = None) -> Iterator[list[Generated]]:
    """The request's images, one batch of at most req.batch_size at a time."""
    guide = make_guide(req.guide, req.judge) if req.guide is not None else None
    init = make_initializer(req.noise_optimization) if req.noise_optimization is not None else None
    extra = {**guidance_parameters(req), **(req.upscale.parameters() if req.upscale else {}),
             **(req.control.parameters() if req.control else {})}
    n = len(req.prompts)
    for i in tqdm(range(0, n, req.batch_size), disable=not progress, desc="generating", unit="batch"):
        prompts, seeds = req.prompts[i:i + req.batch_size], req.seeds[i:i + req.batch_size]
        read = said(pipe, prompts, req.literal)
        batch = replace(req, prompts=read, seeds=seeds, x_T=None if req.x_T is None else req.x_T[i:i + len(seeds)])
        boxes = boxes_for(pipe, batch)
        g = {} if boxes is None else {"boxes": boxes, "boxes_in_uncond": req.boxes_in_uncond}
        if batch.x_T is not None:
            g["x"] = batch.x_T.to(pipe.device)
        if req.control is not None:  # the pipeline is under with_control: its denoiser reads these
            m = {"control_map": req.control.map.expand(len(seeds), -1, -1, -1).to(pipe.device),
                 "control_scale": req.control.scale, "control_guess": req.control.guess}
            if req.control.guess:  # the map drives CFG's conditional branch only
                on = torch.ones(len(seeds), dtype=torch.bool, device=pipe.device)
                g |= {"cond_only": m | {"control_on": on}, "uncond_only": m | {"control_on": ~on}}
            else:
                g |= m
        images = pipe(read, seeds, req.opts, callback=callback, guide=guide, init=init, **g).cpu()
        if req.upscale:
            images = cascade(images, read, seeds, req.upscale.stages, req.upscale.runs, progress=progress,
                             callback=callback)
        yield results(images, prompts, seeds, req.opts, model, extra, boxes)


def upscale(image: torch.Tensor, prompt: str, seed: int, up: Upscale, input_size: tuple[int, int],
            callback: Callable[[dict], None] | None = None) -> Generated:
    """One image (1, 3, h, w) in [-1, 1] through the upsampler stages; input_size: the user's image's (W, H)."""
    px = to_uint8(cascade(image, [prompt], [seed], up.stages, up.runs, callback=callback)).numpy()[0]
    params = {"Seed": seed, "Size": f"{px.shape[1]}x{px.shape[0]}", "Input size": "x".join(map(str, input_size)),
              **up.parameters()}
    return Generated(px, prompt, "", params, seed)


def _batches(seeds: list[int], size: int) -> Iterator[list[int]]:
    """The seeds in batches: each batch is one call, its images in the seeds' order."""
    return (seeds[i:i + size] for i in range(0, len(seeds), size))


def edit_img2img(pipe: Text2ImagePipeline, req: Img2ImgRequest, model: ModelTag,
                 callback: Callable[[dict], None] | None = None) -> Iterator[list[Generated]]:
    """The request's images, one batch at a time, each with its edit's parameters."""
    extra = {"Denoising strength": req.strength, "Edit": "img2img"}
    read = said(pipe, [req.prompt], req.literal)
    for seeds in _batches(req.seeds, req.batch_size):
        x = req.image.expand(len(seeds), -1, -1, -1)
        out = img2img(pipe, read * len(seeds), x, seeds, req.opts, req.strength, callback=callback)
        yield results(out, [req.prompt] * len(seeds), seeds, req.opts, model, extra)


def edit_inpaint(pipe: Text2ImagePipeline, req: InpaintRequest, model: ModelTag,
                 callback: Callable[[dict], None] | None = None) -> Iterator[list[Generated]]:
    """The request's images, one batch at a time; the infotext names the method that ran and, for a latent model, the
    first image's PSNR outside the mask before paste-back (the autoencoder's round trip)."""
    extra = None
    read = said(pipe, [req.prompt], req.literal)
    for seeds in _batches(req.seeds, req.batch_size):
        n = len(seeds)
        x, m = req.image.expand(n, -1, -1, -1), req.mask.expand(n, -1, -1, -1)
        raw, method = inpaint(pipe, read * n, x, m, seeds, req.opts, req.method, paste_back=False,
                              resample=req.resample, callback=callback)
        if extra is None:
            extra = {"Edit": f"inpaint ({method})", "Mask pixels": int(req.mask.sum()), "Paste back": req.paste_back}
            if req.resample.jump_n_sample > 1 and method == "RePaint":
                extra |= {"Jump length": req.resample.jump_length, "Jump samples": req.resample.jump_n_sample}
            if pipe.autoencoder is not None:
                extra["Outside PSNR before paste-back"] = round(leakage(x[:1], raw[:1], m[:1]), 2)
        out = m * raw + (~m) * x if req.paste_back else raw
        yield results(out, [req.prompt] * n, seeds, req.opts, model, extra)
