"""Many cameras in one ingest process: add, remove, list, watch their states, raise alerts, serve the admin API.

The manager's `tick` (called a few times a second by the ingest loop) turns each camera's state into metrics,
log lines and, on the transitions an operator must hear about, events on the `alerts` topic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from imask.cameras.admin_policy import SourceRefused, authorized, check_admin_source
from imask.cameras.camera import AckCallback, Camera, CameraState
from imask.cameras.config import CameraConfig, CameraConfigError, camera_config
from imask.frames.clock import now_us
from imask.frames.envelope import end_of_stream
from imask.ops import metrics
from imask.ops.settings import IngestSettings
from imask.streaming.producer import Delivery, Outbox
from imask.v1 import alerts_pb2
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)

TROUBLE = (CameraState.STALLED, CameraState.RECONNECTING)
RECOVERY_S = 1.0  # a camera in trouble counts as running again after this long of regular frames


class ShuttingDown(RuntimeError):
    pass


class KafkaOutbox:
    """The ingest's messages on the library's one producer helper: frames to frames.raw, drop records to
    frames.dlq, events to alerts."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        # Frames are bounded per camera (max_inflight); the process-wide bound only has to hold the small records
        # (drops, alerts) as well, so it is generous. Acknowledgements come from a poll thread of the helper's,
        # whatever the rest of the process is doing (draining, stopping the gRPC server, waiting on cameras).
        # client.id names this ingest to the broker: quotas and broker logs can single it out.
        self.outbox = Outbox(settings, max_inflight=100_000, poll_thread=True, **{"client.id": settings.instance_id})

    @property
    def failed(self) -> int:
        return self.outbox.failed

    def frame(self, camera_id: str, value: bytes, on_ack: AckCallback) -> None:
        """Raises BufferError (QueueFull) when the producer has no room: the camera decides (drop or wait)."""
        def delivered(delivery: Delivery) -> None:
            if not delivery.ok:
                log.error("frame not delivered", extra={"camera": camera_id, "error": delivery.error})
            on_ack(delivery.ok, delivery.error)

        self.outbox.send(self.settings.topic_raw, camera_id, value, delivered, wait=False)

    def drop(self, camera_id: str, seq: int, reason: pb.DropReason, detail: str) -> None:
        record = pb.DropRecord(camera_id=camera_id, seq=seq, reason=reason, detail=detail, stage="ingest",
                               ts_us=now_us(), worker_id=self.settings.instance_id)
        self._send(self.settings.topic_dlq, camera_id, record.SerializeToString())

    def end_of_stream(self, camera_id: str, seq: int, fps: float) -> None:
        self._send(self.settings.topic_raw, camera_id, end_of_stream(camera_id, seq, fps).SerializeToString())

    def alert(self, event: alerts_pb2.AlertEvent) -> None:
        self._send(self.settings.topic_alerts, event.camera_id, event.SerializeToString())

    def _send(self, topic: str, camera_id: str, value: bytes) -> None:
        def delivered(delivery: Delivery) -> None:
            if not delivery.ok:
                log.error("message not delivered", extra={"camera": camera_id, "topic": topic,
                                                          "error": delivery.error})

        self.outbox.send(topic, camera_id, value, delivered)  # waits for room: these records are never skipped

    def close(self, timeout: float) -> int:
        """Deliver what is queued; returns how many messages are still undelivered."""
        return self.outbox.close(timeout)


class CameraManager:
    def __init__(self, settings: IngestSettings, outbox: KafkaOutbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self.cameras: dict[str, Camera] = {}
        self.retired: list[Camera] = []  # removed, still draining their last frames
        self.ever_added = 0
        self.closing = False
        self.external: set[str] = set()  # camera ids published through the gRPC stream
        self._states: dict[str, CameraState] = {}
        self._trouble_since: dict[str, float] = {}
        self._lock = threading.RLock()

    # -- operations -----------------------------------------------------------------------------------------

    def taken(self, camera_id: str) -> bool:
        """An id this ingest already numbers frames for (a camera, one still draining, or a gRPC producer):
        a second source under the same id would restart its sequence numbers."""
        with self._lock:
            return (camera_id in self.cameras or camera_id in self.external
                    or any(c.id == camera_id for c in self.retired))

    def claim_external(self, camera_id: str) -> bool:
        """Reserve an id for the gRPC stream; False when a camera of this ingest has it."""
        with self._lock:
            if camera_id in self.external:
                return True
            if self.taken(camera_id):
                return False
            self.external.add(camera_id)
            return True

    def release_external(self, camera_id: str) -> None:
        """The gRPC streams' id table let this camera go (bounded): its id may be taken again."""
        with self._lock:
            self.external.discard(camera_id)

    def add(self, config: CameraConfig) -> Camera:
        with self._lock:
            if self.closing:
                raise ShuttingDown("this ingest is shutting down")
            if self.taken(config.camera_id):
                raise CameraConfigError(f"camera {config.camera_id!r} already exists (remove it first)")
            camera = Camera(config, self.outbox, self.settings.max_frame_bytes).start()
            self.cameras[camera.id] = camera
            self.ever_added += 1
        log.info("camera added", extra={"camera": camera.id, "url": config.redacted_url,
                                        "drop_policy": config.drop_policy})
        return camera

    def remove(self, camera_id: str) -> Camera:
        with self._lock:
            camera = self.cameras.pop(camera_id, None)
            if camera is None:
                raise KeyError(camera_id)
            camera.ended_reason = "removed"
            camera.stop()
            self.retired.append(camera)
        log.info("camera removed", extra={"camera": camera_id})
        return camera

    def stop_all(self, timeout: float) -> None:
        with self._lock:
            self.closing = True  # from here the admin API adds nothing that would escape the drain
            cameras = list(self.cameras.values()) + self.retired
        for camera in cameras:
            camera.stop()
        deadline = time.monotonic() + timeout
        for camera in cameras:
            if not camera.join(max(0.0, deadline - time.monotonic())):
                log.error("camera did not finish in time", extra={"camera": camera.id})

    def release_sources(self) -> list[str]:
        """After stop_all: wait for every grabber to release its source, each within its own bound (a blocked
        open or read ends at its timeout). Returns the cameras whose grabber is still inside its source."""
        with self._lock:
            cameras = list(self.cameras.values()) + self.retired
        deadline = time.monotonic() + max((c.grabber_bound_s for c in cameras), default=0.0)
        stuck = [c.id for c in cameras if not c.join_grabber(max(0.0, deadline - time.monotonic()))]
        if stuck:
            log.error("camera source not released in time", extra={"cameras": stuck})
        return stuck

    def all_ended(self) -> bool:
        with self._lock:
            return self.ever_added > 0 and all(c.finished for c in [*self.cameras.values(), *self.retired])

    def list(self) -> list[dict[str, object]]:
        now = time.monotonic()
        with self._lock:
            return [self.status(c, now) for c in self.cameras.values()]

    def status(self, camera: Camera, now: float | None = None) -> dict[str, object]:
        """The camera's status with the state operators see everywhere (metrics, alerts, admin API): the
        watched one, recovery hysteresis included."""
        status = camera.status(time.monotonic() if now is None else now)
        watched = self._states.get(camera.id)
        if watched is not None and not camera.finished:
            status["state"] = watched.value
        return status

    # -- watching -------------------------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            cameras = list(self.cameras.values())
            for camera in [c for c in self.retired if c.finished]:
                self.retired.remove(camera)
                self._states.pop(camera.id, None)
                self._trouble_since.pop(camera.id, None)
                metrics.forget_camera(camera.id)
        for camera in cameras:
            self._observe(camera, now)

    def _observe(self, camera: Camera, now: float) -> None:
        state = camera.state(now)
        previous_state = self._states.get(camera.id)
        if previous_state in TROUBLE and state == CameraState.RUNNING and now - camera.steady_since < RECOVERY_S:
            # Not a recovery yet: a frozen camera's buffered frames trickle out one per read timeout, and a
            # flapping one drops right after opening.
            state = previous_state
        metrics.CAMERA_FPS.labels(camera.id, "in").set(camera.fps_in.rate(now))
        metrics.CAMERA_FPS.labels(camera.id, "out").set(camera.fps_out.rate(now))
        if camera.last_frame_at is not None:
            metrics.CAMERA_SECONDS_SINCE_FRAME.labels(camera.id).set(now - camera.last_frame_at)
        previous = self._states.get(camera.id)
        if state == previous:
            return
        self._states[camera.id] = state
        for each in CameraState:
            metrics.CAMERA_STATE.labels(camera.id, each.value).set(1 if each == state else 0)
        log_extra = {"camera": camera.id, "state": state.value, "previous": previous and previous.value,
                     "error": camera.last_error}
        log.log(logging.WARNING if state in TROUBLE else logging.INFO, "camera state", extra=log_extra)
        if state in TROUBLE and camera.id not in self._trouble_since:
            self._trouble_since[camera.id] = camera.last_frame_at or camera.started_at
            silent = now - (camera.last_frame_at or camera.started_at)
            if state == CameraState.STALLED:
                kind, detail = "camera_stalled", f"no frame for {silent:.1f} s"
            elif previous in (None, CameraState.STARTING):
                kind, detail = "camera_unreachable", camera.last_error
            else:
                kind, detail = "camera_down", camera.last_error
            self._alert(camera, kind, alerts_pb2.SEVERITY_WARNING, state, previous, detail)
        elif state == CameraState.RUNNING and camera.id in self._trouble_since:
            since = self._trouble_since.pop(camera.id)
            gap = max(0.0, (camera.last_frame_at or now) - since)
            metrics.CAMERA_GAP.labels(camera.id).inc(gap)
            log.info("camera recovered", extra={"camera": camera.id, "gap_s": round(gap, 3)})
            self._alert(camera, "camera_recovered", alerts_pb2.SEVERITY_INFO, state, previous,
                        f"frames again after a gap of {gap:.1f} s", gap)

    def _alert(self, camera: Camera, kind: str, severity: alerts_pb2.Severity, state: CameraState,
               previous: CameraState | None, detail: str, gap_s: float = 0.0) -> None:
        event = alerts_pb2.AlertEvent(
            ts_us=now_us(), kind=kind, severity=severity, source=self.settings.instance_id, camera_id=camera.id,
            state=state.value, previous_state=previous.value if previous else "", detail=detail, gap_s=gap_s,
            labels={"service": "ingest", "url": camera.config.redacted_url})
        self.outbox.alert(event)

    # -- admin API (JSON on its own listener: ops.admin, IMASK_INGEST_ADMIN_HOST/PORT) ----------------------

    def admin(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Any] | None:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if not parts or parts[0] != "cameras" or len(parts) > 2:
            return None
        if not authorized(self.settings, headers):
            return 401, {"error": "admin token required (Authorization: Bearer ...)"}
        camera_id = parts[1] if len(parts) == 2 else None
        if method == "GET" and camera_id is None:
            return 200, {"cameras": self.list()}
        if method == "GET" and camera_id is not None:
            camera = self.cameras.get(camera_id)
            if camera is None:
                return 404, {"error": f"no camera {camera_id!r}"}
            return 200, self.status(camera)
        if method == "POST" and camera_id is None:
            try:
                fields = json.loads(body or b"{}")
                if not isinstance(fields, dict):
                    raise ValueError("expected a JSON object")
                config = camera_config(self.settings, fields)
                check_admin_source(config.url, self.settings)
            except SourceRefused as exc:
                return 403, {"error": str(exc)}
            except (ValueError, CameraConfigError) as exc:
                return 400, {"error": str(exc)}
            try:
                camera = self.add(config)
            except CameraConfigError as exc:
                return 409, {"error": str(exc)}
            except ShuttingDown as exc:
                return 503, {"error": str(exc)}
            return 201, self.status(camera)
        if method == "DELETE" and camera_id is not None:
            try:
                camera = self.remove(camera_id)
            except KeyError:
                return 404, {"error": f"no camera {camera_id!r}"}
            return 200, {"removed": camera_id, "frames": camera.next_seq}
        return 405, {"error": f"{method} not allowed on {path}"}
