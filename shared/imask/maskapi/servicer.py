"""MaskService: Mask (unary) and MaskStream (bidirectional, ordered, with temporal persistence per stream).

Every reply carries masked pixels only: on detector failure the image is the fail-closed frame and says so.
Status codes tell the client what happened: INVALID_ARGUMENT (undecodable or oversize image, bad option),
RESOURCE_EXHAUSTED (rate limit, queue full), DEADLINE_EXCEEDED, UNAVAILABLE (model not ready).

`MaskServicer.mask_image` is the one request path of both transports: the HTTP API (imask.httpapi) calls it with the
same checks, limits, queue and result cache, and maps its `RequestError`s to HTTP statuses.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import cv2
import grpc

from imask.engine import FrameInput, MaskShape, MaskSpec, MaskStyle
from imask.engine.masks import MAX_MASK_SCALE, MIN_MASK_SCALE
from imask.engine.variants import Variant
from imask.frames.clock import now_us
from imask.frames.ids import check_camera_id
from imask.frames.meta import add_detections, build_meta
from imask.maskapi.cache import ENCODINGS, CacheRequest, ResultCache, bypasses, scope_of
from imask.maskapi.executor import DeadlineExpired, EngineExecutor, EngineFailed, QueueFull
from imask.maskapi.ratelimit import RateLimiter
from imask.media import ImageError, decode_image, encode_jpeg
from imask.ops import metrics
from imask.ops.grpc_auth import ApiKeyStore, AuthError, Client, extract_key
from imask.ops.settings import MaskApiSettings
from imask.v1 import frames_pb2 as pb
from imask.v1 import mask_service_pb2 as mpb
from imask.v1 import mask_service_pb2_grpc as mgrpc

log = logging.getLogger(__name__)

STYLES = {mpb.MASK_STYLE_BLUR: MaskStyle.BLUR, mpb.MASK_STYLE_PIXELATE: MaskStyle.PIXELATE,
          mpb.MASK_STYLE_SOLID: MaskStyle.SOLID}
SHAPES = {mpb.MASK_SHAPE_ELLIPSE: MaskShape.ELLIPSE, mpb.MASK_SHAPE_BOX: MaskShape.BOX}


class RequestError(Exception):
    """A refused request. `reason` narrows the code where a transport tells more (HTTP: too_large is 413, not 400);
    `retry_after_s` says when a refused client may try again (rate limit, busy)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", retry_after_s: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.retry_after_s = retry_after_s


class MaskServicer(mgrpc.MaskServiceServicer):
    def __init__(self, settings: MaskApiSettings, store: ApiKeyStore | None, limiter: RateLimiter | None,
                 meta_sink: Any = None, cache: ResultCache | None = None) -> None:
        self.settings = settings
        self.store = store
        self.limiter = limiter
        self.meta_sink = meta_sink  # callable(camera_id, FrameMeta) or None
        self.cache = cache
        self.executor: EngineExecutor | None = None
        self.variant: Variant | None = None

    def attach(self, executor: EngineExecutor) -> None:
        """The engine is loaded and warm: start serving."""
        self.executor = executor
        self.variant = executor.engine.variant

    # --- RPCs ---------------------------------------------------------------------------------------------------
    async def Mask(self, request: mpb.MaskRequest, context: grpc.aio.ServicerContext) -> mpb.MaskReply:
        key = f"unary:{uuid.uuid4().hex}"  # no persistence across unary calls: each image stands alone
        try:
            return await self._guarded("Mask", request, context, key, 0, unary=True)
        finally:
            if self.executor is not None:
                self.executor.forget(key)

    async def MaskStream(self, request_iterator: AsyncIterator[mpb.MaskRequest],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[mpb.MaskReply]:
        key = f"stream:{uuid.uuid4().hex}"  # one tracker per stream: faces stay masked between detections
        index = 0
        try:
            async for request in request_iterator:
                yield await self._guarded("MaskStream", request, context, key, index)
                index += 1
        finally:
            if self.executor is not None:
                self.executor.forget(key)

    # --- one image ----------------------------------------------------------------------------------------------
    async def _guarded(self, method: str, request: mpb.MaskRequest, context: grpc.aio.ServicerContext, key: str,
                       index: int, unary: bool = False) -> mpb.MaskReply:
        try:
            caller = self._client(context)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            encoding = "none" if request.options.detections_only else "jpeg"
            metadata = context.invocation_metadata() or ()
            scope = scope_of(extract_key(metadata) if caller else None)
            # Streams never use the cache: a stream's replies depend on its earlier frames (its tracker). A unary
            # caller skips it with `cache-control: no-cache` metadata.
            cache = "none" if not unary else "bypass" if any(
                name == "cache-control" and bypasses(str(value)) for name, value in metadata) else "use"
            reply, _ = await self.mask_image(request, caller, scope, deadline, key, index, encoding=encoding,
                                             transport="grpc", cache=cache)
        except RequestError as exc:
            metrics.GRPC_REQUESTS.labels(method, exc.code.name).inc()
            await context.abort(exc.code, str(exc))
        metrics.GRPC_REQUESTS.labels(method, "OK").inc()
        return reply

    def _client(self, context: grpc.aio.ServicerContext) -> Client | None:
        """The caller (None with auth off)."""
        return self.authenticate(context.invocation_metadata())

    def authenticate(self, metadata: Any) -> Client | None:
        """The caller of metadata pairs (gRPC metadata, or HTTP headers with lower-case names); None with auth off."""
        if self.store is None:
            return None
        try:
            return self.store.authenticate(metadata)
        except AuthError as exc:  # gRPC: the interceptor refuses these first; kept as a second line
            raise RequestError(exc.code, str(exc), reason="auth") from None

    def _camera(self, request: mpb.MaskRequest, caller: Client | None) -> str:
        """The camera id the request's frames.meta record is written under: checked against the one pattern and,
        with auth on, against the ids the caller's key may publish."""
        client = caller.client_id if caller else "anonymous"
        if not request.camera_id:
            return f"grpc:{client}"
        try:
            check_camera_id(request.camera_id)
        except ValueError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if caller is not None and not caller.may_publish(request.camera_id):
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED, f"key of {client!r} may not publish camera "
                               f"{request.camera_id!r}; list it under \"cameras\" in the keys file")
        return request.camera_id

    async def mask_image(self, request: mpb.MaskRequest, caller: Client | None, scope: str, deadline: float | None,
                         key: str, index: int, *, encoding: str = "jpeg", transport: str = "grpc",
                         cache: str = "use") -> tuple[mpb.MaskReply, str]:
        """One image through the checks (readiness, camera binding, rate limit, size, options, queue), the result
        cache and the engine: the reply (pixels in `encoding`: jpeg, png or none) and what the cache did (hit,
        miss, bypass, off). `caller` is the authenticated client (None with auth off), `scope` its cache scope
        (cache.scope_of), `deadline` a time.monotonic() value; `cache`: use, bypass (the client asked: masked
        afresh and not stored) or none (not cacheable: stream frames). Raises RequestError."""
        s = self.settings
        if self.executor is None or self.variant is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "model not ready yet", reason="not_ready",
                               retry_after_s=1)
        assert encoding in ENCODINGS, encoding
        client = caller.client_id if caller else "anonymous"
        camera = self._camera(request, caller)
        if self.limiter is not None and not await self.limiter.allow(client):
            window = s.rate_limit_window_s
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"rate limit of {s.rate_limit} per {window} s for {client!r} exceeded",
                               reason="rate_limit", retry_after_s=max(1, math.ceil(window - time.time() % window)))
        if not request.image:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "image is empty")
        if len(request.image) > s.max_frame_bytes:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"image of {len(request.image)} bytes exceeds {s.max_frame_bytes}", reason="too_large")
        spec, threshold = self._options(request.options)
        t0 = time.perf_counter()
        cache_state = "off"
        lookup = None
        if self.cache is not None and self.cache.enabled and cache != "none":
            cache_state = "bypass"
            if cache == "use":
                lookup = CacheRequest(hashlib.sha256(request.image).hexdigest(), self.variant.model_version, spec,
                                      threshold, encoding, scope)
                hit = await self.cache.get(lookup, transport)
                if hit is not None:  # the engine is not called, and no frames.meta record is written again
                    hit.seq = request.seq
                    hit.timings.end_to_end_ms = (time.perf_counter() - t0) * 1e3
                    metrics.observe_stage("end_to_end", self.variant.name, f"{transport}_cache_hit",
                                          hit.timings.end_to_end_ms)
                    return hit, "hit"
                cache_state = "miss"
            else:
                metrics.RESULT_CACHE.labels(transport, "bypass").inc()
        if self.executor.full():  # refuse before paying for the decode
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: the engine queue is full",
                               reason="queue_full", retry_after_s=1)
        try:
            image = decode_image(request.image, s.max_width, s.max_height)
        except ImageError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"image refused: {exc}") from None
        decode_ms = (time.perf_counter() - t0) * 1e3
        if deadline is not None and time.monotonic() > deadline:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before masking")
        try:
            result, queue_ms = await self.executor.submit(FrameInput(key, index, image), spec, threshold, deadline)
        except QueueFull as exc:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {exc}", reason="queue_full",
                               retry_after_s=1) from None
        except DeadlineExpired:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before masking") from None
        except EngineFailed as exc:
            raise RequestError(grpc.StatusCode.INTERNAL, f"masking failed, no image returned: {exc}") from None
        t1 = time.perf_counter()
        data = _encode(result.image, encoding)
        encode_ms = (time.perf_counter() - t1) * 1e3
        timings = pb.StageTimings(decode_ms=decode_ms, queue_wait_ms=queue_ms, preprocess_ms=result.preprocess_ms,
                                  inference_ms=result.inference_ms, postprocess_ms=result.postprocess_ms,
                                  mask_ms=result.mask_ms, encode_ms=encode_ms, batch_size=result.batch_size,
                                  end_to_end_ms=(time.perf_counter() - t0) * 1e3)
        for stage in ("decode", "queue_wait", "inference", "mask", "encode", "end_to_end"):
            metrics.observe_stage(stage, self.variant.name, transport, getattr(timings, f"{stage}_ms"))
        if self.meta_sink is not None:
            self.meta_sink(camera, build_meta(self.executor.engine, s.instance_id, result, image, timings,
                                              camera_id=camera, seq=request.seq,
                                              capture_ts_us=request.capture_ts_us, masked_ts_us=now_us()))
        reply = mpb.MaskReply(
            image=data, timings=timings, variant=self.variant.name,
            model_version=self.variant.model_version, fail_closed=result.fail_closed,
            fail_closed_reason=result.fail_closed_reason, seq=request.seq, width=image.shape[1],
            height=image.shape[0],
        )
        add_detections(reply.detections, result)
        if lookup is not None and self.cache is not None:
            await self.cache.put(lookup, reply, transport)
        return reply, cache_state

    def _options(self, options: mpb.MaskOptions) -> tuple[MaskSpec, float | None]:
        assert self.variant is not None
        base = self.variant.mask
        if options.style not in (mpb.MASK_STYLE_UNSPECIFIED, *STYLES):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown mask style {options.style}")
        if options.shape not in (mpb.MASK_SHAPE_UNSPECIFIED, *SHAPES):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown mask shape {options.shape}")
        scale = options.mask_scale or base.scale
        if not MIN_MASK_SCALE <= scale <= MAX_MASK_SCALE:  # also refuses NaN
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"mask_scale {scale} outside {MIN_MASK_SCALE}..{MAX_MASK_SCALE}")
        spec = MaskSpec(STYLES.get(options.style, base.style), SHAPES.get(options.shape, base.shape), scale)
        threshold = options.threshold or None
        highest = self.settings.threshold_max or self.variant.threshold
        if threshold is not None and not self.settings.threshold_min <= threshold <= highest:  # refuses NaN too
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"threshold {threshold} outside "
                               f"{self.settings.threshold_min}..{highest}")
        return spec, threshold


def _encode(image: Any, encoding: str) -> bytes:
    if encoding == "none":
        return b""
    if encoding == "png":
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RequestError(grpc.StatusCode.INTERNAL, "PNG encoding failed, no image returned")
        return bytes(buf.tobytes())
    return encode_jpeg(image, 90)
