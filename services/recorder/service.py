"""Recorder: frames.masked -> one MP4 per camera (and optional JPEG snapshots).

Files close on the end-of-stream marker, after `idle_close_s` without frames, after `segment_s`, when the
camera's stream restarts, or on SIGTERM. Offsets are committed only up to the first frame of a file still open,
so a crash re-reads (and rewrites) the file it lost. Only masked frames exist on this topic; the recorder never
sees raw pixels.
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
from imask.recording import CameraRecording, committable, open_recording, safe_name
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

    def _close(self, camera_id: str) -> None:
        rec = self.open.pop(camera_id, None)
        if rec is not None:
            self.closed.append(str(rec.close()))
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
                snap.mkdir(parents=True, exist_ok=True)
                (snap / f"{frame.seq:08d}.jpg").write_bytes(frame.data)

    def run(self) -> int:
        ensure_topics(self.settings)
        self.consumer.subscribe([self.settings.topic_masked])
        self.runtime.ready.set()
        consumed: dict[tuple[str, int], int] = {}  # next offset per partition
        try:
            while not self.runtime.stopping.is_set():
                msg = self.consumer.poll(0.2)
                if msg is not None and usable(msg):
                    topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
                    self.handle(msg.value() or b"", partition, offset)
                    consumed[(topic, partition)] = offset + 1
                now = time.monotonic()
                for camera, rec in list(self.open.items()):
                    if now - rec.last_write > self.settings.idle_close_s:
                        self._close(camera)
                for (topic, partition), position in consumed.items():
                    self._store(topic, partition, committable(position, partition, list(self.open.values())))
        finally:
            for camera in list(self.open):
                self._close(camera)
            for (topic, partition), position in consumed.items():  # every file is closed now
                self._store(topic, partition, position)
            with contextlib.suppress(KafkaException):
                self.consumer.commit(asynchronous=False)
            self.consumer.close()
        return 0

    def _store(self, topic: str, partition: int, offset: int) -> None:
        with contextlib.suppress(KafkaException):
            self.consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset)])


def run(settings: RecorderSettings) -> int:
    return run_service("recorder", settings, lambda runtime: Recorder(settings, runtime).run())
