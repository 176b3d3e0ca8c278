"""The producer SDK against the real broker: its frames are masked like any other."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from imask.ops.settings import KafkaSettings
from streams import collect, start_worker

pytestmark = pytest.mark.kafka


def test_producer_sdk_frames_are_masked_like_any_other(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    from imask.media import ImageError, encode_jpeg
    from imask.sdk import FrameProducer
    from streams import moving_face_frames

    worker = start_worker(tmp_path, "w", f"g-{uuid.uuid4().hex[:6]}")
    producer = FrameProducer(kafka_settings.bootstrap_servers, topic=kafka_settings.topic_raw)
    frames = moving_face_frames(6)
    seqs = [producer.publish("sdk-cam", image=f) for f in frames[:3]]
    seqs += [producer.publish("sdk-cam", jpeg=encode_jpeg(f, 80)) for f in frames[3:]]
    with pytest.raises(ImageError):
        producer.publish("sdk-cam", jpeg=b"not an image")
    producer.end_stream("sdk-cam")
    producer.close()
    assert seqs == list(range(6))
    got = collect(kafka_settings, {"sdk-cam"})
    assert got.ledger.summary()["frames_masked"] == 6 and got.ledger.summary()["unaccounted"] == 0
    assert all(m.faces_masked >= 1 for m in got.masked.values() if not m.frame.end_of_stream)
    assert worker.proc.poll() is None
