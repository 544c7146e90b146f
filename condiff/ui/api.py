"""The HTTP JSON API (A1111-like): POST /api/txt2img, /api/img2img, /api/inpaint, /api/upscale,
/api/variations, GET /api/samplers; bad values get
a 4xx with one clear line. Images travel as base64 (PNG, JPEG, ...), as in A1111's API.

With a token (`condiff serve --token T` or CONDIFF_TOKEN) every /api/ route but the docs needs
`Authorization: Bearer T` (401 otherwise, before the body is read); the schema states it as an HTTP bearer scheme."""
from __future__ import annotations

import asyncio
import base64
import hmac
import threading

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from ..catalogue import CONTROLNETS
from ..diffusion.sampling import SAMPLER_INFO
from ..pipelines.unclip import MAX_VARIATION_CANDIDATES, VARIATION_CANDIDATES, VARIATION_ETA, VARIATION_GUIDANCE
from starlette.concurrency import run_in_threadpool

from .service import (GUIDES, MAX_GUIDE_SCALE, MAX_IMAGES, MAX_SCALE, MAX_SEED, MAX_STEPS, Busy, Cancelled,
                      EditRequest, GenerationService, RequestError, Txt2ImgRequest, UpscaleRequest)

MAX_DETAIL = 300  # an error message quotes at most this much (a 100k-character prompt is not echoed back)
MAX_BODY = 32 * 2 ** 20  # bytes of a request body (Content-Length); past it: 413 before it is read
OPEN_PATHS = ("/api/docs", "/api/openapi.json")  # readable without the token: how to call the API, no generation


def bounded(default, lo, hi, what: str = ""):
    """A field whose bounds the schema states; the service checks them and answers 400 naming the field."""
    return Field(default, description=f"{what} {lo} to {hi}; outside: 400".strip(),
                 json_schema_extra={"minimum": lo, "maximum": hi})


def one_of(default, values: list, what: str):
    """A field whose allowed values the schema lists; the service checks them and answers 400 naming the field."""
    return Field(default, description=f"{what}; otherwise 400", json_schema_extra={"enum": values})


SAMPLERS = [s.value for s in SAMPLER_INFO]
PROMPT = Field(description="the text; the model's tokenizer decides what is too long (400)", min_length=1,
               max_length=MAX_DETAIL * 10)
IMAGE = Field(description="base64 of an image file (PNG, JPEG, ...), or a data: URL", min_length=1)


class ErrorBody(BaseModel):
    detail: str  # one line: "field: what is wrong"


ERRORS = {400: {"model": ErrorBody, "description": "a value out of range or unusable by the model, or over the work limit"},
          422: {"model": ErrorBody, "description": "a missing field, an extra field, or a value of the wrong type"},
          429: {"model": ErrorBody, "description": "the queue is full; retry after the Retry-After header's seconds"},
          503: {"model": ErrorBody, "description": "no turn within the server's max wait, or the server is stopping; "
                                                   "Retry-After says when to try again"}}


UNAUTHORIZED = {401: {"model": ErrorBody, "description": "no `Authorization: Bearer <token>` header, or a wrong token"}}


def token_matches(header: str | None, token: str) -> bool:
    """An `Authorization: Bearer <token>` header holding token, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def serve_request(request: Request, fn, *args):
    """fn(*args, cancel) in a worker thread; cancel is set when the client disconnects, which ends the sampling at
    its next step. Service refusals become 400 / 429 / 503 with one line (and Retry-After)."""
    cancel = threading.Event()

    async def watch():
        while not cancel.is_set():
            if await request.is_disconnected():
                cancel.set()
                return
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(fn, *args, cancel)
    except RequestError as e:
        raise HTTPException(status_code=400, detail=str(e)[:MAX_DETAIL]) from None
    except Busy as e:
        raise HTTPException(status_code=e.status, detail=str(e)[:MAX_DETAIL],
                            headers={"Retry-After": str(e.retry_after)}) from None
    except Cancelled as e:
        raise HTTPException(status_code=503, detail=f"cancelled: {e}", headers={"Retry-After": "1"}) from None
    finally:
        cancel.set()
        watcher.cancel()


class SamplingBody(BaseModel):
    """What every text-conditioned request carries: the prompt and the sampling options."""
    model_config = ConfigDict(extra="forbid")
    prompt: str = PROMPT
    negative_prompt: str = Field("", max_length=MAX_DETAIL * 10)
    seed: int = bounded(-1, -1, MAX_SEED, "-1 (random) or")
    steps: int = bounded(25, 1, MAX_STEPS)
    guidance_scale: float = bounded(3.0, 0, MAX_SCALE)
    sampler: str = one_of("ddim", SAMPLERS, "see GET /api/samplers")


class Txt2ImgBody(SamplingBody):
    num_images: int = bounded(1, 1, MAX_IMAGES)
    guide: str = one_of("none", GUIDES, "judge guidance")
    guide_scale: float = bounded(3.0, 0, MAX_GUIDE_SCALE)
    guidance_rescale: float = bounded(0.0, 0, 1)
    layout: list[dict] | None = None  # [{"phrase", "box": [x0, y0, x1, y1]}] in [0, 1] (a grounded model)
    size: int = Field(0, description="output side: 0 or the model's; 128 or 256 through the upsampler cascade; "
                                     "otherwise 400", json_schema_extra={"enum": [0, 64, 128, 256]})
    control: str | None = Field(None, description="ControlNet: a base64 control map of the model's size "
                                "(condiff control edges|segmentation IN --out MAP); it decides the layout")
    control_kind: str = one_of("edges", list(CONTROLNETS), "the map's kind: which shipped ControlNet reads it")
    control_scale: float = bounded(1.0, 0, 2)
    control_guess: bool = Field(False, description="guess mode: the map in CFG's conditional branch only")
    literal: bool = Field(False, description="the prompt as written: no colour word the model never saw read as "
                                             "the nearest colour it knows")


class EditBody(SamplingBody):
    image: str = IMAGE


class Img2ImgBody(EditBody):
    strength: float = bounded(0.6, 0, 1)


class InpaintBody(EditBody):
    mask: str | None = None  # base64 image of the input's size, white = repaint
    box: list[int] | None = None  # [x0, y0, x1, y1] in pixels of the input, x1 and y1 exclusive


class VariationsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = IMAGE
    prompt: str = Field("", max_length=MAX_DETAIL * 10, description="also condition on a caption; empty: none")
    num_images: int = bounded(4, 1, MAX_IMAGES)
    seed: int = bounded(-1, -1, MAX_SEED, "-1 (random) or")
    steps: int = bounded(25, 1, MAX_STEPS)
    guidance_scale: float = bounded(VARIATION_GUIDANCE, 0, MAX_SCALE)
    sampler: str = one_of("ddim", SAMPLERS, "see GET /api/samplers; from_noise for other than ddim")
    eta: float = bounded(VARIATION_ETA, 0, 1, "DDIM eta from the image's inverted noise (near 0: the image back; 1: the most "
                                    "varied), above 0 and up to 1:")
    from_noise: bool = Field(False, description="each image from its seed's noise instead (eta unused)")
    candidates: int = bounded(VARIATION_CANDIDATES, 1, MAX_VARIATION_CANDIDATES,
                              "draws per image, the one nearest the image in CLIP kept:")


class UpscaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="base64 of a square image; resized to 64 px, the shipped cascade's first input",
                       min_length=1)
    prompt: str = Field("", max_length=MAX_DETAIL * 10)
    scale: int = one_of(2, [2, 4], "the upscaling factor")
    seed: int = bounded(-1, -1, MAX_SEED, "-1 (random) or")
    steps: int = bounded(20, 1, MAX_STEPS)


def _decode(field: str, text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except ValueError:
        raise HTTPException(status_code=400, detail=f"{field}: not base64") from None


def create_api(service: GenerationService, token: str | None = None) -> FastAPI:
    """The API over service; with token, every route but the docs needs `Authorization: Bearer <token>`."""
    bearer = HTTPBearer(auto_error=False, description="the server's token: `condiff serve --token T` or CONDIFF_TOKEN")

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """States the scheme in the schema; the guard middleware has already refused a wrong token."""

    guarded = dict(dependencies=[Depends(authorized)]) if token else {}
    app = FastAPI(title="condiff API", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None,
                  responses=UNAUTHORIZED if token else None, **guarded)

    max_work = service.limits.max_work
    budget = {"x-max-work": max_work}  # the cost budget of one request, as a schema extension and in the 400's text
    errors = {**ERRORS, 400: {"model": ErrorBody, "description": "a value out of range or unusable by the model, or "
                              f"over the work budget: num_images x steps x side^2, summed over the stages, above "
                              f"{max_work:,} (condiff serve --max-work)"}}
    methods_by_path: dict[str, set[str]] = {}  # filled on the first request, once every route is registered

    @app.middleware("http")
    async def method_not_allowed(request: Request, call_next):
        """An /api/ path asked with a method it does not take: 405 with Allow (not the web page's 404)."""
        if not methods_by_path:
            for r in app.routes:
                methods_by_path.setdefault(getattr(r, "path", None), set()).update(getattr(r, "methods", None) or ())
        allowed = methods_by_path.get(request.url.path)
        if allowed and request.method not in allowed:
            return JSONResponse(status_code=405, content={"detail": f"method {request.method[:20]} not allowed"},
                                headers={"Allow": ", ".join(sorted(allowed))})
        return await call_next(request)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """(Outermost) 401 without the token, 413 for a body over MAX_BODY, both before the body is read."""
        path = request.url.path
        if token and path.startswith("/api/") and path not in OPEN_PATHS and \
                not token_matches(request.headers.get("authorization"), token):
            return JSONResponse(status_code=401, content={"detail": "authorization: a valid 'Bearer <token>' is required"},
                                headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return JSONResponse(status_code=413, content={"detail": f"body: at most {MAX_BODY // 2 ** 20} MiB"})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def one_line_422(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        return JSONResponse(status_code=422, content={"detail": f"{field}: {err['msg']}"[:MAX_DETAIL]})

    @app.post("/api/txt2img", responses=errors, openapi_extra=budget)
    async def txt2img(body: Txt2ImgBody, request: Request) -> dict:
        """Generate; returns base64 PNGs (each with its 'parameters' text chunk), their parameters and seeds, and
        'warnings': a note naming colour words read as others, and one line when the prompt names nothing the model
        was trained on."""
        fields = body.model_dump()
        fields["control"] = _decode("control", fields["control"])
        images = await serve_request(request, lambda req, cancel: service.txt2img(req, cancel=cancel),
                                     Txt2ImgRequest(**fields))
        return {"images": [base64.b64encode(im.png).decode() for im in images],
                "parameters": [im.parameters for im in images], "seeds": [im.seed for im in images],
                "layouts": [im.layout for im in images],
                "warnings": service.prompt_warnings(body.prompt, body.literal)}

    async def edit(body: EditBody, inpaint: bool, request: Request) -> dict:
        fields = body.model_dump()
        fields["image"], fields["mask"] = _decode("image", body.image), _decode("mask", fields.get("mask"))
        im = await serve_request(request, service.edit, EditRequest(**fields), inpaint)
        return {"images": [base64.b64encode(im.png).decode()], "parameters": [im.parameters], "seeds": [im.seed]}

    @app.post("/api/img2img", responses=errors, openapi_extra=budget)
    async def img2img(body: Img2ImgBody, request: Request) -> dict:
        """SDEdit: the image noised to `strength` and denoised with the prompt; returns one base64 PNG."""
        return await edit(body, False, request)

    @app.post("/api/inpaint", responses=errors, openapi_extra=budget)
    async def inpaint(body: InpaintBody, request: Request) -> dict:
        """RePaint: the mask (or box) repainted with the prompt, the input's pixels kept outside it."""
        return await edit(body, True, request)

    @app.post("/api/upscale", responses=errors, openapi_extra=budget)
    async def upscale(body: UpscaleBody, request: Request) -> dict:
        """The diffusion upsamplers (x2: 64 -> 128 px, x4: -> 256 px) on one square image; returns one base64 PNG."""
        fields = body.model_dump()
        fields["image"] = _decode("image", body.image)
        im = await serve_request(request, service.upscale, UpscaleRequest(**fields))
        return {"images": [base64.b64encode(im.png).decode()], "parameters": [im.parameters], "seeds": [im.seed]}

    @app.post("/api/variations", responses=errors, openapi_extra=budget)
    async def variations(body: VariationsBody, request: Request) -> dict:
        """unCLIP: num_images images from the image's CLIP embedding (seeds seed + i); returns base64 PNGs."""
        from .variations import VariationsRequest, variations

        fields = body.model_dump()
        fields["image"] = _decode("image", body.image)
        images = await serve_request(request, lambda req, cancel: variations(service, req, cancel),
                                     VariationsRequest(**fields))
        return {"images": [base64.b64encode(im.png).decode() for im in images],
                "parameters": [im.parameters for im in images], "seeds": [im.seed for im in images]}

    @app.get("/api/samplers")
    def samplers() -> list[dict]:
        return [{"name": s.value, "label": label, "description": d} for s, (label, d) in SAMPLER_INFO.items()]

    @app.get("/api/model")
    def model() -> dict:
        """The served model: its name and A1111 hash (as the infotext gives them), family, kind and native size."""
        return service.model_info()

    return app
