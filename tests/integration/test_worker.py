"""The worker against the real broker: accounting, order, bad input, fail closed, SIGKILL takeover, SIGTERM drain."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import detail_ratio, near_uniform, similarity
from imask.devstack.procs import ServiceProcess, stop_all
from imask.frames.clock import now_us
from imask.frames.envelope import make_frame
from imask.media import encode_jpeg
from imask.ops.settings import KafkaSettings
from imask.v1 import frames_pb2 as pb
from streams import assert_in_order, collect, moving_face_frames, publish, start_worker

pytestmark = pytest.mark.kafka


def test_stream_accounted_in_order_with_bad_input(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    frames = moving_face_frames(24)

    def envelope(camera: str, seq: int, **changes: object) -> pb.Frame:
        frame = make_frame(camera, seq, encode_jpeg(frames[seq], 85), 480, 360, now_us())
        for key, value in changes.items():
            setattr(frame, key, value)
        return frame

    corrupt = {
        ("cam-a", 5): envelope("cam-a", 5, data=b"\xff\xd8\xff\xe0garbage").SerializeToString(),
        ("cam-a", 6): envelope("cam-a", 6).SerializeToString()[:40],                 # truncated protobuf
        ("cam-b", 7): envelope("cam-b", 7, schema_version=2).SerializeToString(),
        ("cam-b", 8): envelope("cam-b", 8, data=b"\xff\xd8" + b"\0" * 5_000_000).SerializeToString(),
        ("cam-b", 9): envelope("cam-b", 9, data=encode_jpeg(frames[9], 85)[:3000]).SerializeToString(),
    }
    worker = start_worker(tmp_path, "w1", f"g-{uuid.uuid4().hex[:6]}")
    publish(kafka_settings, {"cam-a": frames, "cam-b": frames[:20]}, corrupt)
    got = collect(kafka_settings, {"cam-a", "cam-b"})
    assert worker.proc.poll() is None, "worker died on bad input"
    summary = got.ledger.summary()
    missing = {c: (v.missing(), v.dropped) for c, v in got.ledger.by_camera.items()}
    assert summary["unaccounted"] == 0 and summary["frames_in"] == 44, missing
    assert summary["frames_masked"] + summary["frames_dropped"] == 44
    assert summary["duplicates"] == 0
    reasons = {(d.camera_id, d.seq): pb.DropReason.Name(d.reason) for d in got.drops}
    assert reasons[("cam-a", 5)] == "DROP_REASON_CORRUPT_IMAGE"
    # The truncated envelope's head still names it, so the drop record says which frame it was.
    assert reasons[("cam-a", 6)] == "DROP_REASON_UNDECODABLE_ENVELOPE"
    assert reasons[("cam-b", 7)] == "DROP_REASON_SCHEMA_VERSION"
    assert reasons[("cam-b", 8)] == "DROP_REASON_OVERSIZE"
    assert reasons[("cam-b", 9)] == "DROP_REASON_CORRUPT_IMAGE"
    assert all(d.detail and not d.raw for d in got.drops)  # a reason, and no raw pixels by default
    assert_in_order(got)
    # Masked output: the face is gone, the rest of the frame is kept.
    for (camera, seq), masked in got.masked.items():
        if masked.frame.end_of_stream:
            continue
        out = cv2.imdecode(np.frombuffer(masked.frame.data, np.uint8), cv2.IMREAD_COLOR)
        x = (seq * 7) % 120
        face = (slice(60, 115), slice(x + 135, x + 180))  # inside the face (box ~128..187 x 47..125)
        assert masked.faces_masked >= 1 and not masked.fail_closed
        assert detail_ratio(out[face], frames[seq][face]) < 0.2, f"{camera}/{seq} face still visible"
    assert worker.metric("imask_frames_dead_lettered_total") == 5
    assert worker.metric("imask_frames_unmasked_total") == 0
    assert worker.metric("imask_stage_latency_seconds_count", 'stage="end_to_end"') == 39
    assert stop_all([worker]) == {"w1": 0}


def test_fail_closed_when_detector_times_out(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    frames = moving_face_frames(8, size=(1280, 720))
    worker = start_worker(tmp_path, "slow", f"g-{uuid.uuid4().hex[:6]}", IMASK_DETECTOR_TIMEOUT_MS="1",
                          IMASK_DETECTOR_WIDTH="1280", IMASK_DETECTOR_HEIGHT="736")
    publish(kafka_settings, {"cam-f": frames}, pace_s=0.3)
    got = collect(kafka_settings, {"cam-f"})
    assert got.ledger.summary()["unaccounted"] == 0
    fail_closed = [m for m in got.masked.values() if not m.frame.end_of_stream]
    assert len(fail_closed) == 8
    for masked in fail_closed:
        assert masked.fail_closed and masked.fail_closed_reason in {"detector_timeout", "detector_unhealthy"}
        out = cv2.imdecode(np.frombuffer(masked.frame.data, np.uint8), cv2.IMREAD_COLOR)
        raw = frames[masked.frame.seq]
        assert not np.array_equal(out, raw) and near_uniform(out) and similarity(out, raw) < 0.1
    assert worker.metric("imask_frames_fail_closed_total") == 8
    assert worker.metric("imask_frames_out_total") == 8
    stop_all([worker])


def _kill_once_working(victim: ServiceProcess) -> None:
    """SIGKILL a worker once it has really been working, so it dies holding uncommitted frames."""
    deadline = time.monotonic() + 60
    while victim.metric("imask_frames_out_total") < 15 and time.monotonic() < deadline:
        time.sleep(0.1)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()


def test_sigkill_mid_stream_another_worker_takes_over(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    cameras = {f"cam-{i}": moving_face_frames(40) for i in range(4)}
    victim = start_worker(tmp_path, "victim", group)
    survivor = start_worker(tmp_path, "survivor", group, IMASK_WORKER_BATCH_MAX="4")  # also exercises batching
    publish(kafka_settings, cameras, pace_s=0.03)
    _kill_once_working(victim)
    got = collect(kafka_settings, set(cameras), timeout=120)
    summary = got.ledger.summary()
    assert summary["unaccounted"] == 0, summary
    assert summary["frames_masked"] == 160
    assert_in_order(got)
    assert survivor.metric("imask_frames_out_total") > 0
    assert survivor.metric("imask_inference_batch_size_count") < survivor.metric("imask_frames_out_total")
    assert stop_all([survivor]) == {"survivor": 0}


def test_sigterm_drains_without_loss_or_duplicates(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    cameras = {f"cam-{i}": moving_face_frames(60) for i in range(2)}
    first = start_worker(tmp_path, "first", group)
    publish(kafka_settings, cameras)
    while first.metric("imask_frames_out_total") < 10:
        time.sleep(0.05)
    assert stop_all([first]) == {"first": 0}  # SIGTERM: finish, flush, commit, leave the group
    partial = collect(kafka_settings, set(cameras), timeout=3).ledger.summary()
    assert 10 <= partial["frames_masked"] < 120, "the drain test needs the first worker stopped mid-stream"
    second = start_worker(tmp_path, "second", group)
    got = collect(kafka_settings, set(cameras))
    summary = got.ledger.summary()
    assert summary["unaccounted"] == 0 and summary["duplicates"] == 0, summary
    assert_in_order(got)
    stop_all([second])


def test_exactly_once_worker_killed_leaves_no_duplicates(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """Transactions mode: a worker SIGKILLed with a window open leaves nothing a read_committed reader sees; the
    survivor redoes the window, so every frame is masked once, in order, with no duplicate."""
    group = f"g-{uuid.uuid4().hex[:6]}"
    cameras = {f"cam-{i}": moving_face_frames(40) for i in range(4)}
    eos = {"IMASK_WORKER_EXACTLY_ONCE": "true", "IMASK_WORKER_TRANSACTION_MS": "200"}
    victim = start_worker(tmp_path, "victim", group, **eos)
    survivor = start_worker(tmp_path, "survivor", group, **eos)
    publish(kafka_settings, cameras, pace_s=0.03)
    _kill_once_working(victim)
    got = collect(kafka_settings, set(cameras), timeout=120)
    summary = got.ledger.summary()
    assert summary["unaccounted"] == 0, summary
    assert summary["frames_masked"] == 160 and summary["duplicates"] == 0, summary
    assert_in_order(got)
    assert survivor.metric("imask_kafka_transactions_total", 'result="committed"') > 0
    assert stop_all([survivor]) == {"survivor": 0}
