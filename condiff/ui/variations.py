"""unCLIP variations for the page and the API (POST /api/variations): images from one image's CLIP embedding,
drawn by the shipped unCLIP decoder (or the served model itself, when it is an unCLIP pipeline)."""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from ..catalogue import CLIP64, UNCLIP_DECODER
from ..catalogue import UNCLIP_DECODER as DECODER
from ..images import image_tensor, open_image, to_model_size
from ..nets.clip import load_clip
from ..pipelines import unclip
from ..pipelines.requests import ModelTag, results
from ..pipelines.text2image import Text2ImagePipeline
from ..pipelines.unclip import (
    MAX_VARIATION_CANDIDATES,
    VARIATION_CANDIDATES,
    VARIATION_ETA,
    VARIATION_GUIDANCE,
    UnCLIPPipeline,
    variation_parameters,
)
from .service import (
    MAX_IMAGES,
    MAX_SEED,
    GeneratedImage,
    GenerationService,
    RequestError,
    check_counts,
    sampler_of,
)


@dataclass
class VariationsRequest:
    image: bytes  # PNG, JPEG, ... of any size: centre-cropped and resized to the decoder's
    num_images: int = 4
    prompt: str = ""  # also condition the decoder on a caption; empty: the embedding alone
    seed: int = -1
    steps: int = 25
    guidance_scale: float = VARIATION_GUIDANCE
    sampler: str = "ddim"
    eta: float = VARIATION_ETA  # DDIM eta from the image's inverted noise
    from_noise: bool = False  # each image from its seed's noise instead (any sampler; eta unused)
    candidates: int = VARIATION_CANDIDATES  # draws per image, the one nearest the image in CLIP kept


def unclip_parts(service: GenerationService):
    """(decoder pipeline, CLIP), loaded once: the served pipeline if it reads CLIP embeddings, else the shipped
    unclip64 decoder and clip64; RequestError if neither is there."""
    if isinstance(service.pipe, UnCLIPPipeline):
        return service.pipe, service.pipe.clip
    if service._unclip is None:
        if not (DECODER / "pipeline.json").is_file() or not (CLIP64 / "config.json").is_file():
            raise RequestError(f"variations: this server has no unCLIP decoder ({DECODER.name}) and CLIP ({CLIP64.name})")
        service._unclip = (Text2ImagePipeline.from_pretrained(DECODER).to(service.pipe.device),
                           load_clip(CLIP64).to(service.pipe.device))
    return service._unclip


def variations(service: GenerationService, req: VariationsRequest,
               cancel: threading.Event | None = None) -> list[GeneratedImage]:
    """num_images variations, seeds seed .. seed + n - 1; RequestError naming the first bad field before any work."""
    check_counts(req.steps, req.guidance_scale, req.num_images, req.seed)
    sampler = sampler_of(req.sampler)
    if not 1 <= int(req.candidates) <= MAX_VARIATION_CANDIDATES:
        raise RequestError(f"candidates: must be between 1 and {MAX_VARIATION_CANDIDATES}, got {req.candidates}")
    eta = None if req.from_noise else float(req.eta)
    if eta is not None and not 0 < eta <= 1:
        raise RequestError(f"eta: must be in (0, 1] (variations from the image's inverted noise), got {req.eta}")
    if eta is not None and sampler.value != "ddim":
        raise RequestError(f"sampler: variations from the image's inverted noise use ddim (set from_noise for "
                           f"{sampler.value})")
    try:
        if not isinstance(req.image, bytes) or not req.image:
            raise ValueError("image: missing")
        img = open_image(req.image, "image")
    except ValueError as e:
        raise RequestError(str(e).splitlines()[0][:300]) from None
    decoder, clip = unclip_parts(service)
    service.check_work(int(req.num_images) * int(req.candidates), [(int(req.steps), decoder.resolution)])
    if req.prompt.strip():
        try:
            decoder.check([req.prompt], decoder.defaults)
        except ValueError as e:
            raise RequestError(f"prompt: {e}") from None
    opts = decoder.defaults.replace(steps=int(req.steps), guidance_scale=float(req.guidance_scale), sampler=sampler)
    seed = random.randint(0, MAX_SEED - MAX_IMAGES) if int(req.seed) == -1 else int(req.seed)
    x = image_tensor(to_model_size(img, decoder.resolution))
    check = service.step_check(cancel)
    with service.turn():
        out = unclip.variations(decoder, clip, x, int(req.num_images), seed, opts, req.prompt, eta=eta,
                                candidates=int(req.candidates), callback=check)
    extra = {"Edit": "unCLIP variations", **variation_parameters(eta, int(req.candidates)),
             "Input size": f"{img.width}x{img.height}"}
    seeds = [seed + i for i in range(len(out))]
    model = service.model_tag if decoder is service.pipe else ModelTag.of(UNCLIP_DECODER)
    return [service._png(g) for g in results(out, [req.prompt] * len(out), seeds, opts, model, extra)]
