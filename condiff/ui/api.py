"""The HTTP JSON API (A1111-like): POST /api/txt2img, GET /api/samplers; bad values get a 4xx with one clear line."""
from __future__ import annotations

import base64

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from ..diffusion.sampling import SAMPLER_INFO
from .service import GenerationService, RequestError, Txt2ImgRequest


class Txt2ImgBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 25
    guidance_scale: float = 3.0
    sampler: str = "ddim"
    num_images: int = 1
    guide: str = "none"
    guide_scale: float = 3.0
    guidance_rescale: float = 0.0


def create_api(service: GenerationService) -> FastAPI:
    app = FastAPI(title="condiff API", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def one_line_422(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        return JSONResponse(status_code=422, content={"detail": f"{field}: {err['msg']}"})

    @app.post("/api/txt2img")
    def txt2img(body: Txt2ImgBody) -> dict:
        """Generate; returns base64 PNGs (each with its 'parameters' text chunk), their parameters and seeds."""
        try:
            images = service.txt2img(Txt2ImgRequest(**body.model_dump()))
        except RequestError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        return {"images": [base64.b64encode(im.png).decode() for im in images],
                "parameters": [im.parameters for im in images], "seeds": [im.seed for im in images]}

    @app.get("/api/samplers")
    def samplers() -> list[dict]:
        return [{"name": s.value, "label": label, "description": d} for s, (label, d) in SAMPLER_INFO.items()]

    return app
