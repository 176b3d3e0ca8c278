"""`make reliability`, faults part: real services as processes on a throwaway stack, one fault each, with figures.

Each scenario publishes a few cameras of a moving face (320x240, a few hundred frames each), injects one fault in
the middle of the stream, and accounts for every frame from frames.meta / frames.dlq / frames.masked (and the MP4s
for the recorder scenarios):

  worker_kill     two workers, one SIGKILLed mid-stream: the other takes its partitions over
  broker_kill     the single broker SIGKILLed mid-stream, restarted after 8 s
  recorder_kill   the recorder SIGKILLed mid-file, restarted after 2 s: frames in the MP4s vs frames masked
  disk_full       the recorder's output on a small filesystem that fills up; space given back after a while
  redis_down      mask-api's rate-limit Redis SIGKILLed and restarted: fail open to a per-replica limit
  cluster_broker_kill  three brokers, RF 3, min.insync.replicas 2, one broker SIGKILLed mid-stream, restarted later
  exactly_once_vs_at_least_once  the worker SIGKILL and saturated throughput in both delivery modes

Per scenario: frames in, masked, dropped (with reasons), lost (unaccounted), duplicates, raw egress (an output
whose face region equals the input's: 0 expected), time to recover (from the fault, and from its end where it
ends, to the next masked frame of every camera), passed. Stacks are the scenario's own (free ports, state under
out/reliability/stack), never the shared default one; everything started here is stopped here.

    python -m load.faults [--only worker_kill,redis_down] [--out out/reliability]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from imask.devstack import stack
from imask.devstack.procs import ServiceProcess, free_port, spawn, stop_all
from imask.devstack.settings import REPO_ROOT
from imask.frames.clock import now_us
from imask.frames.envelope import end_of_stream, make_frame
from imask.loadtest.accounting import StreamLedger
from imask.loadtest.samples import astronaut
from imask.media import encode_jpeg
from imask.ops.settings import KafkaSettings
from imask.recording import recording_of
from imask.streaming.kafka import ensure_topics, producer_config
from imask.types import Image
from imask.v1 import frames_pb2 as pb

log = logging.getLogger("imask.faults")

OUT = REPO_ROOT / "out" / "reliability"
SIZE = (320, 240)
FACE_SIDE = 240  # the astronaut photo scaled to this square, pasted at a moving x offset
FACE_ROWS, FACE_COLS = slice(40, 75), slice(90, 120)  # inside the face, relative to the pasted photo
VARIANT = "fast"  # detection on every frame at 320x192: the cheapest variant that still masks every frame


# --------------------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    name: str
    fault: str
    passed: bool = False
    frames_in: int = 0
    masked: int = 0
    dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # unaccounted: a seq that ended as neither a masked frame nor a drop record
    duplicates: int = 0
    raw_egress: int = 0
    recover_s: float | None = None  # fault -> next masked frame of every camera
    recover_after_restore_s: float | None = None  # end of the fault (broker answering again, space back) -> same
    duration_s: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def decide(self, **checks: bool) -> None:
        self.checks = checks
        self.passed = all(checks.values())


# --------------------------------------------------------------------------------------------------------------
# frames in, outputs collected
# --------------------------------------------------------------------------------------------------------------


def camera_names(n: int, partitions: int) -> list[str]:
    """Camera ids that land on different partitions (librdkafka's default partitioner: CRC32 of the key), so each
    worker of two really holds cameras when one is killed."""
    names: list[str] = []
    used: set[int] = set()
    i = 0
    while len(names) < n:
        name = f"cam{i}"
        part = zlib.crc32(name.encode()) % partitions
        if part not in used or len(used) == partitions:
            names.append(name)
            used.add(part)
        i += 1
    return names


@dataclass
class Stream:
    """The frames every camera sends: one moving face, JPEG-encoded once; decoded copies for the egress check."""

    cameras: list[str]
    frames: int
    fps: float
    jpegs: list[bytes] = field(default_factory=list)
    decoded: list[Image] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = cv2.resize(astronaut(), (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_AREA)
        for i in range(min(self.frames, 120)):  # 120 distinct pictures, reused cyclically
            x = (i * 3) % (SIZE[0] - FACE_SIDE)
            canvas = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
            canvas[:FACE_SIDE, x:x + FACE_SIDE] = base
            data = encode_jpeg(canvas, 85)
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert decoded is not None
            self.jpegs.append(data)
            self.decoded.append(decoded)
            self.offsets.append(x)

    def picture(self, seq: int) -> int:
        return seq % len(self.jpegs)

    def face(self, seq: int) -> tuple[slice, slice]:
        x = self.offsets[self.picture(seq)]
        return FACE_ROWS, slice(FACE_COLS.start + x, FACE_COLS.stop + x)


class Publisher(threading.Thread):
    """Publishes every camera's frames at `fps` (interleaved), then each camera's end-of-stream marker. Produce
    never blocks the pace: librdkafka queues while a broker is away and delivers (acks=all, idempotent) after."""

    def __init__(self, kafka: KafkaSettings, stream: Stream) -> None:
        super().__init__(daemon=True, name="publisher")
        self.kafka, self.stream = kafka, stream
        self.sent = 0
        self.failed: list[str] = []
        self.error: BaseException | None = None

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed.append(str(err))

    def run(self) -> None:
        try:
            producer = Producer(producer_config(self.kafka, **{"message.timeout.ms": 120000, "log_level": 0}))
            period = 1.0 / self.stream.fps
            start = time.monotonic()
            for seq in range(self.stream.frames):
                data = self.stream.jpegs[self.stream.picture(seq)]
                for camera in self.stream.cameras:
                    frame = make_frame(camera, seq, data, SIZE[0], SIZE[1], now_us(), self.stream.fps)
                    producer.produce(self.kafka.topic_raw, key=camera.encode(), value=frame.SerializeToString(),
                                     on_delivery=self._delivered)
                    self.sent += 1
                producer.poll(0)
                time.sleep(max(0.0, start + (seq + 1) * period - time.monotonic()))
            for camera in self.stream.cameras:
                producer.produce(self.kafka.topic_raw, key=camera.encode(),
                                 value=end_of_stream(camera, self.stream.frames).SerializeToString(),
                                 on_delivery=self._delivered)
            left = producer.flush(120)
            if left:
                self.failed.append(f"{left} frames never acknowledged")
        except BaseException as exc:  # reported by the scenario
            self.error = exc


class Collector(threading.Thread):
    """Reads frames.meta, frames.dlq and frames.masked from the start (the scenario's own topics) until every
    camera is accounted for or it is stopped; keeps when each masked frame was masked and seen, and checks every
    masked output against its input (raw egress)."""

    def __init__(self, kafka: KafkaSettings, stream: Stream) -> None:
        super().__init__(daemon=True, name="collector")
        self.kafka, self.stream = kafka, stream
        self.ledger = StreamLedger(set(stream.cameras))
        self.seen: list[tuple[str, int, float]] = []  # (camera, masked_ts_us, wall time seen)
        self.masked_seqs: dict[str, set[int]] = {c: set() for c in stream.cameras}
        self.raw_egress = 0
        self.fail_closed_not_flat = 0
        self.checked = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.kafka.bootstrap_servers,
                             "group.id": f"faults-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                             "isolation.level": "read_committed",
                             "max.partition.fetch.bytes": self.kafka.max_message_bytes, "log_level": 0})
        topics = (self.kafka.topic_meta, self.kafka.topic_dlq, self.kafka.topic_masked)
        consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(self.kafka.partitions)])
        try:
            while not self.stopping.is_set():
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                self._take(msg)
        finally:
            consumer.close()

    def _take(self, msg: Message) -> None:
        value = msg.value() or b""
        with self.lock:
            if msg.topic() == self.kafka.topic_meta:
                meta = pb.FrameMeta.FromString(value)
                self.ledger.add_meta(meta)
                if not meta.end_of_stream:
                    self.seen.append((meta.camera_id, meta.masked_ts_us, time.time()))
            elif msg.topic() == self.kafka.topic_dlq:
                self.ledger.add_drop(pb.DropRecord.FromString(value))
            else:
                masked = pb.MaskedFrame.FromString(value)
                if not masked.frame.end_of_stream and masked.frame.camera_id in self.masked_seqs:
                    self.masked_seqs[masked.frame.camera_id].add(masked.frame.seq)
                    self._check_egress(masked)

    def _check_egress(self, masked: pb.MaskedFrame) -> None:
        """Raw egress: the output is the input (same bytes), or its face region is unchanged (mean difference < 6
        per channel, the fuzz suite's bound). A fail-closed frame must be flat."""
        seq = masked.frame.seq
        original = self.stream.decoded[self.stream.picture(seq)]
        if masked.frame.data == self.stream.jpegs[self.stream.picture(seq)]:
            self.raw_egress += 1
            return
        out = cv2.imdecode(np.frombuffer(masked.frame.data, np.uint8), cv2.IMREAD_COLOR)
        self.checked += 1
        if out is None or out.shape != original.shape:
            return
        if masked.fail_closed:
            self.fail_closed_not_flat += int(int(out.max()) - int(out.min()) > 2)
            return
        rows, cols = self.stream.face(seq)
        diff = float(np.abs(out[rows, cols].astype(np.int16) - original[rows, cols].astype(np.int16)).mean())
        self.raw_egress += int(diff < 6)

    def complete(self) -> bool:
        with self.lock:
            return self.ledger.complete()

    def recovery_s(self, since: float) -> float | None:
        """From `since` (wall time) to the first frame masked after it, and seen, of every camera; None when a
        camera never had one."""
        since_us = since * 1e6
        firsts: dict[str, float] = {}
        with self.lock:
            for camera, masked_us, seen in self.seen:
                if masked_us >= since_us and camera not in firsts:
                    firsts[camera] = seen
        if set(firsts) != set(self.stream.cameras):
            return None
        return round(max(firsts.values()) - since, 2)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.complete():
            time.sleep(0.2)
        return self.complete()


def fill_from_ledger(result: ScenarioResult, collector: Collector) -> None:
    with collector.lock:
        summary = collector.ledger.summary()
    result.frames_in = int(summary["frames_in"])  # type: ignore[call-overload]
    result.masked = int(summary["frames_masked"])  # type: ignore[call-overload]
    result.dropped = int(summary["frames_dropped"])  # type: ignore[call-overload]
    result.drop_reasons = dict(summary["drop_reasons"])  # type: ignore[call-overload]
    result.duplicates = int(summary["duplicates"])  # type: ignore[call-overload]
    result.lost = int(summary["unaccounted"])  # type: ignore[call-overload]
    # A camera whose end marker never arrived: everything it sent counts as lost.
    expected = collector.stream.frames
    for camera in collector.stream.cameras:
        cam = collector.ledger.by_camera[camera]
        if cam.end_seq is None:
            result.frames_in += expected
            result.lost += expected - len(cam.accounted())
    result.raw_egress = collector.raw_egress
    result.details["outputs_checked_for_egress"] = collector.checked
    result.details["fail_closed"] = summary["fail_closed"]
    if collector.fail_closed_not_flat:
        result.details["fail_closed_not_flat"] = collector.fail_closed_not_flat


# --------------------------------------------------------------------------------------------------------------
# stacks and processes
# --------------------------------------------------------------------------------------------------------------


class FaultRun:
    """One faults run: its output folder, its stacks, and every process it started (stopped at the end)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.stack_root = out / "stack"
        self.logs = out / "faults-logs"
        self.started: list[ServiceProcess] = []
        shared = stack.StackSettings().kafka_libs_dir
        self.libs = shared if any(shared.glob("kafka_2.13-*.jar")) else None

    @contextlib.contextmanager
    def own_stack(self, name: str, brokers: int = 1) -> Iterator[stack.StackSettings]:
        settings = stack.StackSettings.on_free_ports(self.stack_root / name, brokers=brokers, kafka_libs=self.libs,
                                                     kafka_heap="384m")
        t0 = time.monotonic()
        try:
            stack.up(settings)
            log.info("stack %s up in %.1f s (%s)", name, time.monotonic() - t0, settings.bootstrap_servers)
            yield settings
        finally:
            stack.down(settings, wipe=True)

    def kafka(self, settings: stack.StackSettings, name: str, partitions: int = 4) -> KafkaSettings:
        suffix = f"{name}-{uuid.uuid4().hex[:6]}"
        kafka = KafkaSettings(bootstrap_servers=settings.bootstrap_servers, topic_raw=f"{suffix}.raw",
                              topic_masked=f"{suffix}.masked", topic_meta=f"{suffix}.meta",
                              topic_dlq=f"{suffix}.dlq", topic_alerts=f"{suffix}.alerts", partitions=partitions,
                              replication_factor=settings.replication_factor)
        ensure_topics(kafka)
        return kafka

    def env(self, kafka: KafkaSettings, **extra: str) -> dict[str, str]:
        """The services' environment: the shared IMASK_* Kafka settings (one name in every service), nothing else
        from the caller's IMASK_* (a stray one would make the services refuse to start)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("IMASK_")}
        return {**base, "IMASK_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "IMASK_TOPIC_RAW": kafka.topic_raw,
                "IMASK_TOPIC_MASKED": kafka.topic_masked, "IMASK_TOPIC_META": kafka.topic_meta,
                "IMASK_TOPIC_DLQ": kafka.topic_dlq, "IMASK_TOPIC_ALERTS": kafka.topic_alerts,
                "IMASK_PARTITIONS": str(kafka.partitions), "IMASK_REPLICATION_FACTOR": str(kafka.replication_factor),
                "IMASK_LOG_LEVEL": "info", **extra}

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> ServiceProcess:
        svc = spawn(name, args, self.logs, env)
        self.started.append(svc)
        return svc

    def worker(self, kafka: KafkaSettings, name: str, group: str, **env: str) -> ServiceProcess:
        return self.spawn(name, ["worker", "--group-id", group, "--instance-id", name, "--variant", VARIANT],
                          self.env(kafka, **env))

    def recorder(self, kafka: KafkaSettings, name: str, group: str, out_dir: Path) -> ServiceProcess:
        return self.spawn(name, ["recorder", "--group-id", group, "--output-dir", str(out_dir)], self.env(kafka))

    def stop_all(self) -> None:
        stop_all([svc for svc in self.started if svc.proc.poll() is None], timeout=20)
        self.started.clear()


def kill(svc: ServiceProcess) -> float:
    """SIGKILL a service; returns the wall time of the kill."""
    at = time.time()
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(10)
    return at


def wait_metric(svc: ServiceProcess, name: str, at_least: float, timeout: float, labels: str = "") -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline and svc.proc.poll() is None:
        with contextlib.suppress(OSError):
            value = svc.metric(name, labels)
            if value >= at_least:
                return value
        time.sleep(0.1)
    return value


def wait_group_assigned(workers: list[ServiceProcess], partitions: int, timeout: float = 60.0) -> None:
    """Until every partition is owned and every worker owns some (their /readyz lists them): the group settled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            owned = [set(json.loads(w.get("/readyz")[1]).get("partitions", [])) for w in workers]
            if set().union(*owned) == set(range(partitions)) and all(owned):
                return
        time.sleep(0.2)
    log.warning("group did not settle within %.0f s", timeout)


def recorded_frames(out_dir: Path, cameras: list[str]) -> dict[str, int]:
    """Frames in the finished MP4s of each camera (every file of it: cam.mp4, cam_from120.mp4, cam-2.mp4)."""
    counts = dict.fromkeys(cameras, 0)
    for path in sorted(out_dir.glob("*.mp4")):
        if path.name.endswith(".partial.mp4"):
            continue
        for camera in cameras:
            if recording_of(path.stem, {camera}):
                cap = cv2.VideoCapture(str(path))
                counts[camera] += max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))) if cap.isOpened() else 0
                cap.release()
    return counts


# --------------------------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------------------------


def run_stream(run: FaultRun, kafka: KafkaSettings, stream: Stream, fault: Callable[[Collector, Publisher], None],
               result: ScenarioResult, timeout: float = 150.0) -> Collector:
    """Publish `stream`, call `fault` while it flows, wait until every frame is accounted for; fills `result`."""
    collector = Collector(kafka, stream)
    collector.start()
    publisher = Publisher(kafka, stream)
    publisher.start()
    try:
        fault(collector, publisher)
        publisher.join(timeout)
        complete = collector.wait(timeout)
        result.details["accounted_in_time"] = complete
    finally:
        collector.stopping.set()
        collector.join(10)
    fill_from_ledger(result, collector)
    result.details["publish_failures"] = publisher.failed[:5] + ([repr(publisher.error)] if publisher.error else [])
    return collector


def stream_checks(result: ScenarioResult, collector: Collector) -> dict[str, bool]:
    return {"every_frame_accounted": result.lost == 0 and bool(result.details.get("accounted_in_time")),
            "no_raw_egress": result.raw_egress == 0 and not result.details.get("fail_closed_not_flat"),
            "masked_most": result.masked >= 0.9 * result.frames_in > 0,
            "published_all": not result.details["publish_failures"],
            "recovered": result.recover_s is not None}


def scenario_worker_kill(run: FaultRun) -> ScenarioResult:
    result = ScenarioResult("worker_kill", "2 workers (one group), one SIGKILLed mid-stream; no restart")
    with run.own_stack("single") as settings:
        kafka = run.kafka(settings, "wk")
        stream = Stream(camera_names(4, kafka.partitions), frames=240, fps=12)
        group = f"faults-wk-{uuid.uuid4().hex[:6]}"
        victim = run.worker(kafka, "wk-victim", group)
        survivor = run.worker(kafka, "wk-survivor", group)
        victim.wait_ready(120)
        survivor.wait_ready(120)
        wait_group_assigned([victim, survivor], kafka.partitions)

        def fault(collector: Collector, publisher: Publisher) -> None:
            done = wait_metric(victim, "imask_frames_out_total", 150, 90)  # well into the stream, holding frames
            result.details["victim_frames_before_kill"] = done
            at = kill(victim)
            result.details["fault_at_frame"] = publisher.sent
            result.details["_fault_at"] = at

        collector = run_stream(run, kafka, stream, fault, result)
        result.recover_s = collector.recovery_s(result.details.pop("_fault_at"))
        result.details["survivor_frames_out"] = survivor.metric("imask_frames_out_total")
        result.details["survivor_alive"] = survivor.proc.poll() is None
        result.decide(**stream_checks(result, collector), survivor_alive=result.details["survivor_alive"])
        run.stop_all()
    return result


def scenario_broker_kill(run: FaultRun) -> ScenarioResult:
    result = ScenarioResult("broker_kill", "single broker SIGKILLed mid-stream, restarted after 8 s; 1 worker")
    with run.own_stack("single") as settings:
        kafka = run.kafka(settings, "bk")
        stream = Stream(camera_names(4, kafka.partitions), frames=240, fps=12)
        worker = run.worker(kafka, "bk-worker", f"faults-bk-{uuid.uuid4().hex[:6]}")
        worker.wait_ready(120)
        wait_group_assigned([worker], kafka.partitions)

        def fault(collector: Collector, publisher: Publisher) -> None:
            wait_metric(worker, "imask_frames_out_total", 250, 90)
            result.details["fault_at_frame"] = publisher.sent
            at = time.time()
            stack.kill_broker(settings, 0)
            time.sleep(8)
            started = time.time()
            stack.start_broker(settings, 0)  # returns once it is a live broker again (log recovery after a crash)
            restored = time.time()
            result.details["broker_restart_took_s"] = round(restored - started, 2)
            result.details["broker_down_s"] = round(restored - at, 2)
            result.details["_times"] = (at, restored)

        collector = run_stream(run, kafka, stream, fault, result)
        at, restored = result.details.pop("_times")
        result.recover_s = collector.recovery_s(at)
        result.recover_after_restore_s = collector.recovery_s(restored)
        result.details["worker_alive"] = worker.proc.poll() is None
        result.decide(**stream_checks(result, collector), worker_alive=result.details["worker_alive"])
        run.stop_all()
    return result


def _recording_figures(result: ScenarioResult, collector: Collector, out_dir: Path, timeout: float) -> None:
    """Frames in the MP4s vs distinct frames on frames.masked, per camera, once the recorder closed its files."""
    expected = {c: len(s) for c, s in collector.masked_seqs.items()}
    deadline = time.monotonic() + timeout
    recorded = recorded_frames(out_dir, collector.stream.cameras)
    while time.monotonic() < deadline and any(recorded[c] < expected[c] for c in expected):
        time.sleep(0.5)
        recorded = recorded_frames(out_dir, collector.stream.cameras)
    result.details["frames_on_masked_topic"] = sum(expected.values())
    result.details["frames_in_mp4s"] = sum(recorded.values())
    result.details["footage_lost"] = sum(max(0, expected[c] - recorded[c]) for c in expected)
    result.details["footage_duplicated"] = sum(max(0, recorded[c] - expected[c]) for c in expected)
    result.details["mp4s"] = sorted(p.name for p in out_dir.glob("*.mp4") if ".partial" not in p.name)


def scenario_recorder_kill(run: FaultRun) -> ScenarioResult:
    result = ScenarioResult("recorder_kill", "recorder SIGKILLed mid-file, restarted after 2 s; 1 worker")
    out_dir = run.out / "faults-recordings" / "recorder_kill"
    shutil.rmtree(out_dir, ignore_errors=True)  # a previous run's cam0.mp4 would make this one's cam0-2.mp4
    with run.own_stack("single") as settings:
        kafka = run.kafka(settings, "rk")
        stream = Stream(camera_names(3, kafka.partitions), frames=200, fps=12)
        group = f"faults-rk-{uuid.uuid4().hex[:6]}"
        worker = run.worker(kafka, "rk-worker", f"{group}-w")
        recorder = run.recorder(kafka, "rk-recorder", f"{group}-r", out_dir)
        worker.wait_ready(120)
        recorder.wait_ready(60)
        restarted: list[ServiceProcess] = []

        def fault(collector: Collector, publisher: Publisher) -> None:
            wait_metric(recorder, "imask_frames_out_total", 200, 90)
            result.details["recorded_before_kill"] = recorder.metric("imask_frames_out_total")
            at = kill(recorder)
            time.sleep(2)
            again = run.recorder(kafka, "rk-recorder-2", f"{group}-r", out_dir)
            again.wait_ready(60)
            restarted.append(again)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and again.metric("imask_frames_out_total") == 0:
                time.sleep(0.1)
            result.details["recorder_writing_again_after_s"] = round(time.time() - at, 2)

        collector = run_stream(run, kafka, stream, fault, result)
        result.recover_s = result.details["recorder_writing_again_after_s"]
        _recording_figures(result, collector, out_dir, 60)
        result.decide(**stream_checks(result, collector), no_footage_lost=result.details["footage_lost"] == 0,
                      no_duplicated_footage=result.details["footage_duplicated"] == 0,
                      recorder_alive=bool(restarted) and restarted[0].proc.poll() is None)
        run.stop_all()
    return result


class Supervised:
    """A recorder restarted when it exits, after a 2 s back-off (an orchestrator's restart policy), watched: its
    restarts, exit codes, readiness and recording-error metric."""

    def __init__(self, run: FaultRun, kafka: KafkaSettings, group: str, out_dir: Path) -> None:
        self.run, self.kafka, self.group, self.out_dir = run, kafka, group, out_dir
        self.svc = run.recorder(kafka, "df-recorder", group, out_dir)
        self.restarts = 0
        self.exit_codes: list[int] = []
        self.not_ready_seen = False
        self.was_ready: set[int] = set()
        self.errors_metric = 0.0
        self.written_at: list[tuple[float, float]] = []  # (wall time, frames out of the live process)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> Supervised:
        self.svc.wait_ready(60)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.stopping.is_set():
            code = self.svc.proc.poll()
            if code is not None:
                self.exit_codes.append(code)
                time.sleep(2.0)
                if self.stopping.is_set():
                    return
                self.restarts += 1
                self.svc = self.run.recorder(self.kafka, f"df-recorder-{self.restarts}", self.group, self.out_dir)
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                ready = self.svc.get("/readyz", timeout=1)[0] == 200
                if ready:
                    self.was_ready.add(self.svc.proc.pid)
                elif self.svc.proc.pid in self.was_ready and self.svc.proc.poll() is None:
                    self.not_ready_seen = True  # a running recorder left rotation (not one still starting)
                self.errors_metric = max(self.errors_metric, self.svc.metric("imask_recording_errors_total"))
                self.written_at.append((time.time(), self.svc.metric("imask_frames_out_total")))
            time.sleep(0.3)

    def writing_since(self, since: float) -> float | None:
        """Seconds from `since` to the first sample after it in which a live recorder had written frames more
        than its previous sample."""
        last = None
        for at, frames in self.written_at:
            if at >= since and last is not None and frames > last:
                return round(at - since, 2)
            last = frames
        return None


def _mount_small(path: Path, size: str) -> str | None:
    """A tmpfs of `size` at `path`; None where this user may not mount (then the scenario is skipped)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


def scenario_disk_full(run: FaultRun) -> ScenarioResult:
    result = ScenarioResult("disk_full", "recorder output on an 8 MiB tmpfs with 1.5 MiB free; after 20 s full, "
                            "the filler is deleted (space back); 1 worker, recorder restarted 2 s after any exit")
    out_dir = run.out / "faults-recordings" / "disk_full"
    problem = _mount_small(out_dir, "8m")
    if problem is not None:
        result.skipped = f"cannot mount a small filesystem here ({problem}); run as root"
        return result
    result.details["filesystem"] = "tmpfs 8 MiB (mounted as root)"
    try:
        filler = out_dir / "filler"
        filler.write_bytes(b"\0" * (8 * 1024 * 1024 - 1536 * 1024))
        with run.own_stack("single") as settings:
            kafka = run.kafka(settings, "df")
            stream = Stream(camera_names(3, kafka.partitions), frames=240, fps=12)
            group = f"faults-df-{uuid.uuid4().hex[:6]}"
            worker = run.worker(kafka, "df-worker", f"{group}-w")
            worker.wait_ready(120)
            recorder = Supervised(run, kafka, f"{group}-r", out_dir).start()
            times: dict[str, float] = {}

            def fault(collector: Collector, publisher: Publisher) -> None:
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline and recorder.errors_metric == 0 and not recorder.exit_codes:
                    time.sleep(0.2)
                times["full"] = time.time()
                result.details["full_at_frame"] = publisher.sent
                time.sleep(20)
                filler.unlink()
                times["space_back"] = time.time()

            try:
                collector = run_stream(run, kafka, stream, fault, result, timeout=180)
                _recording_figures(result, collector, out_dir, 90)
                result.recover_after_restore_s = recorder.writing_since(times["space_back"])
            finally:
                recorder.stopping.set()
                recorder.thread.join(5)
            result.recover_s = result.recover_after_restore_s
            logged = sum(path.read_text(errors="replace").count('"recording failed"')
                         for path in run.logs.glob("df-recorder*.log"))
            result.details.update(recorder_restarts=recorder.restarts, recorder_exit_codes=recorder.exit_codes,
                                  failures_logged=logged, recording_errors_metric=recorder.errors_metric,
                                  readiness_went_down=recorder.not_ready_seen,
                                  full_for_s=round(times["space_back"] - times["full"], 1))
            checks = stream_checks(result, collector)
            checks.pop("recovered")
            result.decide(**checks, no_footage_lost=result.details["footage_lost"] == 0,
                          no_duplicated_footage=result.details["footage_duplicated"] == 0,
                          no_crash_loop=recorder.restarts == 0, failure_logged=logged > 0,
                          failure_in_metric_or_readiness=recorder.errors_metric > 0 or recorder.not_ready_seen,
                          resumed_when_space_back=result.recover_after_restore_s is not None)
            run.stop_all()
    finally:
        subprocess.run(["umount", "-l", str(out_dir)], capture_output=True)
    return result


def scenario_redis_down(run: FaultRun) -> ScenarioResult:
    """mask-api with a 5/s rate limit; a client sends bursts of 8 requests at the top of every second (5 allowed,
    3 refused while the limit holds). Redis is SIGKILLed for 6 s, then started again."""
    from imask.maskapi.client import MaskClient

    result = ScenarioResult("redis_down", "mask-api rate-limit Redis SIGKILLed for 6 s, then restarted; bursts of "
                            "8 requests a second against a 5/s limit")
    with run.own_stack("single") as settings:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMASK_")}
        api = run.spawn("mask-api", ["mask-api", "--port", str(port), "--auth", "none", "--no-publish-meta",
                                     "--redis-url", settings.redis_url, "--rate-limit", "5",
                                     "--bootstrap-servers", settings.bootstrap_servers],
                        {**env, "IMASK_LOG_LEVEL": "info", "IMASK_VARIANT": VARIANT})
        api.wait_ready(120)
        client = MaskClient(f"127.0.0.1:{port}", timeout_s=5)
        stream = Stream(["api"], frames=1, fps=1)
        jpeg = stream.jpegs[0]
        phases: dict[str, list[str]] = {"before": [], "redis_down": [], "after": []}
        phase = "before"
        egress = fail_closed = 0
        times: dict[str, float] = {}
        redis_pid = int(str(stack.status(settings)["redis"]["pid"]))

        def call() -> str:
            nonlocal egress, fail_closed
            try:
                reply = client.mask(jpeg)
            except Exception as exc:  # grpc.RpcError: the code is what we count
                code = getattr(exc, "code", None)
                return str(code().name) if callable(code) else type(exc).__name__
            out = cv2.imdecode(np.frombuffer(reply.image, np.uint8), cv2.IMREAD_COLOR)
            rows, cols = stream.face(0)
            original = stream.decoded[0]
            if reply.fail_closed:
                fail_closed += 1
            elif out is None or float(np.abs(out[rows, cols].astype(np.int16)
                                             - original[rows, cols].astype(np.int16)).mean()) < 6:
                egress += 1
            return "OK"

        start = time.time()
        second = 0
        while time.time() - start < 18:
            time.sleep(max(0.0, start + second - time.time()))
            second += 1
            if second == 5:
                os.kill(redis_pid, signal.SIGKILL)
                times["fault"] = time.time()
                phase = "redis_down"
            if second == 11:
                stack.up(settings)  # starts the missing Redis (empty); Kafka is adopted as it runs
                times["restored"] = time.time()
                phase = "after"
            phases[phase] += [call() for _ in range(8)]
            if phase == "after" and "shared_back" not in times and api.metric("imask_rate_limit_redis_up") == 1:
                times["shared_back"] = time.time()  # a burst after the retry interval found Redis again
        shared_back = "shared_back" in times
        tallies = {p: {code: codes.count(code) for code in sorted(set(codes))} for p, codes in phases.items()}
        every = [c for codes in phases.values() for c in codes]
        result.frames_in = len(every)
        result.masked = every.count("OK")
        result.dropped = every.count("RESOURCE_EXHAUSTED")
        result.drop_reasons = {"RATE_LIMITED": result.dropped} if result.dropped else {}
        result.lost = len(every) - result.masked - result.dropped  # errors: neither an answer nor a refusal
        result.raw_egress = egress
        without = {d: api.metric("imask_rate_limit_decisions_without_redis_total", f'decision="{d}"')
                   for d in ("allowed", "refused")}
        result.details.update(policy="fail open to a per-replica limit", requests_by_phase=tallies,
                              decisions_without_redis=without, fail_closed_replies=fail_closed,
                              shared_limit_back=shared_back)
        # Recovery: the API never stopped answering; time for the shared budget to be back after Redis restarts.
        result.recover_s = 0.0 if tallies["redis_down"].get("OK") else None
        result.recover_after_restore_s = (round(times["shared_back"] - times["restored"], 2) if shared_back
                                          else None)
        windows_down = max(1, len(phases["redis_down"]) // 8)
        result.decide(no_errors=result.lost == 0, no_raw_egress=egress == 0,
                      # Fail open, but to a limit: some calls served, some refused, never more than the
                      # per-replica limit in each one-second window (a burst may straddle two windows).
                      served_while_redis_down=0 < tallies["redis_down"].get("OK", 0) <= 5 * (windows_down + 1),
                      still_limited_while_down=tallies["redis_down"].get("RESOURCE_EXHAUSTED", 0) > 0,
                      decisions_counted=without["allowed"] + without["refused"] >= len(phases["redis_down"]),
                      shared_limit_back=shared_back)
        client.close()
        run.stop_all()
    return result


def scenario_cluster_broker_kill(run: FaultRun) -> ScenarioResult:
    result = ScenarioResult("cluster_broker_kill", "3 brokers (RF 3, min.insync.replicas 2), 2 workers; the broker "
                            "leading most raw partitions SIGKILLed mid-stream, restarted 5 s later")
    with run.own_stack("cluster", brokers=3) as settings:
        kafka = run.kafka(settings, "ck")
        stream = Stream(camera_names(4, kafka.partitions), frames=360, fps=12)
        group = f"faults-ck-{uuid.uuid4().hex[:6]}"
        workers = [run.worker(kafka, f"ck-w{i}", group) for i in range(2)]
        for w in workers:
            w.wait_ready(120)
        wait_group_assigned(workers, kafka.partitions)
        result.details["topic"] = _replication(kafka)

        def fault(collector: Collector, publisher: Publisher) -> None:
            wait_metric(workers[0], "imask_frames_out_total", 80, 90)
            leaders = [p["leader"] for p in result.details["topic"]["partitions"]]
            victim = max(set(leaders), key=leaders.count) - 1
            result.details["killed_node"] = victim + 1
            result.details["fault_at_frame"] = publisher.sent
            at = time.time()
            stack.kill_broker(settings, victim)
            time.sleep(5)
            started = time.time()
            stack.start_broker(settings, victim)
            restored = time.time()
            result.details["broker_restart_took_s"] = round(restored - started, 2)
            result.details["_times"] = (at, restored)

        collector = run_stream(run, kafka, stream, fault, result, timeout=180)
        at, restored = result.details.pop("_times")
        result.recover_s = collector.recovery_s(at)
        result.recover_after_restore_s = collector.recovery_s(restored)
        result.details["after"] = _replication(kafka)
        alive = all(w.proc.poll() is None for w in workers)
        rf_ok = all(len(p["replicas"]) == 3 for p in result.details["topic"]["partitions"])
        result.decide(**stream_checks(result, collector), workers_alive=alive, replication_3=rf_ok,
                      min_insync_2=result.details["topic"]["min.insync.replicas"] == "2")
        run.stop_all()
    return result


def _replication(kafka: KafkaSettings) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined,unused-ignore]

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": 0})
    topic = admin.list_topics(kafka.topic_raw, timeout=10).topics[kafka.topic_raw]
    resource = ConfigResource("topic", kafka.topic_raw)
    config = admin.describe_configs([resource])[resource].result(10)
    return {"name": kafka.topic_raw, "min.insync.replicas": config["min.insync.replicas"].value,
            "partitions": [{"partition": p, "leader": m.leader, "replicas": list(m.replicas), "isr": list(m.isrs)}
                           for p, m in sorted(topic.partitions.items())]}


def _worker_kill_in_mode(run: FaultRun, settings: stack.StackSettings, tag: str, **env: str) -> ScenarioResult:
    """Two workers of one group, one SIGKILLed mid-stream, in one delivery mode (env)."""
    result = ScenarioResult(tag, "2 workers, one SIGKILLed mid-stream")
    kafka = run.kafka(settings, tag)
    stream = Stream(camera_names(4, kafka.partitions), frames=240, fps=12)
    group = f"faults-{tag}-{uuid.uuid4().hex[:6]}"
    victim = run.worker(kafka, f"{tag}-victim", group, **env)
    survivor = run.worker(kafka, f"{tag}-survivor", group, **env)
    victim.wait_ready(120)
    survivor.wait_ready(120)
    wait_group_assigned([victim, survivor], kafka.partitions)

    def fault(collector: Collector, publisher: Publisher) -> None:
        wait_metric(victim, "imask_frames_out_total", 150, 90)
        result.details["_fault_at"] = kill(victim)

    collector = run_stream(run, kafka, stream, fault, result)
    result.recover_s = collector.recovery_s(result.details.pop("_fault_at"))
    result.decide(**stream_checks(result, collector))
    run.stop_all()
    return result


def _saturated_fps(run: FaultRun, settings: stack.StackSettings, tag: str, **env: str) -> float:
    """One worker fed as fast as the publisher goes: masked frames per second over the run's steady part."""
    kafka = run.kafka(settings, tag)
    stream = Stream(camera_names(4, kafka.partitions), frames=150, fps=400)
    worker = run.worker(kafka, f"{tag}-worker", f"faults-{tag}-{uuid.uuid4().hex[:6]}", **env)
    worker.wait_ready(120)
    wait_group_assigned([worker], kafka.partitions)
    result = ScenarioResult(tag, "saturated")
    collector = run_stream(run, kafka, stream, lambda c, p: None, result)
    run.stop_all()
    masked = sorted(us for _, us, _ in collector.seen)
    steady = masked[len(masked) // 10:]  # the first tenth is start-up (assignment, first fetches)
    span_s = (steady[-1] - steady[0]) / 1e6 if len(steady) > 1 else 0.0
    return round((len(steady) - 1) / span_s, 2) if span_s > 0 else 0.0


def scenario_exactly_once_vs_at_least_once(run: FaultRun) -> ScenarioResult:
    """The worker's two delivery modes in one run, on one stack: a worker SIGKILLed mid-stream in each (duplicates
    read_committed, frames lost), and saturated throughput of one worker in each (the cost of transactions)."""
    result = ScenarioResult("exactly_once_vs_at_least_once",
                            "worker SIGKILL mid-stream and saturated throughput, at-least-once vs exactly-once")
    eos = {"IMASK_WORKER_EXACTLY_ONCE": "true"}
    with run.own_stack("delivery") as settings:
        alo_kill = _worker_kill_in_mode(run, settings, "alo")
        eos_kill = _worker_kill_in_mode(run, settings, "eos", **eos)
        alo_fps = _saturated_fps(run, settings, "alo-sat")
        eos_fps = _saturated_fps(run, settings, "eos-sat", **eos)
    for field_name in ("frames_in", "masked", "dropped", "lost", "duplicates", "raw_egress", "recover_s"):
        setattr(result, field_name, getattr(eos_kill, field_name))
    result.details.update(
        at_least_once={"duplicates": alo_kill.duplicates, "lost": alo_kill.lost, "masked": alo_kill.masked,
                       "recover_s": alo_kill.recover_s, "saturated_fps": alo_fps},
        exactly_once={"duplicates": eos_kill.duplicates, "lost": eos_kill.lost, "masked": eos_kill.masked,
                      "recover_s": eos_kill.recover_s, "saturated_fps": eos_fps,
                      "transaction_ms": 100},
        throughput_ratio_eos_over_alo=round(eos_fps / alo_fps, 3) if alo_fps else None)
    result.decide(alo_accounted=alo_kill.passed, eos_accounted=eos_kill.passed,
                  eos_no_duplicates=eos_kill.duplicates == 0, throughput_measured=alo_fps > 0 and eos_fps > 0)
    return result


SCENARIOS: dict[str, Callable[[FaultRun], ScenarioResult]] = {
    "worker_kill": scenario_worker_kill,
    "broker_kill": scenario_broker_kill,
    "recorder_kill": scenario_recorder_kill,
    "disk_full": scenario_disk_full,
    "redis_down": scenario_redis_down,
    "cluster_broker_kill": scenario_cluster_broker_kill,
    "exactly_once_vs_at_least_once": scenario_exactly_once_vs_at_least_once,
}


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------


def table(results: list[ScenarioResult]) -> list[str]:
    head = (f"{'scenario':<22}{'in':>6}{'masked':>8}{'dropped':>8}{'lost':>6}{'dups':>6}{'egress':>7}"
            f"{'recover s':>11}{'after end s':>12}  passed")
    lines = [head]
    for r in results:
        if r.skipped:
            lines.append(f"{r.name:<22}  skipped: {r.skipped}")
            continue
        failed = [k for k, ok in r.checks.items() if not ok]
        lines.append(f"{r.name:<22}{r.frames_in:>6}{r.masked:>8}{r.dropped:>8}{r.lost:>6}{r.duplicates:>6}"
                     f"{r.raw_egress:>7}{_fmt(r.recover_s):>11}{_fmt(r.recover_after_restore_s):>12}  "
                     f"{'yes' if r.passed else 'NO (' + ', '.join(failed) + ')'}")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run_faults(out: Path, only: list[str] | None = None) -> dict[str, Any]:
    run = FaultRun(out)
    results: list[ScenarioResult] = []
    began = time.monotonic()
    for name, scenario in SCENARIOS.items():
        if only and name not in only:
            continue
        log.info("scenario %s", name)
        t0 = time.monotonic()
        try:
            result = scenario(run)
        except Exception as exc:  # one broken scenario must not hide the others' figures
            log.exception("scenario %s failed to run", name)
            result = ScenarioResult(name, "", details={"error": repr(exc)})
        finally:
            run.stop_all()
        result.duration_s = round(time.monotonic() - t0, 1)
        log.info("scenario %s: %s", name, table([result])[1])
        results.append(result)
    ran = [r for r in results if not r.skipped]
    return {"scenarios": [asdict(r) for r in results], "table": table(results),
            "passed": all(r.passed for r in ran), "duration_s": round(time.monotonic() - began, 1),
            "summary": {"scenarios_run": len(ran), "passed": sum(r.passed for r in ran),
                        "frames_lost": sum(r.lost for r in ran), "raw_egress": sum(r.raw_egress for r in ran),
                        "duplicates": sum(r.duplicates for r in ran)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated scenarios (of {', '.join(SCENARIOS)})")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default out/reliability)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    only = args.only.split(",") if args.only else None
    unknown = set(only or []) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = run_faults(args.out, only)
    (args.out / "faults.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(report["table"]))
    print(f"faults: {report['duration_s']} s, {'all passed' if report['passed'] else 'SOME FAILED'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
