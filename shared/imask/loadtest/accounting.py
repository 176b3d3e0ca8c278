"""Exact accounting of a stream from frames.meta and frames.dlq: every sequence number of every camera must end
as one masked frame or one drop record. Used by `imask run`, the tests and (later) load reports."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from imask.v1 import frames_pb2 as pb

STAGES = ("decode", "queue_wait", "preprocess", "inference", "postprocess", "mask", "encode", "publish",
          "end_to_end")


@dataclass
class CameraLedger:
    masked: set[int] = field(default_factory=set)
    dropped: dict[int, str] = field(default_factory=dict)
    end_seq: int | None = None  # frames in the stream, known from the end-of-stream marker
    duplicates: int = 0
    order_violations: int = 0
    last_seq: int = -1
    fail_closed: int = 0
    faces: int = 0
    held_faces: int = 0
    unattributed: int = 0  # drop records whose envelope was too damaged to name a seq


    def accounted(self) -> set[int]:
        return self.masked | set(self.dropped)

    def complete(self) -> bool:
        # A damaged envelope's drop record cannot say which seq it was; it still accounts for one frame.
        return self.end_seq is not None and len(self.missing()) <= self.unattributed

    def missing(self) -> list[int]:
        return [] if self.end_seq is None else sorted(set(range(self.end_seq)) - self.accounted())


STEADY_AFTER_S = 3.0


class StreamLedger:
    def __init__(self, cameras: set[str] | None = None) -> None:
        self.cameras = cameras  # None: account every camera seen
        self.by_camera: dict[str, CameraLedger] = defaultdict(CameraLedger)
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.drop_reasons: Counter[str] = Counter()
        self.fail_closed_reasons: Counter[str] = Counter()
        self.first_capture_us: int | None = None
        self.last_masked_us: int | None = None
        self.end_to_end: list[tuple[int, float]] = []  # (capture time, end-to-end ms) per masked frame

    def _wanted(self, camera: str) -> bool:
        return self.cameras is None or camera in self.cameras

    def add_meta(self, meta: pb.FrameMeta) -> None:
        if not self._wanted(meta.camera_id):
            return
        cam = self.by_camera[meta.camera_id]
        if meta.end_of_stream:
            cam.end_seq = meta.seq
            return
        if meta.seq in cam.masked:
            cam.duplicates += 1  # at-least-once redelivery after a crash or rebalance
            return
        if meta.seq < cam.last_seq and meta.seq not in cam.dropped:
            cam.order_violations += 1
        cam.last_seq = max(cam.last_seq, meta.seq)
        cam.masked.add(meta.seq)
        cam.faces += meta.faces_masked
        cam.held_faces += sum(d.held for d in meta.detections)
        if meta.fail_closed:
            cam.fail_closed += 1
            self.fail_closed_reasons[meta.fail_closed_reason] += 1
        for stage in STAGES:
            value = getattr(meta.timings, f"{stage}_ms")
            if value > 0:
                self.timings[stage].append(value)
        if meta.capture_ts_us and meta.timings.end_to_end_ms > 0:
            self.end_to_end.append((meta.capture_ts_us, meta.timings.end_to_end_ms))
        if meta.capture_ts_us:
            first = self.first_capture_us
            self.first_capture_us = meta.capture_ts_us if first is None else min(first, meta.capture_ts_us)
        last = self.last_masked_us
        self.last_masked_us = meta.masked_ts_us if last is None else max(last, meta.masked_ts_us)

    def add_drop(self, record: pb.DropRecord) -> None:
        if not self._wanted(record.camera_id):
            return
        cam = self.by_camera[record.camera_id]
        reason = pb.DropReason.Name(record.reason)
        if record.seq_unknown:
            cam.unattributed += 1
            self.drop_reasons[reason] += 1
            return
        if record.seq in cam.dropped:
            cam.duplicates += 1
            return
        cam.dropped[record.seq] = reason
        self.drop_reasons[reason] += 1

    def complete(self) -> bool:
        cams = self.cameras if self.cameras is not None else set(self.by_camera)
        return bool(cams) and all(self.by_camera[c].complete() for c in cams)

    def summary(self) -> dict[str, object]:
        frames_in = sum(c.end_seq or 0 for c in self.by_camera.values())
        masked = sum(len(c.masked) for c in self.by_camera.values())
        dropped = sum(len(c.dropped) + c.unattributed for c in self.by_camera.values())
        span_s = ((self.last_masked_us or 0) - (self.first_capture_us or 0)) / 1e6
        return {
            "cameras": {
                name: {"frames_in": c.end_seq, "masked": len(c.masked), "dropped": len(c.dropped) + c.unattributed,
                       "missing": len(c.missing()), "duplicates": c.duplicates,
                       "order_violations": c.order_violations, "fail_closed": c.fail_closed,
                       "faces_masked": c.faces, "faces_held_by_tracker": c.held_faces}
                for name, c in sorted(self.by_camera.items())
            },
            "frames_in": frames_in,
            "frames_masked": masked,
            "frames_dropped": dropped,
            "drop_reasons": dict(self.drop_reasons),
            "fail_closed": sum(c.fail_closed for c in self.by_camera.values()),
            "fail_closed_reasons": dict(self.fail_closed_reasons),
            "faces_masked": sum(c.faces for c in self.by_camera.values()),
            "duplicates": sum(c.duplicates for c in self.by_camera.values()),
            "unaccounted": sum(max(0, len(c.missing()) - c.unattributed) for c in self.by_camera.values()),
            "masked_fps": round(masked / span_s, 2) if span_s > 0 else None,
            "latency_ms": percentiles(self.timings),
            # Start-up excluded: frames captured STEADY_AFTER_S or more after the run's first frame (every
            # camera's first frames need a full detection, and the consumers' first fetches are slow).
            "end_to_end_ms_steady": summarize([ms for ts, ms in self.end_to_end
                                               if ts - (self.first_capture_us or 0) >= STEADY_AFTER_S * 1e6]),
        }


def summarize(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max and count of a list of latencies (ms); empty for no values. The one percentile helper."""
    if not values:
        return {}
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2),
            "max": round(float(max(values)), 2), "n": len(values)}


def percentiles(timings: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {stage: summarize(timings[stage]) for stage in STAGES if timings.get(stage)}
