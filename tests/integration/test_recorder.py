"""The recorder against the real broker: ingest, worker and recorder make a playable MP4; a recorder SIGKILLed
mid-file loses no footage."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from confluent_kafka import Producer

from conftest import subprocess_env
from imask.devstack.procs import stop_all
from imask.frames.envelope import end_of_stream, make_frame
from imask.loadtest.samples import synthetic_clip
from imask.media import encode_jpeg
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import producer_config
from imask.v1 import frames_pb2 as pb
from streams import collect, spawn_tracked, start_worker

pytestmark = pytest.mark.kafka


def test_ingest_worker_recorder_make_a_playable_mp4(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    clip = synthetic_clip(tmp_path / "clip.mp4", frames=30, fps=15)
    worker = start_worker(tmp_path, "w", f"g-{uuid.uuid4().hex[:6]}")
    recorder = spawn_tracked("recorder", ["recorder", "--group-id", f"r-{uuid.uuid4().hex[:6]}", "--output-dir",
                                  str(tmp_path / "rec"), "--snapshot-every", "10"], tmp_path / "logs",
                     subprocess_env())
    recorder.wait_ready(60)
    ingest = spawn_tracked("ingest", ["ingest", "--source", f"astro={clip}", "--pace", "max",
                                      "--drop-policy", "complete"], tmp_path / "logs", subprocess_env())
    assert ingest.proc.wait(60) == 0
    got = collect(kafka_settings, {"astro"})
    assert got.ledger.summary()["frames_masked"] == 30
    mp4 = tmp_path / "rec" / "astro.mp4"
    for _ in range(100):  # the recorder closes the file on the end-of-stream marker
        if mp4.exists():
            break
        time.sleep(0.1)
    cap = cv2.VideoCapture(str(mp4))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    assert abs(cap.get(cv2.CAP_PROP_FPS) - 15) < 0.1
    ok, frame = cap.read()
    assert ok and frame.shape == (360, 640, 3)
    assert sorted(p.name for p in (tmp_path / "rec" / "snapshots" / "astro").iterdir()) == [
        "00000000.jpg", "00000010.jpg", "00000020.jpg"]
    assert stop_all([worker, recorder]) == {"w": 0, "recorder": 0}


@pytest.mark.kafka
def test_recorder_killed_mid_file_loses_no_footage(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """SIGKILL while a file is open: the restarted recorder re-reads from the file's first frame (offsets never
    passed it) and the finished MP4 holds every frame."""
    producer = Producer(producer_config(kafka_settings))

    def send(seqs: range) -> None:
        for seq in seqs:
            data = encode_jpeg(np.full((120, 160, 3), seq * 5 % 255, np.uint8), 90)
            frame = make_frame("rec-cam", seq, data, 160, 120, 1_000_000 + seq, 10.0)
            producer.produce(kafka_settings.topic_masked, key=b"rec-cam",
                             value=pb.MaskedFrame(frame=frame).SerializeToString())
        assert producer.flush(30) == 0

    group, out = f"rec-{uuid.uuid4().hex[:6]}", tmp_path / "recordings"
    args = ["recorder", "--group-id", group, "--output-dir", str(out)]
    recorder = spawn_tracked("recorder", args, tmp_path / "logs", subprocess_env())
    recorder.wait_ready(60)
    send(range(30))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and recorder.metric("imask_frames_out_total", 'camera="rec-cam"') < 30:
        time.sleep(0.1)
    time.sleep(2.5)  # past two auto-commit intervals: whatever would be committed is
    recorder.proc.send_signal(signal.SIGKILL)
    recorder.proc.wait(10)
    assert not (out / "rec-cam.mp4").exists()  # the open file was lost with the process
    send(range(30, 40))
    producer.produce(kafka_settings.topic_masked, key=b"rec-cam",
                     value=pb.MaskedFrame(frame=end_of_stream("rec-cam", 40)).SerializeToString())
    assert producer.flush(30) == 0
    again = spawn_tracked("recorder", args, tmp_path / "logs2", subprocess_env())
    again.wait_ready(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "rec-cam.mp4").exists():
        time.sleep(0.2)
    cap = cv2.VideoCapture(str(out / "rec-cam.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert frames == 40, f"{frames} frames in the recording"
    assert not list(out.glob("rec-cam_from*"))  # it started from the first frame again, not mid-stream
    assert stop_all([again]) == {"recorder": 0}
