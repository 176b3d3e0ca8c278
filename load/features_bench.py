"""`make bench-features`: how many frames.meta records per second the features stream takes on one core, and its CPU
per record, in one run.

1. Parse-only baseline, in this process: protobuf parse plus what a record contributes (`observe_meta`), per record.
2. The `imask features-stream` service pinned to one core (sched_setaffinity) drains a backlog of synthetic
   frames.meta records (`--cameras` cameras at `--fps` for `--seconds` of capture time, realistic faces, timings and
   picture statistics; every 40th frame a frames.dlq record) on topics, a consumer group and a Feast project of its
   own (on the stack's Redis; torn down after). Records per second from the first to the last record taken into a
   window, CPU seconds of the service's process over the same span (user + system, /proc), windows pushed.
Prints and writes out/bench/features.json: records/s on one core, CPU µs per record, the ratio to the 2,000
records/s target and to the parse-only cost, and the share of one core a live 2,000 records/s would take. A backlog
closes windows faster than a live stream does, so its Feast pushes weigh more per record than they would live.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from imask.devstack import stack
from imask.devstack.procs import ServiceProcess, spawn, stop_all
from imask.devstack.settings import REPO_ROOT, StackSettings
from imask.features import repo
from imask.features.windows import observe_meta
from imask.loadtest.features import Record, drop_record, meta_record
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import TopicSpec, delete_topics, ensure_topics, producer_config
from imask.v1 import frames_pb2 as pb

OUT = REPO_ROOT / "out" / "bench"
TARGET = 2000  # records per second on one core


def synthetic(cameras: int, fps: int, seconds: int, base_ms: int) -> list[Record]:
    out = []
    for n in range(fps * seconds):
        for c in range(cameras):
            ts = base_ms + n * 1000 // fps + c
            out.append(drop_record(f"bench-{c}", n, ts, 7) if n % 40 == 39 else meta_record(f"bench-{c}", n, ts))
    return out


def parse_cost(records: list[Record]) -> float:
    values = [r.value for r in records if r.topic == "meta"][:20_000]
    t0 = time.process_time()
    for value in values:
        meta = pb.FrameMeta.FromString(value)
        observe_meta(meta, meta.capture_ts_us // 1000)
    return (time.process_time() - t0) / len(values) * 1e6


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(cameras: int, fps: int, seconds: int) -> dict[str, Any]:
    stack.up()
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(topic_meta=f"bench{suffix}.meta", topic_dlq=f"bench{suffix}.dlq",
                          bootstrap_servers=StackSettings().bootstrap_servers)
    ensure_topics(kafka, [TopicSpec(kafka.topic_meta, kafka.partitions), TopicSpec(kafka.topic_dlq, kafka.partitions)])
    base = (int(time.time()) // 60) * 60_000 - (seconds + 120) * 1000
    records = synthetic(cameras, fps, seconds, base)
    records.append(meta_record("bench-0", 10**6, base + (seconds + 15) * 1000))  # closes the last windows
    parse_us = parse_cost(records)
    producer = Producer(producer_config(kafka))
    for r in records:
        producer.produce(kafka.topic_meta if r.topic == "meta" else kafka.topic_dlq, key=r.camera_id.encode(),
                         value=r.value, timestamp=r.capture_ms + 50)
        producer.poll(0)
    assert producer.flush(60) == 0

    tmp = Path(tempfile.mkdtemp(prefix="features-bench-"))
    feast = repo.FeastSettings(f"imask_bench_{suffix}", tmp / "feast", StackSettings().redis_url)
    repo.apply(feast)
    group = f"bench{suffix}-features"
    env = {**os.environ, "IMASK_TOPIC_META": kafka.topic_meta, "IMASK_TOPIC_DLQ": kafka.topic_dlq,
           "IMASK_FEATURES_STREAM_GROUP_ID": group, "IMASK_FEATURES_STREAM_TICKS_TOPIC": f"bench{suffix}.ticks",
           "IMASK_FEATURES_STREAM_STATE_DIR": str(tmp / "state"),
           "IMASK_FEATURES_STREAM_FEAST_DIR": str(feast.data_dir),
           "IMASK_FEATURES_STREAM_FEAST_PROJECT": feast.project,
           "IMASK_FEATURES_STREAM_AUTO_OFFSET_RESET": "earliest", "IMASK_LOG_LEVEL": "warning"}
    svc: ServiceProcess | None = None
    try:
        svc = spawn("features-bench", ["features-stream"], tmp / "logs", env)
        os.sched_setaffinity(svc.proc.pid, {min(os.sched_getaffinity(0))})  # one core
        svc.wait_ready(120)
        total = len(records)  # the closer is taken too
        taken = 0.0
        while taken < 1:  # the first record taken: consumer assigned, state ready
            taken = svc.metric("imask_features_records_total")
            time.sleep(0.05)
        t0, cpu0, n0 = time.monotonic(), cpu_seconds(svc.proc.pid), taken
        deadline = t0 + 600
        while taken < total and time.monotonic() < deadline:
            time.sleep(0.2)
            taken = svc.metric("imask_features_records_total")
        t1, cpu1 = time.monotonic(), cpu_seconds(svc.proc.pid)
        assert taken >= total, f"only {taken} of {total} records taken"
        windows = seconds // 10
        while svc.metric("imask_features_rows_pushed_total", 'view="camera_stats_10s"') < windows * cameras \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        span_records = taken - n0
        rate = span_records / (t1 - t0)
        cpu_us = (cpu1 - cpu0) / span_records * 1e6
        result = {
            "records": total, "cameras": cameras, "fps_per_camera": fps, "capture_seconds": seconds,
            "records_per_s_one_core": round(rate), "cpu_us_per_record": round(cpu_us, 1),
            "records_per_cpu_s": round(1e6 / cpu_us), "ratio_to_target": round(rate / TARGET, 2),
            "parse_only_us_per_record": round(parse_us, 1), "ratio_to_parse_only": round(cpu_us / parse_us, 1),
            "rows_pushed_10s": int(svc.metric("imask_features_rows_pushed_total", 'view="camera_stats_10s"')),
            "rows_pushed_60s": int(svc.metric("imask_features_rows_pushed_total", 'view="camera_stats_60s"')),
            "feast_pushes": int(svc.metric("imask_features_pushes_total", 'result="ok"')),
            "feast_push_s_sum": round(svc.metric("imask_features_push_seconds_sum"), 3),
            "one_core_share_at_target": round(TARGET * cpu_us / 1e6, 3),
        }
    finally:
        if svc is not None:
            stop_all([svc], timeout=30)
        repo.teardown(feast)
        from confluent_kafka.admin import AdminClient

        names = [t for t in AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=10).topics
                 if t.startswith(f"bench{suffix}") or group in t]
        delete_topics(kafka, names)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=200, help="200 cameras at 10 fps: 2,000 records a second")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=60, help="capture time of the backlog")
    args = parser.parse_args(argv)
    result = run(args.cameras, args.fps, args.seconds)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "features.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"features stream: {result['records_per_s_one_core']:,} frames.meta records/s on one core "
          f"({result['ratio_to_target']}x the {TARGET:,}/s target), {result['cpu_us_per_record']} µs CPU per record "
          f"({result['ratio_to_parse_only']}x parsing alone); a live 2,000/s takes "
          f"{result['one_core_share_at_target']:.0%} of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
