"""Recorder: frames.masked -> one MP4 per camera (and optional JPEG snapshots).

Files close on the end-of-stream marker, after `idle_close_s` without frames, after `segment_s`, when the
camera's stream restarts, or on SIGTERM. Offsets are committed only up to the first frame of a file still open,
so a crash re-reads (and rewrites) the file it lost. Only masked frames exist on this topic; the recorder never
sees raw pixels.

A file that cannot be written (disk full, I/O error: RecordingError) pauses the recorder instead of crashing it:
every open file is discarded, each partition is rewound to the first frame not safely on disk, the consumer is
paused (it stays in its group), readiness goes down and `imask_recorder_paused` is 1; once `resume_free_bytes`
are free again it resumes and re-reads what it had not written.
"""

from __future__ import annotations

import contextlib
import logging
import time

import cv2
import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from imask.ops import metrics
from imask.ops.runtime import ServiceRuntime, run_service
from imask.ops.settings import RecorderSettings
from imask.recording import (
    CameraRecording,
    RecordingError,
    committable,
    free_bytes,
    open_recording,
    safe_name,
    space_back,
)
from imask.streaming.kafka import consumer_config, ensure_topics, usable
from imask.v1 import frames_pb2 as pb

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, settings: RecorderSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.consumer = Consumer(consumer_config(settings, settings.group_id))
        self.open: dict[str, CameraRecording] = {}
        self.closed: list[str] = []
        self.consumed: dict[tuple[str, int], int] = {}  # next offset per partition
        self.paused_since: float | None = None
        self._checked_space = 0.0
        runtime.ready_checks.append(lambda: self.paused_since is None)

    def _close(self, camera_id: str) -> None:
        rec = self.open.get(camera_id)
        if rec is not None:
            path = rec.close()  # RecordingError: it stays open here, so offsets are rewound to its first frame
            del self.open[camera_id]
            self.closed.append(str(path))
            self.runtime.details["closed"] = self.closed

    def handle(self, value: bytes, partition: int = -1, offset: int = -1) -> None:
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
                snap = self.settings.output_dir / "snapshots" / safe_name(camera)
                try:
                    snap.mkdir(parents=True, exist_ok=True)
                    (snap / f"{frame.seq:08d}.jpg").write_bytes(frame.data)
                except OSError as exc:  # snapshots are extras: counted and skipped, the recording goes on
                    metrics.RECORDING_ERRORS.labels("snapshot").inc()
                    log.warning("snapshot not written", extra={"camera": camera, "error": str(exc)})

    def run(self) -> int:
        ensure_topics(self.settings)
        self.consumer.subscribe([self.settings.topic_masked])
        self.runtime.mark_ready()
        clean = False
        try:
            while not self.runtime.stopping.is_set():
                msg = self.consumer.poll(0.2)
                try:
                    if msg is not None and usable(msg):
                        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
                        self.handle(msg.value() or b"", partition, offset)
                        self.consumed[(topic, partition)] = offset + 1
                    now = time.monotonic()
                    for camera, rec in list(self.open.items()):
                        if now - rec.last_write > self.settings.idle_close_s:
                            self._close(camera)
                except RecordingError as exc:
                    self._pause(str(exc))
                if self.paused_since is not None:
                    self._maybe_resume()
                for (topic, partition), position in self.consumed.items():
                    self._store(topic, partition, committable(position, partition, list(self.open.values())))
            clean = True
        finally:
            self._finish(clean)
        return 0

    def _pause(self, reason: str) -> None:
        """A file could not be written: drop every open file, rewind each partition to its first frame not on disk,
        pause consuming (the group membership stays), leave rotation."""
        for (topic, partition), position in list(self.consumed.items()):
            rewind = committable(position, partition, list(self.open.values()))
            self.consumed[(topic, partition)] = rewind
            with contextlib.suppress(KafkaException):
                self.consumer.seek(TopicPartition(topic, partition, rewind))
        for rec in self.open.values():
            rec.discard()
        self.open.clear()
        with contextlib.suppress(KafkaException):
            self.consumer.pause(self.consumer.assignment())
        if self.paused_since is None:
            log.error("recorder paused: a file could not be written; resuming once space is free",
                      extra={"error": reason, "resume_free_bytes": self.settings.resume_free_bytes})
        self.paused_since = time.monotonic()
        metrics.RECORDER_PAUSED.set(1)

    def _maybe_resume(self) -> None:
        now = time.monotonic()
        if now - self._checked_space < 2.0:
            return
        self._checked_space = now
        try:
            if not space_back(self.settings.output_dir, self.settings.resume_free_bytes):
                return
            free = free_bytes(self.settings.output_dir)
        except OSError:
            return
        with contextlib.suppress(KafkaException):
            self.consumer.resume(self.consumer.assignment())
        log.info("recorder resumed", extra={"free_bytes": free,
                                            "paused_s": round(now - (self.paused_since or now), 1)})
        self.paused_since = None
        metrics.RECORDER_PAUSED.set(0)

    def _finish(self, clean: bool) -> None:
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
        for (topic, partition), position in self.consumed.items():
            self._store(topic, partition, position)
        with contextlib.suppress(KafkaException):
            self.consumer.commit(asynchronous=False)
        self.consumer.close()
        log.info("recorder stopped", extra={"clean": clean, "closed": len(self.closed)})

    def _store(self, topic: str, partition: int, offset: int) -> None:
        with contextlib.suppress(KafkaException):
            self.consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset)])


def run(settings: RecorderSettings) -> int:
    return run_service("recorder", settings, lambda runtime: Recorder(settings, runtime).run())
