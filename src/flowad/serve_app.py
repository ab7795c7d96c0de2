"""The service's HTTP application (FastAPI): routes, the API key, body limits, JSON errors and metrics.

:func:`create_app` builds it around a loaded detector (:mod:`flowad.serve` scores and shapes the answers);
:func:`app_from_environment` is the factory uvicorn's worker processes call (settings in ``FLOWAD_SERVE``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from flowad.data.images import decode_image
from flowad.errors import InputError
from flowad.inference import Detector
from flowad.serve import DEFAULT_BODY_LIMIT, IMAGE_TYPES, MicroBatcher, model_info, response

# reachable without the API key: a load balancer's probe, and the page (static; its calls send the key)
OPEN_PATHS = ("/healthz", "/")
# Accept: one picture as the answer's body instead of JSON
PICTURES = {"image/png": "mask_png", "image/png; kind=mask": "mask_png", "image/png; kind=heatmap": "heatmap_png"}
HEADER_FIELDS = ("score", "normalised_score", "anomalous")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _metrics() -> dict[str, Any]:
    registry = CollectorRegistry()
    return {
        "registry": registry,
        "requests": Counter("flowad_requests", "HTTP requests", ["path", "status"], registry=registry),
        "errors": Counter("flowad_errors", "requests answered with an error, by kind", ["kind"], registry=registry),
        "latency": Histogram("flowad_request_seconds", "request latency", ["path"], registry=registry),
        "images": Counter("flowad_images_scored", "images scored", registry=registry),
    }


def create_app(
    run: str,
    detector: Detector,
    api_key: str | None = None,
    body_limit: int = DEFAULT_BODY_LIMIT,
    batch_size: int = 8,
    max_wait_ms: float = 5.0,
) -> FastAPI:
    detector.batch_size = batch_size  # a micro-batch is scored in one engine call
    batcher = MicroBatcher(detector, max_wait_ms)
    metrics = _metrics()
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()

    app = FastAPI(title="flowad", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard_and_count(request: Request, call_next):
        started = time.perf_counter()
        path = request.url.path
        if api_key and path not in OPEN_PATHS and not _authorised(request, api_key):
            answer = _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")
        else:
            answer = await call_next(request)
        metrics["requests"].labels(path, str(answer.status_code)).inc()
        metrics["latency"].labels(path).observe(time.perf_counter() - started)
        if answer.status_code >= 400:
            metrics["errors"].labels(_kind(answer.status_code)).inc()
        return answer

    @app.exception_handler(HttpError)
    async def http_error(request: Request, err: HttpError) -> JSONResponse:
        return _error(err.status, err.message)

    @app.exception_handler(InputError)
    async def input_error(request: Request, err: InputError) -> JSONResponse:
        return _error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return _error(422, f"invalid request: {where}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = state["ready"]
        return JSONResponse({"ready": ready, "engine": detector.engine.name}, status_code=200 if ready else 503)

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return model_info(run, detector)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics["registry"]), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict")
    async def predict(request: Request, pictures: bool = True) -> Any:
        (rgb,) = await _images(request, "image", body_limit, single=True)
        detector.check_size(rgb)  # before its batch: one image's error must not fail its batch-mates
        result = await batcher.score(rgb)
        metrics["images"].inc()
        wanted = request.headers.get("accept", "")
        answer = response(detector, rgb, result, pictures=pictures or wanted in PICTURES)
        if wanted in PICTURES:  # one picture as the body, the figures in headers (a PLC-friendly answer)
            headers = {f"X-Flowad-{k.replace('_', '-').title()}": str(answer[k]) for k in HEADER_FIELDS}
            return Response(base64.b64decode(answer[PICTURES[wanted]]), media_type="image/png", headers=headers)
        return answer

    @app.post("/v1/predict/batch")
    async def predict_batch(request: Request, pictures: bool = True) -> dict[str, Any]:
        images = await _images(request, "images", body_limit, single=False)
        for rgb in images:
            detector.check_size(rgb)
        results = await asyncio.gather(*(batcher.score(rgb) for rgb in images))
        metrics["images"].inc(len(images))
        return {"results": [response(detector, rgb, r, pictures) for rgb, r in zip(images, results, strict=True)]}

    @app.get("/")
    async def page() -> HTMLResponse:
        from flowad.serve_page import PAGE

        return HTMLResponse(PAGE)

    return app


def _authorised(request: Request, api_key: str) -> bool:
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _kind(status: int) -> str:
    return {400: "bad_input", 401: "unauthorized", 404: "not_found", 413: "too_large", 415: "wrong_type"}.get(
        status, "client_error" if status < 500 else "server_error"
    )


async def _images(request: Request, field: str, limit: int, single: bool) -> list[np.ndarray]:
    """The request's images, decoded: the body itself (an image content type), or the multipart ``field``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        await _discard(request)
        raise HttpError(413, f"request of {length} bytes; the limit is {limit} bytes (--body-limit-mb)")
    if kind == "multipart/form-data":
        form = await request.form()
        uploads = form.getlist(field)
        if not uploads or (single and len(uploads) != 1):
            expected = "one file field" if single else "one or more file fields"
            raise HttpError(422, f"the form needs {expected} named {field!r}")
        blobs = [(await upload.read(), f"'{getattr(upload, 'filename', field)}'") for upload in uploads]
    elif kind in IMAGE_TYPES or (kind.startswith("image/") and single):
        if not single:
            raise HttpError(415, "a batch is a multipart form of 'images' fields")
        blobs = [(await _body(request, limit), "in the request body")]
    else:
        expected = "an image body (image/png, image/jpeg, ...) or multipart/form-data"
        raise HttpError(415, f"content type {kind or 'none'!r}; expected {expected}")
    return [await asyncio.to_thread(decode_image, data, name) for data, name in blobs]


async def _body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _discard(request)
            raise HttpError(413, f"request over {limit} bytes; the limit is {limit} bytes (--body-limit-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(request: Request, cap: int = 1 << 30) -> None:
    """Read the rest of a refused body (up to ``cap`` bytes) without keeping it: a server that answers and
    closes while the client still sends makes the client's socket fail before it can read the 413."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return


def app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process: settings from ``FLOWAD_SERVE`` (JSON), set by ``flowad serve``."""
    settings = json.loads(os.environ["FLOWAD_SERVE"])
    detector = Detector.load(
        settings["run"], settings["threshold"], settings["engine"], nfa_options=settings.get("nfa")
    )
    return create_app(
        settings["run"],
        detector,
        os.environ.get("FLOWAD_API_KEY") or None,
        settings["body_limit"],
        settings["batch_size"],
        settings["max_wait_ms"],
    )
