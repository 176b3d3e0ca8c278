"""What the console keeps from the topics it reads: per camera the newest masked picture (never a raw one: the
console reads frames.masked, never frames.raw), its recent per-frame figures from frames.meta, its last alert; and
the recent alert events. In memory only, bounded: one picture per camera, `history_s` of figures per camera, the
last `max_alerts` events. Pure state, fed by `tap.FrameTap` (or a test) and read by the pages."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from imask.v1 import alerts_pb2
from imask.v1 import frames_pb2 as pb

SEVERITY = {alerts_pb2.SEVERITY_INFO: "info", alerts_pb2.SEVERITY_WARNING: "warning",
            alerts_pb2.SEVERITY_CRITICAL: "critical"}


@dataclass(frozen=True)
class Picture:
    """The newest masked frame of a camera as served to the preview."""

    camera_id: str
    seq: int
    data: bytes
    content_type: str
    width: int
    height: int
    fail_closed: bool
    fail_closed_reason: str
    faces: int
    capture_ts_us: int
    received: float  # wall clock seconds when the console read it


@dataclass(frozen=True)
class Sample:
    at: float  # wall clock seconds (capture time)
    end_to_end_ms: float
    faces: int
    fail_closed: bool


@dataclass
class CameraLive:
    picture: Picture | None = None
    samples: deque[Sample] = field(default_factory=deque)
    last_alert: dict[str, Any] | None = None
    masked_frames: int = 0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def alert_dict(event: alerts_pb2.AlertEvent) -> dict[str, Any]:
    return {"ts": event.ts_us / 1e6, "kind": event.kind, "severity": SEVERITY.get(event.severity, "unknown"),
            "source": event.source, "camera": event.camera_id, "state": event.state, "detail": event.detail}


class LiveState:
    def __init__(self, history_s: float = 300.0, max_alerts: int = 200) -> None:
        self.history_s = history_s
        self._lock = threading.Lock()
        self._cameras: dict[str, CameraLive] = {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)

    def _camera(self, camera_id: str) -> CameraLive:
        return self._cameras.setdefault(camera_id, CameraLive())

    def on_masked(self, masked: pb.MaskedFrame, now: float | None = None) -> None:
        frame = masked.frame
        if frame.end_of_stream or not frame.data:
            return
        content_type = "image/png" if frame.encoding == pb.ENCODING_PNG else "image/jpeg"
        picture = Picture(frame.camera_id, frame.seq, bytes(frame.data), content_type, frame.width, frame.height,
                          masked.fail_closed, masked.fail_closed_reason, masked.faces_masked, frame.capture_ts_us,
                          time.time() if now is None else now)
        with self._lock:
            live = self._camera(frame.camera_id)
            # By capture time: a frame redelivered or arriving late never replaces a newer one, while a restarted
            # stream (seq from 0 again) does.
            if live.picture is None or picture.capture_ts_us >= live.picture.capture_ts_us:
                live.picture = picture
            live.masked_frames += 1

    def on_meta(self, meta: pb.FrameMeta, now: float | None = None) -> None:
        if meta.end_of_stream:
            return
        sample = Sample(meta.capture_ts_us / 1e6, meta.timings.end_to_end_ms, meta.faces_masked, meta.fail_closed)
        with self._lock:
            samples = self._camera(meta.camera_id).samples
            samples.append(sample)
            self._trim(samples, time.time() if now is None else now)

    def on_alert(self, event: alerts_pb2.AlertEvent) -> None:
        row = alert_dict(event)
        with self._lock:
            self._alerts.append(row)
            if event.camera_id:
                self._camera(event.camera_id).last_alert = row

    def _trim(self, samples: deque[Sample], now: float) -> None:
        while samples and samples[0].at < now - self.history_s:
            samples.popleft()

    # -- reads ---------------------------------------------------------------------------------------------------

    def cameras(self) -> list[str]:
        with self._lock:
            return sorted(self._cameras)

    def picture(self, camera_id: str) -> Picture | None:
        with self._lock:
            live = self._cameras.get(camera_id)
            return live.picture if live else None

    def last_alert(self, camera_id: str) -> dict[str, Any] | None:
        with self._lock:
            live = self._cameras.get(camera_id)
            return live.last_alert if live else None

    def alerts(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._alerts))

    def samples(self, camera_id: str, now: float | None = None) -> list[Sample]:
        with self._lock:
            live = self._cameras.get(camera_id)
            if live is None:
                return []
            now = time.time() if now is None else now
            self._trim(live.samples, now)
            return [s for s in live.samples if s.at >= now - self.history_s]  # late ones may sit behind

    def figures(self, camera_id: str, window_s: float = 60.0, now: float | None = None) -> dict[str, Any]:
        """End-to-end p99, faces per frame and fail-closed share over the last `window_s`, and how far the newest
        masked picture is behind the wall clock (lag)."""
        now = time.time() if now is None else now
        recent = [s for s in self.samples(camera_id, now) if s.at >= now - window_s]
        picture = self.picture(camera_id)
        return {
            "frames": len(recent),
            "end_to_end_p99_ms": percentile([s.end_to_end_ms for s in recent], 99),
            "faces_per_frame": sum(s.faces for s in recent) / len(recent) if recent else None,
            "fail_closed_rate": sum(s.fail_closed for s in recent) / len(recent) if recent else None,
            "lag_s": max(0.0, now - picture.capture_ts_us / 1e6) if picture else None,
        }

    def series(self, camera_id: str, bin_s: float = 5.0, now: float | None = None) -> list[dict[str, Any]]:
        """The camera's history in bins of `bin_s`: start time, p99 end to end, mean faces per frame, frames."""
        bins: dict[int, list[Sample]] = {}
        for sample in self.samples(camera_id, now):
            bins.setdefault(int(sample.at // bin_s), []).append(sample)
        return [{"t": key * bin_s, "end_to_end_p99_ms": percentile([s.end_to_end_ms for s in group], 99),
                 "faces_per_frame": sum(s.faces for s in group) / len(group), "frames": len(group)}
                for key, group in sorted(bins.items())]
