"""The worker's per-frame logic without Kafka: envelope check, decode, mask, encode, outputs or a drop record.

The worker service only moves bytes between Kafka and this; tests drive it directly as well.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from imask.engine import EngineResult, FrameInput, MaskingEngine, MaskSpec
from imask.frames.clock import now_us
from imask.frames.envelope import Rejected, parse_frame, salvage_ids
from imask.frames.meta import build_meta
from imask.media import ImageError, decode_image, encode_jpeg
from imask.ops import metrics
from imask.ops.settings import FrameLimits
from imask.streaming.loop import Inbound
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)


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
    # Largest masked-frame message the broker takes: a re-encoded frame can outgrow its input.
    max_message_bytes: int = 8 * 1024 * 1024


# Room left for the envelope's other fields and Kafka's record overhead under max_message_bytes.
MESSAGE_HEADROOM = 4096
FALLBACK_JPEG_QUALITY = 60
# imask_frames_dead_lettered_total's reasons: the DropReason names a worker dead-letters with, every one but
# UNSPECIFIED and the ingest's own INGEST_STALE.
DEAD_LETTER_REASONS = tuple(value.name for value in pb.DropReason.DESCRIPTOR.values
                            if value.name not in ("DROP_REASON_UNSPECIFIED", "DROP_REASON_INGEST_STALE"))


def internal_error(inbound: Inbound, camera_id: str, seq: int, detail: str) -> Rejected:
    """A frame that could not be processed safely: a drop record, never a crash or a pass-through."""
    if not camera_id:
        salvaged_camera, salvaged_seq = salvage_ids(inbound.value or b"")
        camera_id = salvaged_camera or (inbound.key or b"").decode("utf-8", "replace")
        seq = salvaged_seq or 0
    return Rejected(pb.DROP_REASON_INTERNAL_ERROR, detail, camera_id, seq)


class FrameProcessor:
    def __init__(self, engine: MaskingEngine, options: ProcessorOptions) -> None:
        self.engine = engine
        self.options = options

    def process(self, batch: list[Inbound]) -> list[Outcome]:
        """Exactly one outcome per inbound message, in order; never raises. Whatever fails for one frame (a bug,
        an encoder error, an engine failure outside its own guards) becomes that frame's INTERNAL_ERROR drop
        record, so a poison message cannot stop the worker and every worker after it on the same offset."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        to_mask: list[tuple[int, pb.Frame, np.ndarray, float]] = []
        for i, inbound in enumerate(batch):
            try:
                prepared = self._prepare(inbound)
            except Exception as exc:
                log.exception("frame preparation failed", extra={"partition": inbound.partition,
                                                                 "offset": inbound.offset})
                prepared = self._drop(inbound, internal_error(inbound, "", 0, f"prepare: {exc!r}"), "prepare")
            if isinstance(prepared, Outcome):
                outcomes[i] = prepared
            else:
                to_mask.append((i, *prepared))
        if to_mask:
            results: list[EngineResult] = []
            try:
                results = self.engine.process(
                    [FrameInput(frame.camera_id, frame.seq, image,
                                frame.rotation if frame.HasField("rotation") else None)
                     for _, frame, image, _ in to_mask],
                    self.options.spec)
            except Exception as exc:
                log.exception("engine failed outside its guards")
                for i, frame, _, _ in to_mask:
                    outcomes[i] = self._drop(batch[i], internal_error(batch[i], frame.camera_id, frame.seq,
                                                                      f"engine: {exc!r}"), "mask")
                to_mask = []
            for (i, frame, image, decode_ms), result in zip(to_mask, results, strict=True):
                try:
                    outcomes[i] = self._masked(batch[i], frame, image, decode_ms, result)
                except Exception as exc:
                    log.exception("masked frame could not be built", extra={"camera": frame.camera_id})
                    outcomes[i] = self._drop(batch[i], internal_error(batch[i], frame.camera_id, frame.seq,
                                                                      f"encode: {exc!r}"), "encode")
        return [o for o in outcomes if o is not None]

    def _prepare(self, inbound: Inbound) -> Outcome | tuple[pb.Frame, np.ndarray, float]:
        """Validate and decode one message: its drop or end-of-stream outcome, or (frame, pixels, decode ms)."""
        parsed = parse_frame(inbound.key, inbound.value, self.options.limits)
        if isinstance(parsed, Rejected):
            return self._drop(inbound, parsed, "validate")
        metrics.FRAMES_IN.labels(parsed.camera_id).inc()
        if parsed.end_of_stream:
            return self._end_of_stream(inbound, parsed)
        t0 = time.perf_counter()
        try:
            image = decode_image(parsed.data, self.options.limits.max_width, self.options.limits.max_height)
        except ImageError as exc:
            reason = pb.DROP_REASON_OVERSIZE if "exceeds" in str(exc) else pb.DROP_REASON_CORRUPT_IMAGE
            return self._drop(inbound, Rejected(reason, str(exc), parsed.camera_id, parsed.seq), "decode")
        if (parsed.width, parsed.height) != (image.shape[1], image.shape[0]):
            return self._drop(inbound, Rejected(
                pb.DROP_REASON_DIMENSION_MISMATCH,
                f"declared {parsed.width}x{parsed.height}, decoded {image.shape[1]}x{image.shape[0]}",
                parsed.camera_id, parsed.seq), "decode")
        return parsed, image, (time.perf_counter() - t0) * 1e3

    def _masked(self, inbound: Inbound, frame: pb.Frame, image: np.ndarray, decode_ms: float,
                result: EngineResult) -> Outcome:
        t0 = time.perf_counter()
        budget = self.options.max_message_bytes - MESSAGE_HEADROOM
        data = encode_jpeg(result.image, self.options.jpeg_quality)
        if len(data) > budget:  # a re-encoded frame can outgrow its input: try once more, smaller
            data = encode_jpeg(result.image, min(self.options.jpeg_quality, FALLBACK_JPEG_QUALITY))
        if len(data) > budget:
            return self._drop(inbound, Rejected(
                pb.DROP_REASON_OVERSIZE, f"masked frame of {len(data)} bytes exceeds the broker's message size "
                f"({self.options.max_message_bytes})", frame.camera_id, frame.seq), "encode")
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
        # A fresh marker from the ids alone: nothing of the inbound message beyond them is passed on.
        marker = pb.Frame(schema_version=frame.schema_version, camera_id=frame.camera_id, seq=frame.seq,
                          capture_ts_us=frame.capture_ts_us, ingest_ts_us=frame.ingest_ts_us, end_of_stream=True,
                          trace_id=frame.trace_id, source_fps=frame.source_fps)
        masked = pb.MaskedFrame(frame=marker, variant=self.engine.variant.name, masked_ts_us=now_us(),
                                worker_id=self.options.worker_id)
        meta = pb.FrameMeta(camera_id=frame.camera_id, seq=frame.seq, capture_ts_us=frame.capture_ts_us,
                            ingest_ts_us=frame.ingest_ts_us, masked_ts_us=masked.masked_ts_us,
                            variant=self.engine.variant.name, worker_id=self.options.worker_id, end_of_stream=True)
        return Outcome(inbound, frame.camera_id, frame.seq, masked=masked, meta=meta)

    def drop(self, inbound: Inbound, rejected: Rejected, stage: str) -> Outcome:
        """The drop-record outcome of a message (also for failures found after processing, e.g. at produce)."""
        return self._drop(inbound, rejected, stage)

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
