"""MaskService: Mask (unary) and MaskStream (bidirectional, ordered, with temporal persistence per stream).

Every reply carries masked pixels only: on detector failure the image is the fail-closed frame and says so.
Status codes tell the client what happened: INVALID_ARGUMENT (undecodable or oversize image, bad option),
RESOURCE_EXHAUSTED (rate limit, queue full), DEADLINE_EXCEEDED, UNAVAILABLE (model not ready).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from imask.engine import FrameInput, MaskShape, MaskSpec, MaskStyle
from imask.engine.masks import MAX_MASK_SCALE, MIN_MASK_SCALE
from imask.engine.variants import Variant
from imask.frames.clock import now_us
from imask.frames.ids import check_camera_id
from imask.frames.meta import add_detections, build_meta
from imask.maskapi.executor import DeadlineExpired, EngineExecutor, EngineFailed, QueueFull
from imask.maskapi.ratelimit import RateLimiter
from imask.media import ImageError, decode_image, encode_jpeg
from imask.ops import metrics
from imask.ops.grpc_auth import ApiKeyStore, AuthError, Client
from imask.ops.settings import MaskApiSettings
from imask.v1 import frames_pb2 as pb
from imask.v1 import mask_service_pb2 as mpb
from imask.v1 import mask_service_pb2_grpc as mgrpc

log = logging.getLogger(__name__)

STYLES = {mpb.MASK_STYLE_BLUR: MaskStyle.BLUR, mpb.MASK_STYLE_PIXELATE: MaskStyle.PIXELATE,
          mpb.MASK_STYLE_SOLID: MaskStyle.SOLID}
SHAPES = {mpb.MASK_SHAPE_ELLIPSE: MaskShape.ELLIPSE, mpb.MASK_SHAPE_BOX: MaskShape.BOX}


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class MaskServicer(mgrpc.MaskServiceServicer):
    def __init__(self, settings: MaskApiSettings, store: ApiKeyStore | None, limiter: RateLimiter | None,
                 meta_sink: Any = None) -> None:
        self.settings = settings
        self.store = store
        self.limiter = limiter
        self.meta_sink = meta_sink  # callable(camera_id, FrameMeta) or None
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
            return await self._guarded("Mask", request, context, key, 0)
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
                       index: int) -> mpb.MaskReply:
        try:
            reply = await self._mask_one(request, context, key, index)
        except RequestError as exc:
            metrics.GRPC_REQUESTS.labels(method, exc.code.name).inc()
            await context.abort(exc.code, str(exc))
        metrics.GRPC_REQUESTS.labels(method, "OK").inc()
        return reply

    def _client(self, context: grpc.aio.ServicerContext) -> Client | None:
        """The caller (None with auth off)."""
        if self.store is None:
            return None
        try:
            return self.store.authenticate(context.invocation_metadata())
        except AuthError as exc:  # the interceptor refuses these first; kept as a second line
            raise RequestError(exc.code, str(exc)) from None

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

    async def _mask_one(self, request: mpb.MaskRequest, context: grpc.aio.ServicerContext, key: str,
                        index: int) -> mpb.MaskReply:
        s = self.settings
        if self.executor is None or self.variant is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "model not ready yet")
        caller = self._client(context)
        client = caller.client_id if caller else "anonymous"
        camera = self._camera(request, caller)
        if self.limiter is not None and not await self.limiter.allow(client):
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"rate limit of {s.rate_limit} per {s.rate_limit_window_s} s for {client!r} exceeded")
        if not request.image:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "image is empty")
        if len(request.image) > s.max_frame_bytes:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"image of {len(request.image)} bytes exceeds {s.max_frame_bytes}")
        spec, threshold = self._options(request.options)
        if self.executor.full():  # refuse before paying for the decode
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: the engine queue is full")
        t0 = time.perf_counter()
        try:
            image = decode_image(request.image, s.max_width, s.max_height)
        except ImageError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"image refused: {exc}") from None
        decode_ms = (time.perf_counter() - t0) * 1e3
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            result, queue_ms = await self.executor.submit(FrameInput(key, index, image), spec, threshold, deadline)
        except QueueFull as exc:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {exc}") from None
        except DeadlineExpired:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before masking") from None
        except EngineFailed as exc:
            raise RequestError(grpc.StatusCode.INTERNAL, f"masking failed, no image returned: {exc}") from None
        t1 = time.perf_counter()
        data = b"" if request.options.detections_only else encode_jpeg(result.image, 90)
        encode_ms = (time.perf_counter() - t1) * 1e3
        timings = pb.StageTimings(decode_ms=decode_ms, queue_wait_ms=queue_ms, preprocess_ms=result.preprocess_ms,
                                  inference_ms=result.inference_ms, postprocess_ms=result.postprocess_ms,
                                  mask_ms=result.mask_ms, encode_ms=encode_ms, batch_size=result.batch_size,
                                  end_to_end_ms=(time.perf_counter() - t0) * 1e3)
        for stage in ("decode", "queue_wait", "inference", "mask", "encode", "end_to_end"):
            metrics.observe_stage(stage, self.variant.name, "grpc", getattr(timings, f"{stage}_ms"))
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
        return reply

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
