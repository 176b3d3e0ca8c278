"""One live camera: a grabber thread that decodes and keeps only what the drop policy allows, a publisher thread
that encodes and sends, and the state an NVR would show.

Every decoded frame that passes the target-fps decimation gets the camera's next sequence number, and each
sequence number ends exactly once: as a published frame, or as a drop record (superseded by a newer frame,
Kafka backpressure, oversize). Frames never decoded during an outage get no number; the outage is a gap,
reported when the camera recovers.
"""

from __future__ import annotations

import collections
import enum
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2

from imask.cameras.capture import Backoff, SourceError, open_source
from imask.cameras.config import CameraConfig
from imask.frames.clock import now_us
from imask.frames.envelope import make_frame
from imask.media import VideoInfo, encode_jpeg
from imask.ops import metrics
from imask.types import Image
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)
FPS_WINDOW_S = 5.0
STEADY_S = 10.0  # a connection that lasted this long resets the reconnect backoff
STOP_WAIT_S = 30.0  # complete policy: after a stop, how long frames may wait for Kafka before they are dropped
# What the ingest counts per camera: frames dropped by reason (imask_camera_frames_dropped_total, and
# imask_frames_dropped_total as ingest_<reason>) and errors by kind (imask_camera_errors_total).
DROP_REASONS = ("superseded", "backpressure", "oversize", "delivery_failed", "internal")
ERROR_KINDS = ("open", "read")


def is_webcam(url: str) -> bool:
    return url.isascii() and url.isdigit()


class CameraState(enum.StrEnum):
    STARTING = "starting"          # first open not done yet
    RUNNING = "running"
    STALLED = "stalled"            # open, but no frame for stall_after_s (or under min_fps)
    BLOCKED = "blocked"            # Kafka cannot take frames as fast as they come (backpressure)
    RECONNECTING = "reconnecting"  # lost or never reached; retrying with backoff
    ENDED = "ended"                # file finished, max_frames reached, removed or stopped


class Outbox(Protocol):
    """Where a camera's messages go (the ingest's Kafka producer)."""

    def frame(self, camera_id: str, value: bytes, on_ack: AckCallback) -> None:
        """Queue a frame; raises BufferError when the producer's queue is full."""

    def drop(self, camera_id: str, seq: int, reason: pb.DropReason, detail: str) -> None: ...

    def end_of_stream(self, camera_id: str, seq: int, fps: float) -> None: ...


class AckCallback(Protocol):
    def __call__(self, ok: bool, error: str = "") -> None: ...


@dataclass
class GrabbedFrame:
    seq: int
    image: Image
    capture_us: int
    grabbed_at: float  # time.monotonic() when read() returned it


class FrameSlot:
    """Hand-over between grabber and publisher.

    realtime: one slot, a new frame replaces the one waiting (the publisher always gets the newest).
    complete: a bounded queue; the grabber waits when it is full (and stops reading the camera: backpressure).
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._frames: collections.deque[GrabbedFrame] = collections.deque()
        self._cond = threading.Condition()
        self.closed = False

    def put(self, make: Callable[[], GrabbedFrame], stop: threading.Event,
            on_wait: Callable[[bool], None]) -> GrabbedFrame | None:
        """Hand over the frame `make()` builds, or None when the slot is closed (or stop is set while waiting
        for room). `make` runs under the slot's lock, so numbering a frame and closing the slot never interleave:
        once closed, no new sequence number is handed out."""
        with self._cond:
            waited = False
            while self.capacity is not None and len(self._frames) >= self.capacity and not self.closed:
                if stop.is_set():
                    break
                if not waited:
                    on_wait(True)
                    waited = True
                self._cond.wait(0.1)
            if waited:
                on_wait(False)
            if self.closed or (self.capacity is not None and len(self._frames) >= self.capacity):
                return None
            if self.capacity is None:
                self._frames.clear()  # the replaced frame's seq becomes a gap the publisher records
            frame = make()
            self._frames.append(frame)
            self._cond.notify_all()
            return frame

    def take(self, timeout: float) -> GrabbedFrame | None:
        with self._cond:
            if not self._frames and not self.closed:
                self._cond.wait(timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def drained(self) -> bool:
        with self._cond:
            return self.closed and not self._frames


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = FPS_WINDOW_S) -> None:
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()
        self._since: float | None = None
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        with self._lock:
            if self._since is None:
                self._since = now
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float) -> float:
        """Over the window, or since the first event when that is shorter (a camera that just started)."""
        with self._lock:
            self._trim(now)
            span = self.window_s if self._since is None else min(self.window_s, now - self._since)
            return len(self._times) / span if span >= 1.0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()


def cap_resolution(image: Image, max_width: int, max_height: int) -> Image:
    height, width = image.shape[:2]
    scale = min(max_width / width if max_width else 1.0, max_height / height if max_height else 1.0)
    if scale >= 1.0:
        return image
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class Camera:
    def __init__(self, config: CameraConfig, outbox: Outbox, max_frame_bytes: int) -> None:
        self.config = config
        self.id = config.camera_id
        self.outbox = outbox
        self.max_frame_bytes = max_frame_bytes
        self.slot = FrameSlot(None if config.drop_policy == "realtime" else config.queue_frames)
        self._stop = threading.Event()
        self._ended = threading.Event()  # set by the publisher once the end-of-stream marker is out
        self._failed_seqs: list[tuple[int, str]] = []  # delivery failures, turned into drop records
        self._give_up_at = 0.0
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self.phase = CameraState.STARTING  # what the grabber is doing; state() adds stalled/blocked on top
        self.info: VideoInfo | None = None
        self.target_fps = 0.0
        self.next_seq = 0
        self.handled_seq = -1  # the publisher has accounted for every seq up to this one
        self.inflight = 0
        self.started_at = time.monotonic()
        self.last_frame_at: float | None = None
        self.running_since: float | None = None
        self.steady_since = 0.0  # first frame after the last gap longer than stall_after_s
        self.blocked_since: float | None = None  # publisher waiting for Kafka (or, realtime, skipping)
        self.grab_blocked_since: float | None = None  # complete policy: grabber waiting for the publisher
        self.ended_reason = ""
        self.last_error = ""
        self.last_age_ms = 0.0
        self.max_age_ms = 0.0
        self.counts: collections.Counter[str] = collections.Counter()
        self.fps_in = RateMeter()
        self.fps_out = RateMeter()
        self._grabber = threading.Thread(target=self._grab_loop, name=f"grab-{self.id}", daemon=True)
        self._publisher = threading.Thread(target=self._publish_loop, name=f"pub-{self.id}", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> Camera:
        # The camera's fault counters at 0 from its start (metrics.forget_camera removes them with the camera).
        metrics.zero_series(metrics.CAMERA_DROPPED, camera=[self.id], reason=DROP_REASONS)
        metrics.zero_series(metrics.CAMERA_ERRORS, camera=[self.id], kind=ERROR_KINDS)
        metrics.zero_series(metrics.CAMERA_RECONNECTS, camera=[self.id])
        metrics.zero_series(metrics.CAMERA_GAP, camera=[self.id])
        self._grabber.start()
        self._publisher.start()
        return self

    def stop(self) -> None:
        """Ask both threads to finish; the publisher drains what was decoded and ends the stream."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """True when the publisher has finished (end of stream sent). It does not wait for the grabber: that
        may sit in a blocking read of a frozen camera until the read timeout, then finds the slot closed and
        leaves without numbering another frame (see join_grabber)."""
        self._publisher.join(timeout)
        return not self._publisher.is_alive()

    @property
    def grabber_bound_s(self) -> float:
        """How long a stopped grabber can still take to leave: one open plus one read, each bounded by its
        timeout (streams), and a margin for releasing the capture."""
        return self.config.open_timeout_s + self.config.read_timeout_s + 2.0

    def join_grabber(self, timeout: float) -> bool:
        """True when the grabber has left and released its capture. The process must not exit before: a thread
        still inside FFmpeg when the interpreter finalizes is killed by forced unwinding through OpenCV's C++
        frames, and the process aborts (SIGABRT, seen on CI when stopping four RTSP cameras at once)."""
        self._grabber.join(timeout)
        return not self._grabber.is_alive()

    @property
    def finished(self) -> bool:
        return self._ended.is_set()

    # -- state ----------------------------------------------------------------------------------------------

    def state(self, now: float) -> CameraState:
        if self._ended.is_set():
            return CameraState.ENDED
        if self.phase in (CameraState.ENDED, CameraState.STARTING, CameraState.RECONNECTING):
            return self.phase
        if self.blocked_since is not None or self.grab_blocked_since is not None:
            return CameraState.BLOCKED
        silent = now - (self.last_frame_at or self.started_at)
        if silent > self.config.stall_after_s:
            return CameraState.STALLED
        if (self.config.min_fps and self.running_since is not None and now - self.running_since > FPS_WINDOW_S
                and self.fps_in.rate(now) < self.config.min_fps):
            return CameraState.STALLED
        return CameraState.RUNNING

    def status(self, now: float) -> dict[str, object]:
        since = None if self.last_frame_at is None else round(now - self.last_frame_at, 3)
        return {
            "camera_id": self.id, "url": self.config.redacted_url, "state": self.state(now).value,
            "drop_policy": self.config.drop_policy, "target_fps": round(self.target_fps, 3),
            "source": None if self.info is None else {"fps": round(self.info.fps, 3), "width": self.info.width,
                                                      "height": self.info.height},
            "fps_in": round(self.fps_in.rate(now), 2), "fps_out": round(self.fps_out.rate(now), 2),
            "seconds_since_frame": since, "next_seq": self.next_seq, "inflight": self.inflight,
            "age_at_publish_ms": {"last": round(self.last_age_ms, 1), "max": round(self.max_age_ms, 1)},
            "counts": dict(self.counts), "last_error": self.last_error, "ended_reason": self.ended_reason,
        }

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    # -- grabber --------------------------------------------------------------------------------------------

    def _grab_loop(self) -> None:
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        try:
            while not self._stop.is_set():
                try:
                    cap, info = open_source(self.config)
                except SourceError as exc:
                    self._open_failed(str(exc))
                    if not self.config.is_stream and not is_webcam(self.config.url):
                        self.ended_reason = "cannot open"
                        return  # a missing file does not appear by retrying
                    if self._stop.wait(backoff.next_delay()):
                        return
                    continue
                opened_at = time.monotonic()
                try:
                    finished = self._read(cap, info)
                finally:
                    cap.release()
                    log.info("camera source released", extra={"camera": self.id})
                if finished:
                    return
                metrics.CAMERA_RECONNECTS.labels(self.id).inc()
                self._count("reconnects")
                self.phase = CameraState.RECONNECTING
                if time.monotonic() - opened_at >= STEADY_S:
                    backoff.reset()  # it was healthy: reconnect at once, the first retry is the likeliest
                elif self._stop.wait(backoff.next_delay()):
                    return  # it keeps dropping right after opening: back off instead of hammering it
        except Exception as exc:  # a bug must not take other cameras down; the camera ends, visibly
            log.exception("camera grabber failed", extra={"camera": self.id})
            self.last_error = f"internal error: {exc}"
            self.ended_reason = "internal error"
        finally:
            if not self.ended_reason:
                self.ended_reason = "stopped"
            self.slot.close()

    def _open_failed(self, error: str) -> None:
        if error != self.last_error:
            log.warning("camera open failed", extra={"camera": self.id, "error": error})
        self.last_error = error
        metrics.CAMERA_ERRORS.labels(self.id, "open").inc()
        self._count("open_failures")
        self.phase = CameraState.RECONNECTING

    def _read(self, cap: cv2.VideoCapture, info: VideoInfo) -> bool:
        """Read until the source fails (False: reconnect) or the camera is done (True)."""
        cfg = self.config
        self.info = info
        self.target_fps = min(cfg.fps, info.fps) if cfg.fps else info.fps
        interval = 1.0 / self.target_fps
        source_interval = 1.0 / info.fps
        paced = not cfg.is_stream and cfg.pace == "source"
        decimate = self.target_fps < info.fps * 0.99
        opened_at = time.monotonic()
        read_count = 0
        next_due = 0.0
        log.info("camera opened", extra={"camera": self.id, "url": cfg.redacted_url, "fps": info.fps,
                                         "width": info.width, "height": info.height,
                                         "target_fps": self.target_fps})
        while not self._stop.is_set():
            if paced:
                wait = opened_at + read_count * source_interval - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
            ok, image = cap.read()
            now = time.monotonic()
            if not ok or image is None or image.size == 0:
                if not cfg.is_stream:
                    if cfg.loop and read_count > 0:
                        if cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                            opened_at, read_count = now, 0
                            continue
                        return False  # the container cannot seek: reopen it
                    self.ended_reason = "end of file"
                    return True
                self.last_error = "stream lost: read failed or timed out"
                metrics.CAMERA_ERRORS.labels(self.id, "read").inc()
                self._count("read_errors")
                log.warning("camera stream lost", extra={"camera": self.id})
                return False
            read_count += 1
            self._frame_arrived(now)
            if decimate:
                if now + 0.5 * source_interval < next_due:
                    metrics.CAMERA_FRAMES.labels(self.id, "decimated").inc()
                    self._count("decimated")
                    continue
                # Network jitter bunches frames: keep the long-run rate, but never owe more than one frame.
                next_due = max(next_due + interval, now - interval)
            if self.slot.put(functools.partial(self._number, image, now), self._stop, self._set_blocked) is None:
                break  # closed (stopping): the frame gets no number
            if cfg.max_frames and self.next_seq >= cfg.max_frames:
                self.ended_reason = "max_frames reached"
                return True
        return True

    def _number(self, image: Image, grabbed_at: float) -> GrabbedFrame:
        """Runs under the slot's lock (see FrameSlot.put)."""
        frame = GrabbedFrame(self.next_seq, image, now_us(), grabbed_at)
        self.next_seq += 1
        return frame

    def _frame_arrived(self, now: float) -> None:
        if self.last_frame_at is None or now - self.last_frame_at > self.config.stall_after_s:
            self.steady_since = now
        self.last_frame_at = now
        if self.phase != CameraState.RUNNING:
            self.phase = CameraState.RUNNING
            self.running_since = self.steady_since = now
        self.fps_in.tick(now)
        metrics.CAMERA_FRAMES.labels(self.id, "decoded").inc()
        self._count("decoded")

    def _set_blocked(self, blocked: bool) -> None:
        self.grab_blocked_since = time.monotonic() if blocked else None

    # -- publisher ------------------------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        try:
            while True:
                if self._stop.is_set() and not self.slot.closed:
                    self.slot.close()  # no new numbers from here; what was decoded is still published
                frame = self.slot.take(0.2)
                if frame is not None:
                    self._skip_to(frame.seq)
                    self._publish_safely(frame)
                    self.handled_seq = frame.seq
                elif self.slot.drained:
                    break
                self._record_failed_deliveries()
        except Exception as exc:  # a bug: stop this camera, but still account for its numbers below
            log.exception("camera publisher failed", extra={"camera": self.id})
            self.last_error = f"internal error: {exc}"
            self.ended_reason = self.ended_reason or "internal error"
            self._stop.set()
            self.slot.close()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Every number handed out ends here at the latest: skipped ones and failed deliveries as drop records,
        then the end-of-stream marker."""
        try:
            while (frame := self.slot.take(0)) is not None:  # left behind by an internal error
                self._skip_to(frame.seq)
                self._drop(frame.seq, "internal", pb.DROP_REASON_INTERNAL_ERROR, "camera stopped on an error")
                self.handled_seq = frame.seq
            self._skip_to(self.next_seq)
            self._wait_acks(30.0)
            self._record_failed_deliveries()
            self.outbox.end_of_stream(self.id, self.next_seq, self.target_fps)
        except Exception:
            log.exception("camera could not end its stream", extra={"camera": self.id})
        finally:
            self.phase = CameraState.ENDED
            self._ended.set()
            log.info("camera ended", extra={"camera": self.id, "reason": self.ended_reason,
                                            "frames": self.next_seq, "counts": dict(self.counts)})

    def _publish_safely(self, frame: GrabbedFrame) -> None:
        try:
            self._publish(frame)
        except Exception as exc:  # encode or produce failed for this frame: record it, keep the camera going
            log.exception("frame not published", extra={"camera": self.id, "seq": frame.seq})
            self._drop(frame.seq, "internal", pb.DROP_REASON_INTERNAL_ERROR, f"not published: {exc}")

    def _record_failed_deliveries(self) -> None:
        with self._lock:
            failed, self._failed_seqs = self._failed_seqs, []
        for seq, error in failed:
            self._drop(seq, "delivery_failed", pb.DROP_REASON_INTERNAL_ERROR, f"Kafka delivery failed: {error}")

    def _skip_to(self, seq: int) -> None:
        """Sequence numbers between the last handled frame and `seq` were replaced by newer frames."""
        for skipped in range(self.handled_seq + 1, seq):
            self._drop(skipped, "superseded", pb.DROP_REASON_INGEST_STALE, "superseded by a newer frame "
                       "(publisher behind the camera)")
        self.handled_seq = max(self.handled_seq, seq - 1)

    def _drop(self, seq: int, reason: str, code: pb.DropReason, detail: str) -> None:
        self.outbox.drop(self.id, seq, code, detail)
        metrics.CAMERA_DROPPED.labels(self.id, reason).inc()
        metrics.FRAMES_DROPPED.labels(f"ingest_{reason}").inc()
        self._count(f"dropped_{reason}")

    def _publish(self, frame: GrabbedFrame) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        image = cap_resolution(frame.image, cfg.cap_width, cfg.cap_height)
        data = encode_jpeg(image, cfg.jpeg_quality)
        metrics.observe_stage("encode", "", self.id, (time.perf_counter() - t0) * 1e3)
        if len(data) > self.max_frame_bytes:
            self._drop(frame.seq, "oversize", pb.DROP_REASON_OVERSIZE,
                       f"{len(data)} bytes over {self.max_frame_bytes}")
            return
        if not self._room_for(frame):
            return
        rotation = self.config.rotation if self.config.rotation >= 0 else None
        value = make_frame(self.id, frame.seq, data, image.shape[1], image.shape[0], frame.capture_us,
                           self.target_fps, rotation=rotation).SerializeToString()

        def on_ack(ok: bool, error: str = "", seq: int = frame.seq) -> None:
            self._on_ack(seq, ok, error)

        try:
            while True:
                try:
                    self.outbox.frame(self.id, value, on_ack)
                    break
                except BufferError:  # the process-wide producer queue is full
                    if cfg.drop_policy == "realtime":
                        self._release_inflight()
                        self._drop(frame.seq, "backpressure", pb.DROP_REASON_INGEST_STALE, "producer queue full")
                        return
                    self.blocked_since = self.blocked_since or time.monotonic()
                    time.sleep(0.01)
        except Exception:
            self._release_inflight()
            raise
        finally:
            if cfg.drop_policy == "complete":
                self.blocked_since = None
        age_ms = (time.monotonic() - frame.grabbed_at) * 1e3
        self.last_age_ms = age_ms
        self.max_age_ms = max(self.max_age_ms, age_ms)
        metrics.observe_stage("capture_to_publish", "", self.id, age_ms)
        metrics.CAMERA_FRAMES.labels(self.id, "published").inc()
        metrics.FRAMES_OUT.labels(self.id).inc()
        self._count("published")
        self.fps_out.tick(time.monotonic())

    def _room_for(self, frame: GrabbedFrame) -> bool:
        """Reserve an in-flight place. realtime: none free means drop now (a later frame will be fresher);
        complete: wait for acknowledgements, visibly blocked (after a stop, for at most STOP_WAIT_S)."""
        with self._lock:
            if self.inflight < self.config.max_inflight:
                self.inflight += 1
                if self.config.drop_policy == "realtime":
                    self.blocked_since = None
                return True
            if self.blocked_since is None:
                self.blocked_since = time.monotonic()
                self.counts["blocked_episodes"] += 1
            if self.config.drop_policy == "complete":
                while self.inflight >= self.config.max_inflight:
                    if self._stop.is_set():
                        # Stopping: what was decoded still goes out, but a dead Kafka must not hold the
                        # camera forever (one deadline for the camera, not one per frame).
                        self._give_up_at = self._give_up_at or time.monotonic() + STOP_WAIT_S
                        if time.monotonic() > self._give_up_at:
                            break
                    self._acked.wait(0.1)
                else:
                    self.blocked_since = None
                    self.inflight += 1
                    return True
        self._drop(frame.seq, "backpressure", pb.DROP_REASON_INGEST_STALE,
                   f"Kafka backpressure: {self.config.max_inflight} frames unacknowledged")
        return False

    def _release_inflight(self) -> None:
        with self._lock:
            self.inflight -= 1
            self._acked.notify_all()

    def _on_ack(self, seq: int, ok: bool, error: str) -> None:
        """From the producer's poll thread: only bookkeeping here (producing from a delivery callback could
        recurse into poll); the publisher turns failures into drop records."""
        with self._lock:
            self.inflight -= 1
            if not ok:
                self._failed_seqs.append((seq, error))
            self._acked.notify_all()

    def _wait_acks(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.inflight > 0 and time.monotonic() < deadline:
                self._acked.wait(0.1)
