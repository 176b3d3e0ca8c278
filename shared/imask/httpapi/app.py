"""mask-api's HTTP API (FastAPI): POST /v1/mask, POST /v1/detect, /healthz, /readyz, /metrics, /openapi.json and
/docs. Every request goes through the gRPC servicer's one request path (`MaskServicer.mask_image`): the same API
keys, camera bindings, rate limits, size limits, engine queue, result cache and fail-closed rules; its errors become
HTTP statuses in `handling`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

from imask.httpapi import handling as h
from imask.maskapi.cache import bypasses, scope_of
from imask.maskapi.servicer import MaskServicer, RequestError
from imask.ops import metrics
from imask.ops.grpc_auth import extract_key
from imask.v1 import mask_service_pb2 as mpb

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {"required": True, "content": {
    "image/jpeg": _IMAGE_BODY, "image/png": _IMAGE_BODY,
    h.MULTIPART: {"schema": {"type": "object", "required": [h.MULTIPART_FIELD],
                             "properties": {h.MULTIPART_FIELD: {"type": "string", "format": "binary"}}}}}}
_PARAMETERS = [{"name": name, "in": "query", "required": False, "description": text,
                "schema": {"type": "number" if name in ("scale", "threshold") else
                           "integer" if name == "seq" else "string"}}
               for name, text in h.QUERY_PARAMETERS.items()] + [
    {"name": "Authorization", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Bearer API key (imask api-key new CLIENT); also accepted as X-API-Key"},
    {"name": "Cache-Control", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "no-cache: mask afresh, bypassing the result cache"},
    {"name": "X-Request-Timeout-Ms", "in": "header", "required": False, "schema": {"type": "number"},
     "description": "Deadline: a request not masked by then gets 504"}]
_ERRORS: dict[int | str, dict[str, Any]] = {str(code): {"description": text} for code, text in (
    (400, "undecodable image or bad option"), (401, "missing or unknown API key"),
    (403, "revoked key, or a camera the key is not bound to"), (413, "image too large"),
    (415, "unsupported Content-Type"), (429, "rate limit or engine queue full (Retry-After)"),
    (500, "masking failed: no image is returned"), (503, "model not loaded yet"), (504, "deadline passed"))}
_MASK_RESPONSES: dict[int | str, dict[str, Any]] = {"200": {
    "description": "The masked image in the request's format (X-Faces-Masked, X-Model-Version, X-Fail-Closed, "
                   "X-Fail-Closed-Reason, X-Cache), or with Accept: application/json the detections and no pixels",
    "content": {"image/jpeg": {}, "image/png": {}, "application/json": {}}}, **_ERRORS}


def create_app(servicer: MaskServicer, ready: Callable[[], bool] = lambda: True,
               alive: Callable[[], bool] = lambda: True) -> FastAPI:
    """The HTTP API over `servicer` (its engine executor is attached when the model is loaded: 503 until then)."""
    app = FastAPI(title="Identity Masker mask-api", version="1",
                  description="Face masking over HTTP; the same service as gRPC imask.v1.MaskService.")
    settings = servicer.settings

    async def handle(request: Request, route: str, json_only: bool) -> Response:
        t0 = time.monotonic()
        try:
            response = await _mask(request, json_only, t0)
        except RequestError as exc:
            response = JSONResponse(h.error_body(exc), h.http_status(exc), headers=h.error_headers(exc))
        metrics.HTTP_REQUESTS.labels(route, str(response.status_code)).inc()
        return response

    async def _mask(request: Request, json_only: bool, t0: float) -> Response:
        headers = request.headers
        caller = servicer.authenticate(list(headers.items()))  # lower-case names, as gRPC metadata
        timeout = h.parse_timeout(headers)
        options, camera, seq = h.parse_options(request.query_params)
        kind = h.body_kind(headers.get("content-type"))
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
            raise h.HttpError(413, f"body of {length} bytes exceeds {settings.max_request_bytes}", "too_large")
        body = await _read_capped(request, settings.max_request_bytes)
        if kind == "multipart":
            data, declared = await _multipart_image(request, body)
        else:
            data, declared = body, kind
        encoding = "none" if json_only else h.image_format(data, declared)
        as_json = json_only or h.wants_json(headers.get("accept"), h.MEDIA_TYPE[encoding])
        if as_json:
            encoding = "none"
            options.detections_only = True
        mask_request = mpb.MaskRequest(image=data, options=options, camera_id=camera, seq=seq)
        cache = "bypass" if bypasses(headers.get("cache-control", "")) else "use"
        scope = scope_of(extract_key(list(headers.items())) if caller else None)
        key = f"http:{uuid.uuid4().hex}"
        deadline = None if timeout is None else t0 + timeout
        try:
            reply, cache_state = await servicer.mask_image(mask_request, caller, scope, deadline, key, 0,
                                                           encoding=encoding, transport="http", cache=cache)
        finally:
            if servicer.executor is not None:
                servicer.executor.forget(key)
        if as_json:
            return JSONResponse(h.reply_json(reply, cache_state), headers=h.reply_headers(reply, cache_state))
        return Response(reply.image, media_type=h.MEDIA_TYPE[encoding],
                        headers=h.reply_headers(reply, cache_state))

    @app.post("/v1/mask", summary="Mask the faces of one image", response_model=None,
              openapi_extra={"requestBody": _REQUEST_BODY, "parameters": _PARAMETERS}, responses=_MASK_RESPONSES)
    async def mask(request: Request) -> Response:
        return await handle(request, "/v1/mask", json_only=False)

    @app.post("/v1/detect", summary="Detections of one image (boxes, scores, landmarks; no pixels)",
              response_model=None, openapi_extra={"requestBody": _REQUEST_BODY, "parameters": _PARAMETERS},
              responses=_ERRORS)
    async def detect(request: Request) -> Response:
        return await handle(request, "/v1/detect", json_only=True)

    @app.get("/healthz", summary="Liveness: 503 once the engine is wedged")
    async def healthz() -> JSONResponse:
        ok = alive()
        return JSONResponse({"status": "ok" if ok else "wedged"}, 200 if ok else 503)

    @app.get("/readyz", summary="Readiness: 200 once the model is loaded and healthy, 503 while draining")
    async def readyz() -> JSONResponse:
        ok = servicer.executor is not None and ready()
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics of this process")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes (also without a Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise h.HttpError(413, f"body exceeds {limit} bytes", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_image(request: Request, body: bytes) -> tuple[bytes, str | None]:
    """The `image` field of a multipart form already read (and capped) as `body`, and its declared type."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    replay = Request(request.scope, receive=receive)
    try:
        form = await replay.form(max_files=1, max_fields=8)
    except Exception as exc:  # malformed multipart (python-multipart's and starlette's errors vary)
        raise RequestError(h.INVALID, f"malformed multipart body: {exc}") from None
    try:
        field = form.get(h.MULTIPART_FIELD)
        if field is None:
            raise RequestError(h.INVALID, f"multipart body has no {h.MULTIPART_FIELD!r} field")
        if isinstance(field, UploadFile):
            data = await field.read()
            part_type = h.media_type(field.content_type)
        else:
            data, part_type = field.encode(), ""
        declared = h.IMAGE_TYPES.get(part_type)
        if declared is None and part_type not in ("", "application/octet-stream"):
            raise h.HttpError(415, f"unsupported type {part_type!r} of the {h.MULTIPART_FIELD!r} field",
                              "unsupported_type")
        return data, declared
    finally:
        await form.close()

