"""The features stream against the real broker, Redis and Feast: exact windows online and offline, lateness, bad
input, kill -9 and a Redis restart.

Feast's pieces are started once per session (conftest's `feast_repo`: a project of the session's own on the stack's
Redis, registry and parquet in a temporary folder, torn down at the end); each test has its own topics, consumer group,
state folder and camera ids. Records carry synthetic capture times a few minutes in the past, so a test produces
minutes of event time in a second and windows close as the records' clock moves, not the wall clock."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from confluent_kafka import Producer

from conftest import subprocess_env
from imask.devstack import redis as redis_server
from imask.devstack import stack
from imask.devstack.settings import StackSettings
from imask.features import repo
from imask.features.repo import FeastSettings
from imask.features.schema import (
    FEATURE_NAMES,
    ROUTER_FEATURES,
    VARIANT_VIEW_10S,
    VARIANT_VIEW_60S,
    VIEW_10S,
    VIEW_60S,
    View,
)
from imask.features.store import FeatureReader
from imask.loadtest.features import Record, drop_record, meta_record, reference_row
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import delete_topics, producer_config
from imask.v1 import frames_pb2 as pb
from streams import spawn_tracked

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

GRACE_MS = 2000
CHECKED = [name for name in FEATURE_NAMES if name not in ("window_start_ms", "window_end_ms", "late_frames",
                                                           "variant", "arm")]


@pytest.fixture(scope="session")
def reader(feast_repo: FeastSettings) -> FeatureReader:
    return FeatureReader(feast_repo, "operators")


class StreamRun:
    """One test's features stream: its env, topics and group; started and killed as the test says."""

    def __init__(self, kafka: KafkaSettings, feast: FeastSettings, tmp_path: Path) -> None:
        self.kafka = kafka
        self.feast = feast
        self.tmp_path = tmp_path
        suffix = kafka.topic_meta.split(".")[0]
        self.group = f"{suffix}-features"
        self.ticks = f"{suffix}.ticks"
        self.env = {**subprocess_env(), "IMASK_FEATURES_STREAM_GROUP_ID": self.group,
                    "IMASK_FEATURES_STREAM_TICKS_TOPIC": self.ticks,
                    "IMASK_FEATURES_STREAM_STATE_DIR": str(tmp_path / "state"),
                    "IMASK_FEATURES_STREAM_FEAST_DIR": str(feast.data_dir),
                    "IMASK_FEATURES_STREAM_FEAST_PROJECT": feast.project,
                    "IMASK_FEATURES_STREAM_AUTO_OFFSET_RESET": "earliest",
                    "IMASK_FEATURES_STREAM_IDLE_TICK_S": "2", "IMASK_FEATURES_STREAM_GRACE_MS": str(GRACE_MS),
                    "IMASK_REDIS_URL": feast.redis_url}
        self.producer = Producer(producer_config(kafka))
        self.runs = 0

    def start(self) -> Any:
        self.runs += 1
        svc = spawn_tracked(f"features-{self.runs}", ["features-stream"], self.tmp_path / "logs", self.env)
        svc.wait_ready(120)
        return svc

    def produce(self, records: list[Record], key: Callable[[Record], bytes | None] | None = None) -> None:
        for record in records:
            topic = self.kafka.topic_meta if record.topic == "meta" else self.kafka.topic_dlq
            # Stamped as a worker stamps them: when the frame was done, a little after its capture.
            self.producer.produce(topic, key=key(record) if key else record.camera_id.encode(), value=record.value,
                                  timestamp=record.capture_ms + 50)
            self.producer.poll(0)
        assert self.producer.flush(30) == 0

    def produce_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.producer.produce(topic, key=key, value=value)
        assert self.producer.flush(30) == 0

    def committed(self) -> int:
        """Offsets of frames.meta the stream's group has committed, summed over partitions."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.kafka.bootstrap_servers, "group.id": self.group})
        try:
            parts = consumer.committed([TopicPartition(self.kafka.topic_meta, p) for p in range(self.kafka.partitions)],
                                       timeout=10)
            return sum(max(tp.offset, 0) for tp in parts)
        finally:
            consumer.close()

    def cleanup(self) -> None:
        from confluent_kafka.admin import AdminClient

        names = [t for t in AdminClient({"bootstrap.servers": self.kafka.bootstrap_servers}).list_topics(
            timeout=10).topics if self.group in t or t == self.ticks]
        if names:
            delete_topics(self.kafka, names)


@pytest.fixture
def run(kafka_settings: KafkaSettings, feast_repo: FeastSettings, tmp_path: Path) -> Iterator[StreamRun]:
    runner = StreamRun(kafka_settings, feast_repo, tmp_path)
    yield runner
    from streams import stop_leftovers

    stop_leftovers()
    runner.cleanup()


def base_ms(minutes_back: int = 4) -> int:
    """A minute boundary some minutes ago: synthetic capture times start here."""
    return (int(time.time()) // 60 - minutes_back) * 60_000


def frames(cameras: list[str], start_s: float, end_s: float, base: int, fps: float = 5.0,
           drop_every: int = 0, variant: Callable[[int, int], str] = lambda i, n: "default") -> list[Record]:
    """Every camera's records in [start_s, end_s) after base, in capture order; with drop_every, every n-th frame
    is a frames.dlq record (reasons in turn) instead; variant(camera index, frame number) names each frame's."""
    out = []
    n0, n1 = round(start_s * fps), round(end_s * fps)
    for n in range(n0, n1):
        for i, camera in enumerate(cameras):
            ts = base + round(n * 1000 / fps) + i
            if drop_every and n % drop_every == drop_every - 1:
                out.append(drop_record(camera, n, ts, 1 + n % 8))
            else:
                out.append(meta_record(camera, n, ts, variant=variant(i, n)))
    return out


def variant_of(record: Record) -> str | None:
    return pb.FrameMeta.FromString(record.value).variant if record.topic == "meta" else None


def in_window(records: list[Record], camera: str, start: int, end: int) -> list[Record]:
    return [r for r in records if r.camera_id == camera and start <= r.capture_ms < end]


def offline(feast: FeastSettings, view: View, cameras: list[str]) -> tuple[pd.DataFrame, int]:
    """A view's offline rows of these cameras, newest push per (keys, window), and how many pushes repeated one."""
    df = pd.read_parquet(repo.parquet_path(feast.data_dir, view))
    df = df[df["camera_id"].isin(cameras)]
    index = [*view.keys, "window_end_ms"]
    newest = df.sort_values("created").drop_duplicates(index, keep="last")
    return newest.set_index(index), len(df) - len(newest)


def assert_row(got: Any, expected: dict[str, Any], where: str, names: Sequence[str] = CHECKED) -> None:
    for name in names:
        value = got[name]
        value = list(value) if name.endswith("_hist") else value
        assert value == pytest.approx(expected[name], rel=1e-9, abs=1e-12), f"{where}: {name}"


def wait_for(reader: FeatureReader, cameras: list[str], end_ms: int, timeout: float = 90.0,
             at_least: bool = False) -> dict[str, Any]:
    """Online features once every camera's newest 10 s and 60 s windows end at end_ms (or later, `at_least`)."""
    deadline = time.monotonic() + timeout

    def reached(end: Any) -> bool:
        return end == end_ms or (at_least and end is not None and end >= end_ms)

    while True:
        got = reader.read(cameras)
        if all(all(reached(v.get("window_end_ms")) for v in got[c].values.values()) for c in cameras):
            return got
        if time.monotonic() > deadline:
            ends = {c: [v.get("window_end_ms") for v in f.values.values()] for c, f in got.items()}
            raise AssertionError(f"windows ending {end_ms} not online: {ends}")
        time.sleep(0.5)


def test_windows_exact_online_and_offline_with_late_and_bad_records(run: StreamRun, reader: FeatureReader) -> None:
    cameras = [f"{run.group}-cam{i}" for i in range(3)]
    base = base_ms()
    # Camera 1 switches from the default variant to "precise" at 30 s (an experiment's ramp).
    main = frames(cameras, 0, 60, base, drop_every=23,
                  variant=lambda i, n: "precise" if i == 1 and n >= 150 else "default")
    inside_grace = meta_record(cameras[0], 9000, base + 55_000)  # after 59.8 s was seen; [50, 60) still open
    closers = [meta_record(c, 9001, base + 63_000) for c in cameras]  # the clock passes 60 s + grace
    too_late = [meta_record(cameras[0], 9002, base + 45_000),  # [40, 50) closed long ago: late
                meta_record(cameras[0], 9003, base + 58_500)]  # [50, 60) has just closed: late too
    closers2 = [meta_record(c, 9004, base + 75_000) for c in cameras]
    run.produce(main)
    # Bad input among good records: not a protobuf (both topics), a key that is no camera id, no key, a key
    # naming another camera than the record.
    run.produce_raw(run.kafka.topic_meta, cameras[1].encode(), b"\xff\x00 not a protobuf")
    run.produce_raw(run.kafka.topic_dlq, cameras[1].encode(), b"\xff\x00 not a protobuf either")
    run.produce([meta_record("bad/cam", 1, base + 56_000)], key=lambda r: b"bad/cam")
    run.produce([meta_record(cameras[2], 1, base + 56_000)], key=lambda r: None)
    run.produce([meta_record(cameras[2], 2, base + 56_000)], key=lambda r: cameras[1].encode())
    run.produce([inside_grace, *closers])
    svc = run.start()
    # The late ones only after the clock has moved past 60 s + grace (time order across topics is Kafka's).
    deadline = time.monotonic() + 60
    while svc.metric("imask_features_rows_pushed_total", 'view="camera_stats_10s"') < 6 * len(cameras):
        assert time.monotonic() < deadline, "the first six windows were not pushed"
        time.sleep(0.3)
    run.produce(too_late)
    run.produce(closers2)
    got = wait_for(reader, cameras, base + 80_000)  # [70, 80) closes by ticks once the stream is idle

    every = [*main, inside_grace, *closers, *closers2]
    for camera in cameras:
        newest = got[camera]
        assert newest.values[VIEW_10S.name]["window_start_ms"] == base + 70_000
        assert_row(newest.values[VIEW_10S.name], reference_row(in_window(every, camera, base + 70_000,
                                                                         base + 80_000), 10), f"{camera} online 10s")
        assert_row(newest.values[VIEW_60S.name], reference_row(in_window(every, camera, base + 20_000,
                                                                         base + 80_000), 60), f"{camera} online 60s")
    rows10, repeated10 = offline(run.feast, VIEW_10S, cameras)
    rows60, repeated60 = offline(run.feast, VIEW_60S, cameras)
    assert repeated10 == repeated60 == 0
    for camera in cameras:
        for k in range(8):
            start, end = base + k * 10_000, base + (k + 1) * 10_000
            assert_row(rows10.loc[(camera, end)], reference_row(in_window(every, camera, start, end), 10),
                       f"{camera} offline 10s window {k}")
            assert_row(rows60.loc[(camera, end)], reference_row(in_window(every, camera, end - 60_000, end), 60),
                       f"{camera} offline 60s window ending {k}")
    # Per camera and variant: the variant's frames only (drop records name no variant).
    vrows10, vrepeated10 = offline(run.feast, VARIANT_VIEW_10S, cameras)
    vrows60, vrepeated60 = offline(run.feast, VARIANT_VIEW_60S, cameras)
    assert vrepeated10 == vrepeated60 == 0
    for camera in cameras:
        for variant in ("default", "precise"):
            mine = [r for r in every if r.camera_id == camera and variant_of(r) == variant]
            for k in range(8):
                start, end = base + k * 10_000, base + (k + 1) * 10_000
                for rows, first, size in ((vrows10, start, 10), (vrows60, end - 60_000, 60)):
                    inside = in_window(mine, camera, first, end)
                    if not inside:
                        assert (camera, variant, end) not in rows.index
                        continue
                    assert_row(rows.loc[(camera, variant, end)], reference_row(inside, size),
                               f"{camera} {variant} {size}s window ending {k}")
    assert (cameras[1], "precise", base + 30_000) not in vrows10.index
    assert (cameras[1], "precise", base + 80_000) in vrows60.index  # 60 s: [20, 80) still holds its frames
    router = FeatureReader(run.feast, "router")
    pairs = [(cameras[1], "default"), (cameras[1], "precise"), (cameras[0], "default")]
    online = router.read(pairs)
    for camera, variant in pairs:
        inside = [r for r in in_window(every, camera, base + 20_000, base + 80_000) if variant_of(r) == variant]
        assert online[(camera, variant)].window_end_ms == base + 80_000
        assert_row(online[(camera, variant)].values[VARIANT_VIEW_60S.name], reference_row(inside, 60),
                   f"{camera} {variant} router", [n for n in ROUTER_FEATURES if n in CHECKED])
    late = {(c, int(end)): int(rows10.loc[(c, end), "late_frames"]) for c in cameras for end in
            rows10.loc[c].index}
    assert late[(cameras[0], base + 70_000)] == 2  # the two late records, in the window being filled
    assert sum(late.values()) == 2
    assert svc.metric("imask_features_records_skipped_total", 'reason="undecodable"') == 2
    assert svc.metric("imask_features_records_skipped_total", 'reason="unknown_camera"') == 2  # bad/cam, no key
    assert svc.metric("imask_features_records_skipped_total", 'reason="key_mismatch"') == 1
    assert svc.proc.poll() is None  # bad input never stops it


def test_kill_9_mid_stream_loses_no_window(run: StreamRun, reader: FeatureReader) -> None:
    cameras = [f"{run.group}-cam{i}" for i in range(4)]
    base = base_ms(6)
    chunks = [frames(cameras, s, s + 10, base, fps=6, drop_every=31) for s in range(0, 180, 10)]
    svc = run.start()
    for chunk in chunks[:6]:
        run.produce(chunk)
        time.sleep(0.3)
    # The kill comes after a commit (chunks 0-4 committed: their windows pushed and their offsets stored), while
    # two more chunks close windows, push them and commit.
    committed_meta = sum(1 for chunk in chunks[:5] for r in chunk if r.topic == "meta")
    deadline = time.monotonic() + 60
    while svc.metric("imask_features_rows_pushed_total") < 3 * len(cameras) or run.committed() < committed_meta:
        assert time.monotonic() < deadline, "no window pushed and committed before the kill"
        time.sleep(0.2)
    run.produce(chunks[6])
    run.produce(chunks[7])
    time.sleep(0.5)  # mid-stream: windows closing, pushes and commits in flight
    pushed_before_kill = svc.metric("imask_features_rows_pushed_total", 'view="camera_stats_10s"')
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait()
    killed_after = 7
    # Restarted as on another host: no local state, all of it comes back from the changelog topics.
    run.env["IMASK_FEATURES_STREAM_STATE_DIR"] = str(run.tmp_path / "state-after-kill")
    svc = run.start()
    for chunk in chunks[8:]:
        run.produce(chunk)
        time.sleep(0.3)
    closers = [meta_record(c, 99_999, base + 185_000) for c in cameras]
    run.produce(closers)
    wait_for(reader, cameras, base + 190_000)
    every = [r for chunk in chunks for r in chunk] + closers
    rows10, repeated10 = offline(run.feast, VIEW_10S, cameras)
    rows60, repeated60 = offline(run.feast, VIEW_60S, cameras)
    windows = 0
    for camera in cameras:
        for k in range(19):
            start, end = base + k * 10_000, base + (k + 1) * 10_000
            assert_row(rows10.loc[(camera, end)], reference_row(in_window(every, camera, start, end), 10),
                       f"{camera} 10s window {k}")
            assert_row(rows60.loc[(camera, end)], reference_row(in_window(every, camera, end - 60_000, end), 60),
                       f"{camera} 60s window ending {k}")
            windows += 1
    # Double counting: every pushed row, repeated pushes included, holds exactly its window's records (state and
    # offsets commit together, so no record counts twice); what a crash repeats is pushes of windows the killed
    # run had pushed but not committed (online: skipped, the timestamp is not newer; offline: a second row).
    df = pd.read_parquet(repo.parquet_path(run.feast.data_dir, VIEW_10S))
    df = df[df["camera_id"].isin(cameras)]
    for _, row in df.iterrows():
        start = int(row["window_start_ms"])
        assert row["frames_in"] == len(in_window(every, row["camera_id"], start, start + 10_000))
    print(f"kill -9 after chunk {killed_after}: {windows} windows per view exact, no record counted twice; "
          f"windows pushed again: 10 s {repeated10}, 60 s {repeated60} rows of {windows} "
          f"({repeated10 / windows:.1%}); the killed run had pushed {pushed_before_kill:.0f}")
    assert repeated10 <= pushed_before_kill and repeated60 <= pushed_before_kill


def test_redis_restart_features_return_and_stale_is_reported(run: StreamRun, tmp_path: Path) -> None:
    """A Redis of the test's own (restarting the stack's would disturb other tests)."""
    private = StackSettings.on_free_ports(tmp_path / "stack")
    stack.up(private, servers=[redis_server.SERVER])
    try:
        feast = FeastSettings(project=f"imask_test_{uuid.uuid4().hex[:8]}", data_dir=tmp_path / "feast",
                              redis_url=private.redis_url)
        repo.apply(feast)
        run.feast = feast
        run.env.update(IMASK_REDIS_URL=private.redis_url, IMASK_FEATURES_STREAM_FEAST_DIR=str(feast.data_dir),
                       IMASK_FEATURES_STREAM_FEAST_PROJECT=feast.project)
        reader = FeatureReader(feast, "operators", stale_after_s=35)
        cameras = [f"{run.group}-cam{i}" for i in range(2)]
        base = base_ms(5)
        first = [*frames(cameras, 0, 30, base), *(meta_record(c, 9000, base + 33_000) for c in cameras)]
        run.produce(first)
        svc = run.start()
        got = wait_for(reader, cameras, base + 30_000, at_least=True)  # [30, 40) may close by ticks already
        end = base + 30_000
        assert not got[cameras[0]].fresh  # windows of minutes ago: reported stale, values still there
        assert reader.read(cameras, now=end / 1000 + 5)[cameras[0]].fresh

        stack.down(private, servers=[redis_server.SERVER])
        second = frames(cameras, 40, 70, base)
        run.produce([*second, *(meta_record(c, 9001, base + 73_000) for c in cameras)])
        deadline = time.monotonic() + 30
        while svc.metric("imask_features_pushes_total", 'result="failed"') == 0 or svc.ready():
            assert time.monotonic() < deadline, "pushes to a stopped Redis did not fail, or it stayed ready"
            time.sleep(0.3)
        stack.up(private, servers=[redis_server.SERVER])  # empty: an in-memory Redis lost everything
        # The window [70, 80) holding only the trailing record closes by ticks once the stream has been idle ~9 s:
        # on a slow machine it may be the one online by the time this reads. Either way the window online must be
        # exact, and no window before [60, 70) may be the newest.
        got = wait_for(reader, cameras, base + 70_000, at_least=True)
        every = [*first, *second]
        for camera in cameras:
            end_10s = got[camera].values[VIEW_10S.name]["window_end_ms"]
            end_60s = got[camera].values[VIEW_60S.name]["window_end_ms"]
            assert_row(got[camera].values[VIEW_10S.name],
                       reference_row(in_window(every, camera, end_10s - 10_000, end_10s), 10), camera)
            assert_row(got[camera].values[VIEW_60S.name],
                       reference_row(in_window(every, camera, end_60s - 60_000, end_60s), 60), camera)
        svc.wait_ready(30)
        repo.teardown(feast)
    finally:
        stack.down(private, servers=[redis_server.SERVER])
