"""`make bench-features`, second half: online reads of camera features, side by side in one run, and freshness.

1. Reads of one camera's feature vector and of 100 cameras in one call (feature service `operators`: both views,
   every feature), on one Feast project of the bench's own on the stack's Redis, p50/p99 over `--calls` calls each:
   - our FeatureService end to end: `imask features` (a process, API keys on) called over gRPC on loopback; for
     100 cameras also right after every camera's window closed (each call preceded by a push of newer windows, so
     every answer is re-read and rebuilt: the once-per-window worst case), and its Redis-layout reader in this
     process without the answers it keeps;
   - Feast's SDK in this process (`FeatureReader.read`: `get_online_features`), heap frozen after warm-up;
   - Feast's own `feast serve` (HTTP, `--max-requests 0 --no-access-log`) on the same store, one kept-alive
     connection, POST /get-online-features.
2. Freshness: the features stream (its own topics and group) on live frames.meta records of `--cameras` cameras
   at 5 fps stamped with the wall clock, and a reader polling the FeatureService every 50 ms: per camera and 10 s
   window, the time from its first frame's capture (the window's start) to the first read that returns the window.
   Target: window + 2 s at p95.
Adds "reads" and "freshness" to out/bench/features.json (load/features_bench.py writes the stream's figures there).
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import subprocess
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer

from imask.devstack import stack
from imask.devstack.procs import ServiceProcess, free_port, spawn, stop_all
from imask.devstack.settings import REPO_ROOT, StackSettings
from imask.features import repo
from imask.features.client import FeatureClient
from imask.features.redis_read import RedisFeatureReader
from imask.features.repo import redis_connection_string
from imask.features.schema import VIEWS, View, feast_row
from imask.features.store import FeatureReader, open_store, push_rows, utcnow
from imask.features.windows import add, feature_row, new_accumulator, observe_meta
from imask.loadtest.features import meta_record
from imask.ops.grpc_auth import hash_key
from imask.ops.settings import KafkaSettings
from imask.streaming.kafka import TopicSpec, delete_topics, ensure_topics, producer_config
from imask.v1 import frames_pb2 as pb

OUT = REPO_ROOT / "out" / "bench"
KEY = "imk_bench_reads"
TARGETS_MS = {"one": 3.0, "hundred": 10.0}


def percentiles(samples: list[float]) -> dict[str, float]:
    arr = np.array(samples) * 1e3
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "max_ms": round(float(arr.max()), 3), "calls": len(samples)}


def timed(call: Any, calls: int, warm: int = 50) -> dict[str, float]:
    for _ in range(warm):
        call()
    gc.collect()
    gc.freeze()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def push_cameras(feast: repo.FeastSettings, cameras: list[str], end: int | None = None,
                 views: tuple[View, ...] = VIEWS) -> None:
    store = open_store(feast)
    end = int(time.time()) // 10 * 10_000 if end is None else end
    for view in views:
        rows = []
        for camera in cameras:
            acc = new_accumulator()
            for n in range(50):
                add(acc, observe_meta(pb.FrameMeta.FromString(meta_record(camera, n, end - 9000 + n).value),
                                      end - 9000 + n))
            variant = "default" if view.by_variant else None
            rows.append(feast_row(camera, end - view.size_s * 1000, end, feature_row(acc, view.size_s), utcnow(),
                                  variant))
        push_rows(store, feast.data_dir, view, rows)


def after_window_close(feast: repo.FeastSettings, client: FeatureClient, calls: int) -> dict[str, float]:
    """The FeatureService's 100-camera read right after every camera's window closed: each timed call follows a push
    of a newer 10 s and 60 s window for all 100 cameras (untimed), so the service re-reads and rebuilds every
    camera's answer rather than answering from the ones it built (the worst case, once per window close)."""
    cameras = [f"bench-close-{i}" for i in range(100)]
    first_end = (int(time.time()) // 10 - calls - 2) * 10_000
    samples = []
    for k in range(calls):
        push_cameras(feast, cameras, first_end + k * 10_000, (VIEWS[0], VIEWS[1]))
        t0 = time.perf_counter()
        reply = client.get(cameras)
        samples.append(time.perf_counter() - t0)
        assert all(c.window_end_ms == first_end + k * 10_000 for c in reply.cameras)
    return percentiles(samples)


def feast_serve(feast: repo.FeastSettings, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    folder = tmp / "feast-serve"
    folder.mkdir()
    (folder / "feature_store.yaml").write_text(
        f"project: {feast.project}\nprovider: local\nregistry:\n  path: {feast.data_dir / 'registry.db'}\n"
        f"  cache_ttl_seconds: 60\nonline_store:\n  type: redis\n  connection_string: "
        f"\"{redis_connection_string(feast.redis_url)}\"\noffline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n")
    port = free_port()
    log = (tmp / "feast-serve.log").open("wb")
    proc = subprocess.Popen([str(REPO_ROOT / ".venv/bin/feast"), "-c", str(folder), "serve", "-h", "127.0.0.1",  # nosec B603
                             "-p", str(port), "--max-requests", "0", "--no-access-log",
                             "--keep-alive-timeout", "600"], stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"feast serve not up; see {tmp / 'feast-serve.log'}")


def reads(calls: int, tmp: Path, redis_url: str) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    feast = repo.FeastSettings(f"imask_bench_{suffix}", tmp / "feast", redis_url)
    repo.apply(feast)
    cameras = [f"bench-{i}" for i in range(100)]
    push_cameras(feast, cameras)
    keys = tmp / "keys.json"
    keys.write_text(json.dumps({"clients": {"bench": {"sha256": hash_key(KEY)}}}))
    env = {**os.environ, "IMASK_REDIS_URL": redis_url, "IMASK_FEATURES_FEAST_DIR": str(feast.data_dir),
           "IMASK_FEATURES_FEAST_PROJECT": feast.project, "IMASK_FEATURES_PORT": "0", "IMASK_API_KEYS_FILE": str(keys),
           "IMASK_LOG_LEVEL": "warning"}
    svc = spawn("features-read-bench", ["features"], tmp / "logs", env)
    server: subprocess.Popen[bytes] | None = None
    try:
        svc.wait_ready(120)
        target = f"127.0.0.1:{json.loads(svc.get('/readyz')[1])['grpc_port']}"
        client = FeatureClient(target, KEY)
        assert all(c.fresh for c in client.get(cameras).cameras)
        sdk = FeatureReader(feast, "operators")
        server, port = feast_serve(feast, tmp)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def http_read(asked: list[str]) -> None:  # one kept-alive connection (the server keeps it 600 s)
            body = json.dumps({"feature_service": "operators", "entities": {"camera_id": asked},
                               "full_feature_names": True})
            conn.request("POST", "/get-online-features", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200, data[:200]

        out: dict[str, Any] = {"feature_service": "operators", "features_per_camera": sum(len(v.features) for v in
                                                                                          VIEWS[:2])}
        for label, asked, n in (("one", cameras[:1], calls), ("hundred", cameras, max(calls // 4, 200))):
            row: dict[str, Any] = {"grpc_feature_service": timed(partial(client.get, asked), n),
                                   "feast_sdk_in_process": timed(partial(sdk.read, asked), n)}
            conn.close()  # a fresh connection, kept alive through the measurement
            row["feast_serve_http"] = timed(partial(http_read, asked), n)
            if label == "hundred":
                row["grpc_feature_service_after_window_close"] = after_window_close(feast, client, n // 4)
                row["redis_layout_reader_in_process"] = timed(partial(RedisFeatureReader(feast, "operators").read,
                                                                      asked), n)
            row["target_p99_ms"] = TARGETS_MS[label]
            out[label] = row
            gc.unfreeze()
        client.close()
        conn.close()
        return out
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        stop_all([svc], timeout=30)
        repo.teardown(feast)


def freshness(cameras: int, seconds: int, tmp: Path, redis_url: str) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(topic_meta=f"fresh{suffix}.meta", topic_dlq=f"fresh{suffix}.dlq",
                          bootstrap_servers=StackSettings().bootstrap_servers)
    ensure_topics(kafka, [TopicSpec(kafka.topic_meta, kafka.partitions), TopicSpec(kafka.topic_dlq, kafka.partitions)])
    feast = repo.FeastSettings(f"imask_fresh_{suffix}", tmp / "feast-fresh", redis_url)
    repo.apply(feast)
    group = f"fresh{suffix}-features"
    env = {**os.environ, "IMASK_TOPIC_META": kafka.topic_meta, "IMASK_TOPIC_DLQ": kafka.topic_dlq,
           "IMASK_REDIS_URL": redis_url, "IMASK_LOG_LEVEL": "warning",
           "IMASK_FEATURES_STREAM_GROUP_ID": group, "IMASK_FEATURES_STREAM_TICKS_TOPIC": f"fresh{suffix}.ticks",
           "IMASK_FEATURES_STREAM_STATE_DIR": str(tmp / "state"),
           "IMASK_FEATURES_STREAM_FEAST_DIR": str(feast.data_dir),
           "IMASK_FEATURES_STREAM_FEAST_PROJECT": feast.project, "IMASK_FEATURES_STREAM_IDLE_TICK_S": "1",
           "IMASK_FEATURES_FEAST_DIR": str(feast.data_dir), "IMASK_FEATURES_FEAST_PROJECT": feast.project,
           "IMASK_FEATURES_PORT": "0", "IMASK_AUTH": "none"}
    services: list[ServiceProcess] = []
    try:
        services.append(spawn("features-stream-fresh", ["features-stream"], tmp / "logs", env))
        services.append(spawn("features-fresh", ["features"], tmp / "logs", env))
        for svc in services:
            svc.wait_ready(120)
        client = FeatureClient(f"127.0.0.1:{json.loads(services[1].get('/readyz')[1])['grpc_port']}")
        names = [f"fresh-{i}" for i in range(cameras)]
        producer = Producer(producer_config(kafka))
        seen: dict[tuple[str, int], float] = {}
        t_end = time.time() + seconds
        next_frame, seq, next_poll = time.time(), 0, 0.0
        while time.time() < t_end + 20:
            now = time.time()
            if now < t_end and now >= next_frame:
                for camera in names:
                    record = meta_record(camera, seq, int(now * 1000))
                    producer.produce(kafka.topic_meta, key=camera.encode(), value=record.value)
                producer.poll(0)
                seq += 1
                next_frame += 0.2
            if now >= next_poll:
                for c in client.get(names).cameras:
                    if c.found and (c.camera_id, c.window_end_ms) not in seen:
                        seen[(c.camera_id, c.window_end_ms)] = time.time()
                next_poll = now + 0.05
            time.sleep(0.005)
        producer.flush(10)
        client.close()
        start_ms = int((t_end - seconds) * 1000)
        # Whole windows only: the first one started before the frames did, the last one after they stopped.
        lags = [at - (end - 10_000) / 1000 for (_, end), at in seen.items()
                if end - 10_000 >= start_ms and end <= t_end * 1000]
        after_end = [at - end / 1000 for (_, end), at in seen.items() if end - 10_000 >= start_ms and
                     end <= t_end * 1000]
        return {"cameras": cameras, "fps": 5, "seconds": seconds, "windows": len(lags),
                "capture_to_readable_p50_s": round(float(np.percentile(lags, 50)), 2),
                "capture_to_readable_p95_s": round(float(np.percentile(lags, 95)), 2),
                "window_end_to_readable_p95_s": round(float(np.percentile(after_end, 95)), 2),
                "target_s": 12.0}
    finally:
        stop_all(services, timeout=30)
        repo.teardown(feast)
        from confluent_kafka.admin import AdminClient

        topics = [t for t in AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=10).topics
                  if t.startswith(f"fresh{suffix}") or group in t]
        delete_topics(kafka, topics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="calls per one-camera measurement (a quarter, at "
                        "least 200, for 100 cameras)")
    parser.add_argument("--cameras", type=int, default=20, help="live cameras of the freshness measurement")
    parser.add_argument("--seconds", type=int, default=60, help="how long they send")
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument("--skip-reads", action="store_true")
    args = parser.parse_args(argv)
    stack.up()
    redis_url = StackSettings().redis_url
    tmp = Path(tempfile.mkdtemp(prefix="features-read-bench-"))
    result: dict[str, Any] = {} if args.skip_reads else {"reads": reads(args.calls, tmp, redis_url)}
    if not args.skip_freshness:
        result["freshness"] = freshness(args.cameras, args.seconds, tmp, redis_url)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "features.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(result)
    path.write_text(json.dumps(merged, indent=2))
    print(json.dumps(result, indent=2))
    r = result.get("reads", {})
    for label, text in (("one", "one camera"), ("hundred", "100 cameras in one call")) if r else ():
        row = r[label]
        print(f"{text}: FeatureService gRPC p50 {row['grpc_feature_service']['p50_ms']} ms p99 "
              f"{row['grpc_feature_service']['p99_ms']} ms (target {row['target_p99_ms']} ms) | Feast SDK p99 "
              f"{row['feast_sdk_in_process']['p99_ms']} ms | feast serve p99 {row['feast_serve_http']['p99_ms']} ms")
    hundred = r.get("hundred")
    if hundred:
        print(f"100 cameras right after a window close (every answer rebuilt): FeatureService gRPC p50 "
              f"{hundred['grpc_feature_service_after_window_close']['p50_ms']} ms p99 "
              f"{hundred['grpc_feature_service_after_window_close']['p99_ms']} ms | Redis-layout reader in process "
              f"p99 {hundred['redis_layout_reader_in_process']['p99_ms']} ms")
    if "freshness" in result:
        f = result["freshness"]
        print(f"freshness: capture -> readable online p95 {f['capture_to_readable_p95_s']} s (target "
              f"{f['target_s']} s), {f['windows']} windows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
