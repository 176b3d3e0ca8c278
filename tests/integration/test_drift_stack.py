"""The drift service end to end on the real stack: synthetic frames.meta records (picture statistics, detections,
timings) on this test's own topics -> the real features stream (a subprocess, the session's own Feast project) ->
the real `imask drift` (a subprocess on this test's topics, Feast folder and Redis prefix) -> its events on this
test's alerts topic.

Two cameras: one steady throughout, one covered (luminance and sharpness collapse, no faces) after its reference
windows. Records carry capture times minutes in the past, so the stream closes minutes of 10 s windows in seconds
(it windows by event time) and the drift service gets them all at once: it must judge every one of them, in order
(the offline rows since its last poll, not only the newest window the online store holds)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import promql
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from conftest import subprocess_env
from imask.devstack.procs import ServiceProcess
from imask.drift import synthetic as syn
from imask.drift.store import DriftStore
from imask.features.redis_read import RedisFeatureReader
from imask.features.repo import FeastSettings
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import TopicReader, delete_topics, producer_config
from imask.v1 import alerts_pb2
from streams import spawn_tracked

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

WINDOW_MS = 10_000
REFERENCE_WINDOWS = 18  # the service's default
BREACH_WINDOWS = 3  # the persistence period (the service's default)
COVERED_WINDOWS = BREACH_WINDOWS + 4


@pytest.fixture
def prefix(feast_repo: FeastSettings) -> Iterator[str]:
    name = f"imask:drift-test:{uuid.uuid4().hex[:8]}"
    yield name
    store = DriftStore(feast_repo.redis_url, name)
    for key in list(store.client.scan_iter(match=f"{name}:*")):
        store.client.delete(key)


def alerts(kafka: KafkaSettings, reader: TopicReader, into: list[alerts_pb2.AlertEvent], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        msg = reader.poll(0.2)
        if msg is not None:
            into.append(alerts_pb2.AlertEvent.FromString(msg.value() or b""))


def test_covered_camera_alerts_through_the_stack_and_steady_one_stays_quiet(
        kafka_settings: KafkaSettings, feast_repo: FeastSettings, prefix: str, tmp_path: Path) -> None:
    suffix = kafka_settings.topic_meta.split(".")[0]
    group = f"{suffix}-features"
    steady, covered = f"{suffix}-steady", f"{suffix}-covered"
    env = {**subprocess_env(), "IMASK_REDIS_URL": feast_repo.redis_url}
    drift = spawn_tracked("drift", ["drift"], tmp_path / "logs", {
        **env, "IMASK_DRIFT_FEAST_DIR": str(feast_repo.data_dir), "IMASK_DRIFT_FEAST_PROJECT": feast_repo.project,
        "IMASK_DRIFT_PREFIX": prefix, "IMASK_DRIFT_POLL_S": "0.5",
        "IMASK_DRIFT_INSTANCE_ID": f"drift-{suffix}"})
    stream = spawn_tracked("features", ["features-stream"], tmp_path / "logs", {
        **env, "IMASK_FEATURES_STREAM_GROUP_ID": group, "IMASK_FEATURES_STREAM_TICKS_TOPIC": f"{suffix}.ticks",
        "IMASK_FEATURES_STREAM_STATE_DIR": str(tmp_path / "state"),
        "IMASK_FEATURES_STREAM_FEAST_DIR": str(feast_repo.data_dir),
        "IMASK_FEATURES_STREAM_FEAST_PROJECT": feast_repo.project,
        "IMASK_FEATURES_STREAM_AUTO_OFFSET_RESET": "earliest", "IMASK_FEATURES_STREAM_IDLE_TICK_S": "2"})
    began = time.time()
    with promql.scraped({"drift": (drift, "drift"), "features-stream": (stream, "features")}):
        check(kafka_settings, feast_repo, prefix, drift, stream, group, suffix, steady, covered, began)


def check(kafka_settings: KafkaSettings, feast_repo: FeastSettings, prefix: str, drift: ServiceProcess,
          stream: ServiceProcess, group: str, suffix: str, steady: str, covered: str, began: float) -> None:
    try:
        drift.wait_ready(60)
        stream.wait_ready(120)
        # Event time: a 10 s boundary minutes ago; reference windows, then the covered camera's lens taped over.
        total = REFERENCE_WINDOWS + COVERED_WINDOWS
        base = (int(time.time() * 1000) // WINDOW_MS - total - 3) * WINDOW_MS
        scene = syn.Scene(fps=5.0)
        tamper_ms = base + REFERENCE_WINDOWS * WINDOW_MS
        records = {steady: syn.meta_records(steady, scene, base, total * WINDOW_MS / 1000, seed=1),
                   covered: syn.meta_records(covered, scene, base, REFERENCE_WINDOWS * WINDOW_MS / 1000, seed=2)
                   + syn.meta_records(covered, scene, tamper_ms, COVERED_WINDOWS * WINDOW_MS / 1000, seed=3,
                                      seq0=100_000, picture=syn.covered_picture, faces=0.0)}
        end_ms = base + total * WINDOW_MS
        # One record per camera past the last window's end and the grace period closes it.
        for camera in records:
            records[camera] += syn.meta_records(camera, scene, end_ms + 3_000, 0.2, seed=4, seq0=200_000)
        producer = Producer(producer_config(kafka_settings))
        merged = sorted((ts, camera, value) for camera, recs in records.items() for ts, value in recs)
        for ts, camera, value in merged:
            producer.produce(kafka_settings.topic_meta, key=camera.encode(), value=value, timestamp=ts + 50)
            producer.poll(0)
        assert producer.flush(30) == 0

        metadata = AdminClient({"bootstrap.servers": kafka_settings.bootstrap_servers}).list_topics(timeout=10)
        parts = metadata.topics[kafka_settings.topic_alerts].partitions
        reader = TopicReader(kafka_settings, {(kafka_settings.topic_alerts, p): 0 for p in parts})
        got: list[alerts_pb2.AlertEvent] = []
        deadline = time.monotonic() + 45
        try:
            while time.monotonic() < deadline and not any(e.kind == "tamper_covered" for e in got):
                alerts(kafka_settings, reader, got, 0.5)
            # The cameras' partitions are processed at their own pace: the steady camera's windows may land after
            # the covered one's alert. Its last window online, then two of the drift service's polls, then
            # anything it raised.
            features = RedisFeatureReader(feast_repo, "drift")
            while time.monotonic() < deadline and (
                    features.read([steady])[steady].window_end_ms or 0) < end_ms:
                time.sleep(0.5)
            features.close()
            time.sleep(1.0)
            alerts(kafka_settings, reader, got, 2.0)
        finally:
            reader.close()
        opened = [e for e in got if e.kind == "tamper_covered" and e.state == "breached"]
        assert opened, f"no tamper_covered event; got {[(e.kind, e.camera_id) for e in got]}"
        event = opened[0]
        assert event.camera_id == covered and event.previous_state == "ok"
        assert event.source == f"drift-{suffix}" and "luminance" in event.detail
        # Raised by a window within 2 windows after the persistence period (3 covered windows in a row).
        window_end = int(event.labels["window_end_ms"])
        covered_windows = (window_end - tamper_ms) // WINDOW_MS
        assert BREACH_WINDOWS <= covered_windows <= BREACH_WINDOWS + 2, covered_windows
        assert not [e for e in got if e.camera_id == steady], "the steady camera raised an alert"
        # References were taken from the first windows of both cameras and kept in the test's Redis prefix.
        refs = {r.camera_id: r for r in DriftStore(feast_repo.redis_url, prefix).references()}
        assert refs[steady].start_ms == base and refs[covered].end_ms == tamper_ms
        assert drift.proc.poll() is None and stream.proc.poll() is None
        # The Grafana panels over the drift service's and the features stream's metrics have data (tests/promql.py).
        promql.wait_for_samples("drift stack")
        problems = promql.check_queries(promql.dashboard_queries(), "drift stack", began, time.time())
        assert not problems, "\n".join(problems)
    finally:
        from streams import stop_leftovers

        stop_leftovers()
        names = [t for t in AdminClient({"bootstrap.servers": kafka_settings.bootstrap_servers}).list_topics(
            timeout=10).topics if group in t or t == f"{suffix}.ticks"]
        if names:
            delete_topics(kafka_settings, names)
