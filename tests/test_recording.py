"""Recordings keep their footage: no overwrite on a restarted stream, a new file when the stream restarts, and
offsets that never pass a file still open."""

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
from imask.media import encode_jpeg
from imask.ops.settings import KafkaSettings
from imask.pipeline.wire import end_of_stream, make_frame
from imask.recording import committable, open_recording, recording_of
from imask.streaming.kafka import producer_config
from imask.v1 import frames_pb2 as pb
from streams import spawn_tracked


def _frame() -> np.ndarray:
    return np.full((64, 96, 3), 100, np.uint8)


def test_a_restarted_stream_never_overwrites_an_earlier_file(tmp_path: Path) -> None:
    first = open_recording(tmp_path, "lobby", 0, 10.0, _frame())
    first.write(0, _frame(), 1_000)
    assert first.close() == tmp_path / "lobby.mp4"
    second = open_recording(tmp_path, "lobby", 0, 10.0, _frame())  # the ingest restarted: seq 0 again
    second.write(0, _frame(), 2_000)
    assert second.close() == tmp_path / "lobby-2.mp4"
    assert (tmp_path / "lobby.mp4").stat().st_size > 0
    assert recording_of("lobby-2", {"lobby"}) and recording_of("lobby_from7", {"lobby"})
    assert not recording_of("lobby2", {"lobby"})


def test_a_leftover_partial_is_redone_not_kept(tmp_path: Path) -> None:
    lost = open_recording(tmp_path, "dock", 0, 10.0, _frame())  # a recorder crashed while writing this
    lost.write(0, _frame(), 1_000)
    redo = open_recording(tmp_path, "dock", 0, 10.0, _frame())
    assert redo.path == tmp_path / "dock.mp4"  # same name: the redelivered frames complete it


def test_restart_is_told_from_redelivery(tmp_path: Path) -> None:
    rec = open_recording(tmp_path, "gate", 0, 10.0, _frame())
    for seq in range(5):
        rec.write(seq, _frame(), 1_000 + seq)
    assert not rec.restarted(3, 1_003)  # at-least-once: the same frame again
    assert not rec.write(3, _frame(), 1_003) and rec.duplicates == 1
    assert rec.restarted(0, 9_000)  # seq back to 0 but captured later: a new stream


def test_offsets_stop_at_the_first_frame_of_an_open_file(tmp_path: Path) -> None:
    a = open_recording(tmp_path, "a", 0, 10.0, _frame())
    a.partition, a.first_offset = 3, 120
    b = open_recording(tmp_path, "b", 0, 10.0, _frame())
    b.partition, b.first_offset = 1, 40
    assert committable(500, 3, [a, b]) == 120
    assert committable(500, 1, [a, b]) == 40
    assert committable(500, 0, [a, b]) == 500


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
