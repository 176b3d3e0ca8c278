"""The worker's per-frame logic without Kafka: envelope check, decode, mask, encode, outputs or a drop record.

The worker service only moves bytes between Kafka and this; tests drive it directly as well.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from imask import metrics
from imask.config import FrameLimits
from imask.engine import EngineResult, FrameInput, MaskingEngine, MaskSpec
from imask.media import ImageError, decode_image, encode_jpeg
from imask.types import Image
from imask.v1 import frames_pb2 as pb
from imask.wire import Rejected, now_us, parse_frame

log = logging.getLogger(__name__)


@dataclass
class Inbound:
    key: bytes | None
    value: bytes | None
    topic: str = ""
    partition: int = -1
    offset: int = -1
    received_us: int = 0


@dataclass
class Outcome:
    """Exactly one per inbound message: a masked frame with its metadata, or a drop record."""

    inbound: Inbound
    camera_id: str
    seq: int
    masked: pb.MaskedFrame | None = None
    meta: pb.FrameMeta | None = None
    drop: pb.DropRecord | None = None


@dataclass(frozen=True)
class ProcessorOptions:
    worker_id: str
    limits: FrameLimits
    jpeg_quality: int = 85
    dlq_include_raw: bool = False
    spec: MaskSpec | None = None


class FrameProcessor:
    def __init__(self, engine: MaskingEngine, options: ProcessorOptions) -> None:
        self.engine = engine
        self.options = options

    def process(self, batch: list[Inbound]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        to_mask: list[tuple[int, pb.Frame, np.ndarray, float]] = []
        for i, inbound in enumerate(batch):
            parsed = parse_frame(inbound.key, inbound.value, self.options.limits)
            if isinstance(parsed, Rejected):
                outcomes[i] = self._drop(inbound, parsed, "validate")
                continue
            metrics.FRAMES_IN.labels(parsed.camera_id).inc()
            if parsed.end_of_stream:
                outcomes[i] = self._end_of_stream(inbound, parsed)
                continue
            t0 = time.perf_counter()
            try:
                image = decode_image(parsed.data, self.options.limits.max_width, self.options.limits.max_height)
            except ImageError as exc:
                reason = pb.DROP_REASON_OVERSIZE if "exceeds" in str(exc) else pb.DROP_REASON_CORRUPT_IMAGE
                outcomes[i] = self._drop(inbound, Rejected(reason, str(exc), parsed.camera_id, parsed.seq), "decode")
                continue
            if (parsed.width, parsed.height) != (image.shape[1], image.shape[0]):
                outcomes[i] = self._drop(inbound, Rejected(
                    pb.DROP_REASON_DIMENSION_MISMATCH,
                    f"declared {parsed.width}x{parsed.height}, decoded {image.shape[1]}x{image.shape[0]}",
                    parsed.camera_id, parsed.seq), "decode")
                continue
            to_mask.append((i, parsed, image, (time.perf_counter() - t0) * 1e3))

        if to_mask:
            results = self.engine.process(
                [FrameInput(frame.camera_id, frame.seq, image) for _, frame, image, _ in to_mask], self.options.spec
            )
            for (i, frame, image, decode_ms), result in zip(to_mask, results, strict=True):
                outcomes[i] = self._masked(batch[i], frame, image, decode_ms, result)
        return [o for o in outcomes if o is not None]

    def _masked(self, inbound: Inbound, frame: pb.Frame, image: np.ndarray, decode_ms: float,
                result: EngineResult) -> Outcome:
        t0 = time.perf_counter()
        data = encode_jpeg(result.image, self.options.jpeg_quality)
        encode_ms = (time.perf_counter() - t0) * 1e3
        engine = self.engine
        masked_ts = now_us()
        out_frame = pb.Frame(
            schema_version=frame.schema_version, camera_id=frame.camera_id, seq=frame.seq,
            capture_ts_us=frame.capture_ts_us, ingest_ts_us=frame.ingest_ts_us, encoding=pb.ENCODING_JPEG,
            width=frame.width, height=frame.height, data=data, trace_id=frame.trace_id, source_fps=frame.source_fps,
        )
        masked = pb.MaskedFrame(
            frame=out_frame, variant=engine.variant.name, model_version=engine.variant.model_version,
            faces_masked=len(result.faces), fail_closed=result.fail_closed,
            fail_closed_reason=result.fail_closed_reason, masked_ts_us=masked_ts, worker_id=self.options.worker_id,
        )
        timings = pb.StageTimings(
            decode_ms=decode_ms,
            queue_wait_ms=max(0.0, (inbound.received_us - frame.ingest_ts_us) / 1e3) if inbound.received_us else 0.0,
            preprocess_ms=result.preprocess_ms, inference_ms=result.inference_ms,
            postprocess_ms=result.postprocess_ms, mask_ms=result.mask_ms, encode_ms=encode_ms,
            batch_size=result.batch_size,
        )
        meta = build_meta(engine, self.options.worker_id, result, image, timings, camera_id=frame.camera_id,
                          seq=frame.seq, capture_ts_us=frame.capture_ts_us, ingest_ts_us=frame.ingest_ts_us,
                          masked_ts_us=masked_ts, trace_id=frame.trace_id)
        return Outcome(inbound, frame.camera_id, frame.seq, masked=masked, meta=meta)

    def _end_of_stream(self, inbound: Inbound, frame: pb.Frame) -> Outcome:
        masked = pb.MaskedFrame(frame=frame, variant=self.engine.variant.name, masked_ts_us=now_us(),
                                worker_id=self.options.worker_id)
        meta = pb.FrameMeta(camera_id=frame.camera_id, seq=frame.seq, capture_ts_us=frame.capture_ts_us,
                            ingest_ts_us=frame.ingest_ts_us, masked_ts_us=masked.masked_ts_us,
                            variant=self.engine.variant.name, worker_id=self.options.worker_id, end_of_stream=True)
        return Outcome(inbound, frame.camera_id, frame.seq, masked=masked, meta=meta)

    def _drop(self, inbound: Inbound, rejected: Rejected, stage: str) -> Outcome:
        reason_name = pb.DropReason.Name(rejected.reason)
        metrics.FRAMES_DEAD_LETTERED.labels(reason_name).inc()
        log.warning("frame dead-lettered", extra={"camera": rejected.camera_id, "seq": rejected.seq,
                                                  "reason": reason_name, "detail": rejected.detail,
                                                  "partition": inbound.partition, "offset": inbound.offset})
        raw = inbound.value or b""
        record = pb.DropRecord(
            camera_id=rejected.camera_id, seq=rejected.seq, reason=rejected.reason, detail=rejected.detail[:500],
            stage=stage, ts_us=now_us(), worker_id=self.options.worker_id, source_topic=inbound.topic,
            source_partition=inbound.partition, source_offset=inbound.offset, raw_size=len(raw),
            raw=raw if self.options.dlq_include_raw else b"", seq_unknown=rejected.seq_unknown,
        )
        return Outcome(inbound, rejected.camera_id, rejected.seq, drop=record)


def detections_pb(result: EngineResult) -> list[pb.Detection]:
    return [
        pb.Detection(x1=f.box[0], y1=f.box[1], x2=f.box[2], y2=f.box[3], score=f.score,
                     landmarks=[pb.Point(x=x, y=y) for x, y in f.landmarks], track_id=f.track_id, held=f.held)
        for f in result.faces
    ]


def build_meta(engine: MaskingEngine, worker_id: str, result: EngineResult, image: Image,
               timings: pb.StageTimings, **ids: str | int) -> pb.FrameMeta:
    """The per-frame metadata record (no pixels) of one engine result; the worker and mask-api both emit it."""
    return pb.FrameMeta(
        width=image.shape[1], height=image.shape[0], variant=engine.variant.name,
        model_version=engine.variant.model_version, worker_id=worker_id,
        execution_provider=engine.execution_provider, detections=detections_pb(result), timings=timings,
        fail_closed=result.fail_closed, fail_closed_reason=result.fail_closed_reason,
        faces_masked=len(result.faces), brightness=float(image[::8, ::8].mean()), **ids,  # type: ignore[arg-type]
    )
