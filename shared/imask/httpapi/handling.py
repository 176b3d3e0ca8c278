"""What the HTTP API decides, apart from any server: options from the query string, the image's type, content
negotiation, the deadline header, the mapping of mask-api's errors (servicer.RequestError, gRPC codes) to HTTP
statuses and headers, and the JSON and headers of a reply. Tested in tests/unit/httpapi without a server."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import grpc

from imask.engine import MaskShape, MaskStyle
from imask.maskapi.servicer import RequestError
from imask.media import ImageError, sniff_size
from imask.v1 import mask_service_pb2 as mpb

INVALID = grpc.StatusCode.INVALID_ARGUMENT

STYLE_NAMES = {MaskStyle.BLUR.value: mpb.MASK_STYLE_BLUR, MaskStyle.PIXELATE.value: mpb.MASK_STYLE_PIXELATE,
               MaskStyle.SOLID.value: mpb.MASK_STYLE_SOLID}
SHAPE_NAMES = {MaskShape.ELLIPSE.value: mpb.MASK_SHAPE_ELLIPSE, MaskShape.BOX.value: mpb.MASK_SHAPE_BOX}
QUERY_PARAMETERS = {
    "style": f"Mask style: {', '.join(STYLE_NAMES)} (default: the variant's)",
    "shape": f"Mask shape: {', '.join(SHAPE_NAMES)} (default: the variant's)",
    "scale": "Mask scale around each face box, 1.0 and up (default: the variant's)",
    "threshold": "Detection threshold; may only be lower than the variant's (more masking, never less)",
    "camera": "Camera id the request's frames.meta record is written under (an API key bound to cameras may only "
              "name its own)",
    "seq": "Sequence number echoed back and written to frames.meta",
}
IMAGE_TYPES = {"image/jpeg": "jpeg", "image/png": "png"}
MEDIA_TYPE = {"jpeg": "image/jpeg", "png": "image/png"}
MULTIPART = "multipart/form-data"
MULTIPART_FIELD = "image"
TIMEOUT_HEADER = "x-request-timeout-ms"
MAX_TIMEOUT_MS = 600_000

# mask-api's outcomes (gRPC codes, shared with the gRPC API) as HTTP statuses.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
REASON_STATUS = {"too_large": 413, "unsupported_type": 415}


class HttpError(RequestError):
    """A refusal of the HTTP layer itself (its status is not one of a gRPC code's)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason)
        self.status = status


def http_status(error: RequestError) -> int:
    if isinstance(error, HttpError):
        return error.status
    return REASON_STATUS.get(error.reason) or HTTP_STATUS.get(error.code, 500)


def error_headers(error: RequestError) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    if error.retry_after_s:
        headers["Retry-After"] = str(error.retry_after_s)
    if http_status(error) == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="imask"'
    return headers


def error_body(error: RequestError) -> dict[str, Any]:
    return {"status": http_status(error), "code": error.code.name if not isinstance(error, HttpError) else
            error.reason or "BAD_REQUEST", "message": str(error)}


def parse_options(query: Mapping[str, str]) -> tuple[mpb.MaskOptions, str, int]:
    """(mask options, camera id or "", seq) from the query string; unknown or malformed parameters are refused.
    Range checks are the servicer's, the same as gRPC's (scale and threshold must be given as non-zero numbers:
    zero would mean "the variant's" in the protobuf)."""
    unknown = sorted(set(query) - set(QUERY_PARAMETERS))
    if unknown:
        raise RequestError(INVALID, f"unknown query parameter(s) {', '.join(unknown)}; known: "
                           f"{', '.join(QUERY_PARAMETERS)}")
    options = mpb.MaskOptions()
    if "style" in query:
        if query["style"] not in STYLE_NAMES:
            raise RequestError(INVALID, f"unknown mask style {query['style']!r}; one of {', '.join(STYLE_NAMES)}")
        options.style = STYLE_NAMES[query["style"]]
    if "shape" in query:
        if query["shape"] not in SHAPE_NAMES:
            raise RequestError(INVALID, f"unknown mask shape {query['shape']!r}; one of {', '.join(SHAPE_NAMES)}")
        options.shape = SHAPE_NAMES[query["shape"]]
    for name, field in (("scale", "mask_scale"), ("threshold", "threshold")):
        if name in query:
            value = _number(name, query[name])
            if value == 0:
                raise RequestError(INVALID, f"{name} 0 is out of range")
            setattr(options, field, value)
    seq = 0
    if "seq" in query:
        try:
            seq = int(query["seq"])
        except ValueError:
            raise RequestError(INVALID, f"seq must be an integer, got {query['seq']!r}") from None
        if not 0 <= seq < 2**63:
            raise RequestError(INVALID, f"seq {seq} out of range")
    return options, query.get("camera", ""), seq


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RequestError(INVALID, f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise RequestError(INVALID, f"{name} must be finite, got {text!r}")
    return value


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def body_kind(content_type: str | None) -> str:
    """jpeg or png (the body is the image), multipart (a form with an `image` field); 415 otherwise."""
    kind = media_type(content_type)
    if kind in IMAGE_TYPES:
        return IMAGE_TYPES[kind]
    if kind == MULTIPART:
        return "multipart"
    raise HttpError(415, f"unsupported Content-Type {kind or '(none)'!r}: send image/jpeg, image/png, or "
                    f"{MULTIPART} with the image in a field named {MULTIPART_FIELD!r}", "unsupported_type")


def image_format(data: bytes, declared: str | None) -> str:
    """The reply's encoding: the request's format. `declared`: jpeg or png (the body's or the part's Content-Type),
    None when the part did not say. A body that is plainly another format than declared is refused (400); bytes of
    no known format are left for the decoder to refuse."""
    try:
        actual = sniff_size(data)[0] if data else declared
    except ImageError:
        actual = declared
    if declared is not None and actual != declared:
        raise RequestError(INVALID, f"Content-Type says {MEDIA_TYPE[declared]} but the body is "
                           f"{MEDIA_TYPE.get(actual or '', 'something else')}")
    return actual or "jpeg"


def wants_json(accept: str | None, image_type: str) -> bool:
    """Content negotiation: JSON (detections, no pixels) when the client prefers application/json to the image's
    own type; the image when it prefers that, sends no Accept or accepts anything."""
    best_json = best_image = -1.0
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        kind = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if kind == "application/json":
            best_json = max(best_json, q)
        elif kind in (image_type, "image/*", "*/*"):
            best_image = max(best_image, q - (0.001 if kind != image_type else 0))  # exact types win ties
    return best_json > 0 and best_json >= best_image


def parse_timeout(headers: Mapping[str, str]) -> float | None:
    """Seconds the client waits (X-Request-Timeout-Ms), as gRPC's deadline; None without the header."""
    text = headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    value = _number("X-Request-Timeout-Ms", text)
    if not 0 < value <= MAX_TIMEOUT_MS:
        raise RequestError(INVALID, f"X-Request-Timeout-Ms must be in (0, {MAX_TIMEOUT_MS}], got {text!r}")
    return value / 1e3


def reply_headers(reply: mpb.MaskReply, cache: str) -> dict[str, str]:
    headers = {
        "X-Faces-Masked": str(len(reply.detections)),
        "X-Model-Version": reply.model_version,
        "X-Variant": reply.variant,
        "X-Fail-Closed": "true" if reply.fail_closed else "false",
        "X-Cache": cache,
        "Cache-Control": "no-store",  # masked pictures of people: no shared cache keeps them
    }
    if reply.fail_closed:
        headers["X-Fail-Closed-Reason"] = reply.fail_closed_reason or "unknown"
    return headers


def reply_json(reply: mpb.MaskReply, cache: str) -> dict[str, Any]:
    t = reply.timings
    return {
        "width": reply.width, "height": reply.height, "variant": reply.variant, "model_version": reply.model_version,
        "faces_masked": len(reply.detections), "fail_closed": reply.fail_closed,
        "fail_closed_reason": reply.fail_closed_reason, "seq": reply.seq, "cache": cache,
        "detections": [{"box": [round(d.x1, 2), round(d.y1, 2), round(d.x2, 2), round(d.y2, 2)],
                        "score": round(d.score, 4), "landmarks": [[round(p.x, 2), round(p.y, 2)] for p in d.landmarks],
                        "track_id": d.track_id, "held": d.held} for d in reply.detections],
        "timings_ms": {name: round(getattr(t, f"{name}_ms"), 3) for name in
                       ("decode", "queue_wait", "inference", "mask", "encode", "end_to_end")},
    }
