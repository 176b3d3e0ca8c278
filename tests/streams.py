"""Helpers for integration tests: publish frames of several cameras, collect and account for the outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from confluent_kafka import Producer

from conftest import subprocess_env
from imask.devstack.procs import ServiceProcess, spawn, stop_all
from imask.frames.clock import now_us
from imask.frames.envelope import end_of_stream, make_frame
from imask.loadtest.accounting import StreamLedger
from imask.loadtest.samples import astronaut
from imask.media import encode_jpeg
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import TopicReader, producer_config
from imask.types import Image
from imask.v1 import frames_pb2 as pb


def moving_face_frames(n: int, size: tuple[int, int] = (480, 360)) -> list[Image]:
    base = cv2.resize(astronaut(), (360, 360))
    frames = []
    for i in range(n):
        canvas = np.full((size[1], size[0], 3), 30, np.uint8)
        x = (i * 7) % (size[0] - 360)
        canvas[:360, x:x + 360] = base
        frames.append(canvas)
    return frames


class Collected:
    def __init__(self) -> None:
        self.ledger = StreamLedger()
        self.masked: dict[tuple[str, int], pb.MaskedFrame] = {}
        self.meta_order: dict[str, list[int]] = {}
        self.drops: list[pb.DropRecord] = []
        self.meta: dict[tuple[str, int], pb.FrameMeta] = {}


def assert_in_order(collected: Collected) -> None:
    for camera, seqs in collected.meta_order.items():
        first_seen = list(dict.fromkeys(seqs))  # redeliveries after a takeover repeat a tail, never reorder
        assert first_seen == sorted(first_seen), f"camera {camera} out of order"


def collect(settings: KafkaSettings, cameras: set[str], timeout: float = 120.0) -> Collected:
    """Read masked, meta and dlq topics from the start until every camera's stream is accounted for and every
    masked frame its meta announces has been read too (the topics arrive interleaved: the meta of a stream's last
    frames can come before their masked frames)."""
    out = Collected()
    out.ledger = StreamLedger(cameras)
    start = {(t, p): 0 for t in (settings.topic_masked, settings.topic_meta, settings.topic_dlq)
             for p in range(settings.partitions)}
    reader = TopicReader(settings, start)
    deadline = time.monotonic() + timeout
    try:
        while not _collected(out) and time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is None:
                continue
            value = msg.value() or b""
            if msg.topic() == settings.topic_meta:
                meta = pb.FrameMeta.FromString(value)
                out.ledger.add_meta(meta)
                out.meta[(meta.camera_id, meta.seq)] = meta
                if not meta.end_of_stream:
                    out.meta_order.setdefault(meta.camera_id, []).append(meta.seq)
            elif msg.topic() == settings.topic_dlq:
                record = pb.DropRecord.FromString(value)
                out.drops.append(record)
                out.ledger.add_drop(record)
            else:
                masked = pb.MaskedFrame.FromString(value)
                out.masked[(masked.frame.camera_id, masked.frame.seq)] = masked
    finally:
        reader.close()
    return out


def _collected(out: Collected) -> bool:
    return out.ledger.complete() and all(key in out.masked for key, meta in out.meta.items()
                                         if not meta.end_of_stream)


def publish(settings: KafkaSettings, streams: dict[str, list[Image]],
            corrupt: dict[tuple[str, int], bytes] | None = None, pace_s: float = 0.0) -> None:
    """Frames of several cameras interleaved; `corrupt` replaces chosen (camera, seq) messages by raw bytes."""
    producer = Producer(producer_config(settings))
    corrupt = corrupt or {}
    longest = max(len(v) for v in streams.values())
    for seq in range(longest):
        for camera, frames in streams.items():
            if seq < len(frames):
                value = corrupt.get((camera, seq))
                if value is None:
                    img = frames[seq]
                    value = make_frame(camera, seq, encode_jpeg(img, 85), img.shape[1], img.shape[0],
                                       now_us(), 15.0).SerializeToString()
                producer.produce(settings.topic_raw, key=camera.encode(), value=value)
        producer.poll(0)
        if pace_s:
            time.sleep(pace_s)
    for camera, frames in streams.items():
        producer.produce(settings.topic_raw, key=camera.encode(),
                         value=end_of_stream(camera, len(frames)).SerializeToString())
    assert producer.flush(30) == 0


# Every service a test starts; the autouse fixture in conftest stops what a failing test left running.
STARTED: list[ServiceProcess] = []


def spawn_tracked(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> ServiceProcess:
    svc = spawn(name, args, log_dir, env)
    STARTED.append(svc)
    return svc


def stop_leftovers() -> None:
    stop_all([svc for svc in STARTED if svc.proc.poll() is None], timeout=10)
    STARTED.clear()


def start_worker(tmp_path: Path, name: str, group: str, **env: str) -> ServiceProcess:
    worker = spawn_tracked(name, ["worker", "--group-id", group, "--instance-id", name], tmp_path / "logs",
                   {**subprocess_env(), **env})
    worker.wait_ready(90)
    return worker


def wait_until(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Call `probe` until it returns something true, and return that; fail naming `what` (and the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s (last: {value!r})")
        time.sleep(every)
