"""Producer SDK: publish frames to frames.raw yourself, with the project's envelope, keying and limits.

    producer = FrameProducer("kafka:9092")
    producer.publish("lobby", image)          # BGR array, or jpeg=... bytes you already have
    producer.end_stream("lobby")               # optional: marks the end of a finite stream
    producer.close()

Frames are keyed by camera id (per-camera order), numbered per camera from 0, stamped with the capture time, and
refused locally with a clear error when they would be dead-lettered anyway (oversize, undecodable).
"""

from __future__ import annotations

from typing import Any

from imask.frames.clock import now_us
from imask.frames.envelope import check_outgoing, end_of_stream, make_frame
from imask.frames.ids import check_camera_id
from imask.media import encode_jpeg
from imask.ops.settings import FrameLimits, KafkaSettings
from imask.streaming.producer import Outbox
from imask.types import Image


class FrameProducer:
    def __init__(self, bootstrap_servers: str, topic: str = "frames.raw", jpeg_quality: int = 90,
                 max_frame_bytes: int = 4 * 1024 * 1024, **librdkafka: Any) -> None:
        settings = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_raw=topic)
        self.topic = topic
        self.jpeg_quality = jpeg_quality
        self.limits = FrameLimits(max_frame_bytes=max_frame_bytes)
        self._outbox = Outbox(settings, **librdkafka)
        self._next_seq: dict[str, int] = {}

    @property
    def failed(self) -> int:
        """Frames (and markers) Kafka did not take."""
        return self._outbox.failed

    def publish(self, camera_id: str, image: Image | None = None, jpeg: bytes | None = None,
                capture_ts_us: int | None = None, fps: float = 0.0) -> int:
        """Queue one frame; returns its sequence number. Delivery happens in the background (see flush)."""
        if (image is None) == (jpeg is None):
            raise ValueError("give exactly one of image= or jpeg=")
        data = encode_jpeg(image, self.jpeg_quality) if image is not None else bytes(jpeg or b"")
        width, height = check_outgoing(camera_id, data, self.limits)
        seq = self._next_seq.get(camera_id, 0)
        frame = make_frame(camera_id, seq, data, width, height, capture_ts_us or now_us(), fps)
        self._send(camera_id, frame.SerializeToString())
        self._next_seq[camera_id] = seq + 1
        return seq

    def end_stream(self, camera_id: str) -> None:
        check_camera_id(camera_id)
        self._send(camera_id, end_of_stream(camera_id, self._next_seq.get(camera_id, 0)).SerializeToString())

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for delivery; returns how many messages are still undelivered (0 on success)."""
        return self._outbox.flush(timeout)

    def close(self) -> None:
        remaining = self.flush()
        if remaining or self.failed:
            raise RuntimeError(f"{remaining} frames undelivered, {self.failed} failed")

    def _send(self, camera_id: str, value: bytes) -> None:
        self._outbox.send(self.topic, camera_id, value)  # waits for room: backpressure on the caller
        self._outbox.poll(0)
