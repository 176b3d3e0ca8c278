"""The recorder's logic: masked frames into one MP4 per camera, and which offsets that makes safe to commit.

A sink on `imask.streaming.sink` (which owns the Kafka consumer). Files close on the end-of-stream marker, after
`idle_close_s` without frames, after `segment_s`, when the camera's stream restarts, or when the sink finishes.
Offsets may be committed only up to the first frame of a file still open (`committable`), so a crash re-reads
(and rewrites) the file it lost; a file that fails to close when finishing holds them at its first frame too.

A file that cannot be written (disk full, I/O error: RecordingError) pauses the recorder instead of crashing it:
every partition is rewound to its first frame not safely on disk, every open file is discarded, the consumer is
paused (it stays in its group), `paused` is true (the service's readiness goes down) and `imask_recorder_paused` is
1; once `resume_free_bytes` are free again it resumes and re-reads what it had not written.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import cv2
import numpy as np
from google.protobuf.message import DecodeError

from imask.ops import metrics
from imask.ops.settings import RecorderSettings
from imask.recording.files import CameraRecording, RecordingError, free_bytes, open_recording, safe_name, space_back
from imask.v1 import frames_pb2 as pb

if TYPE_CHECKING:  # types only: the file logic is usable (and testable) without a Kafka client
    from imask.streaming.loop import Inbound
    from imask.streaming.sink import PartitionKey, SinkControl

log = logging.getLogger(__name__)

SPACE_CHECK_S = 2.0  # while paused, free space is looked at this often
# imask_frames_dropped_total's reasons here: a message that is no MaskedFrame, a frame whose image does not decode.
DROP_REASONS = ("recorder_bad_message", "recorder_undecodable")


def committable(position: int, partition: int, recordings: list[CameraRecording]) -> int:
    """The offset the recorder may commit on a partition: past what it consumed, but never past the first frame of
    a file still open there (a crash loses an open file; its frames must be read again)."""
    held = [r.first_offset for r in recordings if r.partition == partition and r.first_offset >= 0]
    return min([position, *held])


class Recorder:
    """Implements `streaming.sink.Sink`; `control` is its consumer (paused, resumed and rewound from here)."""

    def __init__(self, settings: RecorderSettings, control: SinkControl,
                 details: dict[str, object] | None = None) -> None:
        self.settings = settings
        self.control = control
        self.details = details if details is not None else {}
        self.open: dict[str, CameraRecording] = {}
        self.closed: list[str] = []
        self.consumed: dict[PartitionKey, int] = {}  # next offset per partition
        self.paused_since: float | None = None
        self._checked_space = 0.0

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    # --- the sink ------------------------------------------------------------------------------------------------
    def write(self, record: Inbound) -> None:
        try:
            self._handle(record.value or b"", record.partition, record.offset)
        except RecordingError as exc:
            self._pause(str(exc))
            return
        self.consumed[(record.topic, record.partition)] = record.offset + 1

    def tick(self) -> None:
        try:
            now = time.monotonic()
            for camera, rec in list(self.open.items()):
                if now - rec.last_write > self.settings.idle_close_s:
                    self._close(camera)
        except RecordingError as exc:
            self._pause(str(exc))
        if self.paused_since is not None:
            self._maybe_resume()

    def committable(self) -> dict[PartitionKey, int]:
        recordings = list(self.open.values())
        return {(topic, partition): committable(position, partition, recordings)
                for (topic, partition), position in self.consumed.items()}

    def finish(self, clean: bool) -> dict[PartitionKey, int]:
        """Close every file; offsets move past a file only once it is closed (a failed close holds them)."""
        for camera in list(self.open):
            rec = self.open[camera]
            try:
                self._close(camera)
            except RecordingError:
                rec.discard()
                key = (self.settings.topic_masked, rec.partition)
                if key in self.consumed and rec.first_offset >= 0:
                    self.consumed[key] = min(self.consumed[key], rec.first_offset)
        log.info("recorder stopped", extra={"clean": clean, "closed": len(self.closed)})
        return dict(self.consumed)

    # --- frames into files ---------------------------------------------------------------------------------------
    def _handle(self, value: bytes, partition: int, offset: int) -> None:
        masked = pb.MaskedFrame()
        try:
            masked.ParseFromString(value)
        except DecodeError:
            metrics.FRAMES_DROPPED.labels("recorder_bad_message").inc()
            return
        frame = masked.frame
        camera = frame.camera_id
        metrics.FRAMES_IN.labels(camera).inc()
        if frame.end_of_stream:
            self._close(camera)
            return
        image = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            metrics.FRAMES_DROPPED.labels("recorder_undecodable").inc()
            return
        rec = self.open.get(camera)
        if rec is not None and (rec.restarted(frame.seq, frame.capture_ts_us)
                                or time.monotonic() - rec.opened > self.settings.segment_s):
            self._close(camera)  # a new stream of the camera, or the segment is long enough
            rec = None
        if rec is None:
            fps = frame.source_fps or self.settings.default_fps
            rec = self.open[camera] = open_recording(self.settings.output_dir, camera, frame.seq, fps, image)
            rec.partition, rec.first_offset = partition, offset
        if rec.write(frame.seq, image, frame.capture_ts_us):
            metrics.FRAMES_OUT.labels(camera).inc()
            every = self.settings.snapshot_every
            if every and frame.seq % every == 0:
                self._snapshot(camera, frame.seq, frame.data)

    def _snapshot(self, camera: str, seq: int, data: bytes) -> None:
        snap = self.settings.output_dir / "snapshots" / safe_name(camera)
        try:
            snap.mkdir(parents=True, exist_ok=True)
            (snap / f"{seq:08d}.jpg").write_bytes(data)
        except OSError as exc:  # snapshots are extras: counted and skipped, the recording goes on
            metrics.RECORDING_ERRORS.labels("snapshot").inc()
            log.warning("snapshot not written", extra={"camera": camera, "error": str(exc)})

    def _close(self, camera_id: str) -> None:
        rec = self.open.get(camera_id)
        if rec is not None:
            path = rec.close()  # RecordingError: it stays open here, so offsets are rewound to its first frame
            del self.open[camera_id]
            self.closed.append(str(path))
            self.details["closed"] = self.closed

    # --- disk full: pause, then resume once space is back ------------------------------------------------------
    def _pause(self, reason: str) -> None:
        """A file could not be written: rewind each partition to its first frame not on disk, drop every open file,
        pause consuming (the group membership stays), leave rotation."""
        self.consumed = self.committable()
        self.control.rewind(self.consumed)
        for rec in self.open.values():
            rec.discard()
        self.open.clear()
        self.control.pause()
        if self.paused_since is None:
            log.error("recorder paused: a file could not be written; resuming once space is free",
                      extra={"error": reason, "resume_free_bytes": self.settings.resume_free_bytes})
        self.paused_since = time.monotonic()
        metrics.RECORDER_PAUSED.set(1)

    def _maybe_resume(self) -> None:
        now = time.monotonic()
        if now - self._checked_space < SPACE_CHECK_S:
            return
        self._checked_space = now
        try:
            if not space_back(self.settings.output_dir, self.settings.resume_free_bytes):
                return
            free = free_bytes(self.settings.output_dir)
        except OSError:
            return
        self.control.resume()
        log.info("recorder resumed", extra={"free_bytes": free,
                                            "paused_s": round(now - (self.paused_since or now), 1)})
        self.paused_since = None
        metrics.RECORDER_PAUSED.set(0)
