"""`make bench-cameras`: how many live 720p/25 fps RTSP cameras one ingest process sustains on this machine.

One RTSP mount (the 1080p crowd clip scaled to 1280x720, 25 fps, from the project's GStreamer camera simulator)
is shared by N cameras, so the server's encoding cost stays the same whatever N is and the ingest's cost (H.264
decode + JPEG encode + Kafka) is what grows. For N = 1, 2, 4, ... it reports per-camera published fps, frames
skipped, ingest CPU (total and per camera), the server's CPU, and the time from a frame's capture (read() in the
ingest) to its arrival on frames.raw as a consumer sees it. The baseline, measured in the same run, is decode +
JPEG encode of the same stream in this process (nothing else running): the cost floor per frame, and so the cameras per
core an ingest could reach at best.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from imask.cameras.capture import open_source
from imask.cameras.config import camera_config
from imask.devstack.procs import spawn, stop_all
from imask.devstack.rtsp_server import RtspServer, available
from imask.devstack.settings import REPO_ROOT
from imask.frames.clock import now_us
from imask.loadtest.accounting import summarize
from imask.loadtest.samples import shared_data
from imask.media import encode_jpeg
from imask.ops.http_json import call as request
from imask.ops.settings import CameraDefaults, KafkaSettings
from imask.streaming.kafka import TopicReader
from imask.v1 import frames_pb2 as pb
from load.scenarios import Scenario

OUT = REPO_ROOT / "out" / "bench" / "cameras"
TARGET_FPS = 25.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def baseline(url: str, seconds: float, quality: int) -> dict[str, float]:
    """Decode + JPEG encode of the same stream in this process: CPU ms per frame, split by stage. Process CPU
    time, not thread time: FFmpeg decodes on threads of its own."""
    cap, info = open_source(camera_config(CameraDefaults(), {"camera_id": "baseline", "url": url}))
    decode = encode = 0.0
    frames = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            t0 = time.process_time()
            ok, image = cap.read()
            t1 = time.process_time()
            if not ok:
                raise RuntimeError("baseline stream failed")
            encode_jpeg(image, quality)
            decode += t1 - t0
            encode += time.process_time() - t1
            frames += 1
    finally:
        cap.release()
    per_frame = (decode + encode) / frames * 1e3
    return {"frames": frames, "width": info.width, "height": info.height, "decode_ms": decode / frames * 1e3,
            "encode_ms": encode / frames * 1e3, "cpu_ms_per_frame": per_frame,
            "cameras_per_core_at_best": 1e3 / (per_frame * TARGET_FPS)}


def arrival_latency(settings: KafkaSettings, stop: threading.Event, warm_until: float, out: list[float]) -> None:
    reader = TopicReader(settings, {(settings.topic_raw, p): 0 for p in range(settings.partitions)})
    try:
        while not stop.is_set():
            msg = reader.poll(0.2)
            if msg is None:
                continue
            frame = pb.Frame.FromString(msg.value() or b"")
            if not frame.end_of_stream and time.monotonic() > warm_until:
                out.append((now_us() - frame.capture_ts_us) / 1e3)
    finally:
        reader.close()


def run_level(n: int, url: str, server_pid: int, seconds: float, warm: float) -> dict[str, Any]:
    scenario = Scenario(f"cams{n}", partitions=4)  # fresh topics: a level never sees another's frames
    settings = scenario.settings
    args = ["ingest", "--fps", str(TARGET_FPS)] + [a for i in range(n) for a in ("--source", f"cam{i}={url}")]
    ingest = spawn("ingest", args, OUT / "logs" / f"n{n}", scenario.env)
    stop = threading.Event()
    latencies: list[float] = []
    try:
        ingest.wait_ready(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cams = request(ingest.ops_url, "GET", "/cameras")[1]["cameras"]
            if all(c["state"] == "running" for c in cams):
                break
            time.sleep(0.2)
        consumer = threading.Thread(target=arrival_latency, args=(settings, stop, time.monotonic() + warm,
                                                                  latencies), daemon=True)
        consumer.start()
        time.sleep(warm)
        cpu0, srv0, t0 = cpu_seconds(ingest.proc.pid), cpu_seconds(server_pid), time.monotonic()
        before = {c["camera_id"]: c["counts"] for c in request(ingest.ops_url, "GET", "/cameras")[1]["cameras"]}
        time.sleep(seconds)
        cams = request(ingest.ops_url, "GET", "/cameras")[1]["cameras"]
        elapsed = time.monotonic() - t0
        cpu = (cpu_seconds(ingest.proc.pid) - cpu0) / elapsed
        server_cpu = (cpu_seconds(server_pid) - srv0) / elapsed
    finally:
        stop.set()
        stop_all([ingest], timeout=30)
        scenario.close()

    def delta(cam: dict[str, Any], key: str) -> int:
        return int(cam["counts"].get(key, 0)) - int(before[cam["camera_id"]].get(key, 0))

    published = [delta(c, "published") / elapsed for c in cams]
    skipped = sum(delta(c, "dropped_superseded") + delta(c, "dropped_backpressure") for c in cams)
    total = sum(delta(c, "published") for c in cams)
    return {
        "cameras": n, "fps_per_camera_min": min(published), "fps_per_camera_mean": statistics.mean(published),
        "skipped_pct": 100.0 * skipped / max(1, skipped + total),
        "ingest_cpu_cores": cpu, "ingest_cpu_cores_per_camera": cpu / n, "server_cpu_cores": server_cpu,
        "capture_to_raw_ms": summarize(latencies),
        "sustained": min(published) >= 0.95 * TARGET_FPS and skipped <= 0.01 * max(1, total),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.cameras_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,2,4,8,12,16", help="camera counts to try")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warm", type=float, default=3.0, help="seconds before measuring")
    args = parser.parse_args(argv)
    missing = available()
    data = shared_data()
    if missing or data is None:
        print(f"bench-cameras: {missing or '../shared/data is absent'}")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    clip = data / "video" / "facenet_pytorch_crowd_1080p.mp4"
    with RtspServer({"cam720": clip}, width=1280, log_path=OUT / "rtsp.log") as server:
        assert server.proc is not None
        url = server.url("cam720")
        base = baseline(url, 5.0, CameraDefaults().jpeg_quality)
        print(f"baseline (same stream, in process): {base['width']}x{base['height']}, decode "
              f"{base['decode_ms']:.1f} ms + JPEG {base['encode_ms']:.1f} ms = {base['cpu_ms_per_frame']:.1f} CPU "
              f"ms/frame -> at best {base['cameras_per_core_at_best']:.2f} cameras per core at 25 fps")
        levels = []
        for n in (int(x) for x in args.levels.split(",")):
            level = run_level(n, url, server.proc.pid, args.seconds, args.warm)
            level["cpu_per_camera_vs_baseline"] = (level["ingest_cpu_cores_per_camera"] * 1e3 / TARGET_FPS
                                                   / base["cpu_ms_per_frame"])
            levels.append(level)
            lat = {"p50": math.nan, "p95": math.nan, "p99": math.nan, **level["capture_to_raw_ms"]}
            print(f"{n:>2} cameras: {level['fps_per_camera_min']:5.1f} fps min / {level['fps_per_camera_mean']:5.1f} "
                  f"mean per camera, skipped {level['skipped_pct']:4.1f}%, ingest {level['ingest_cpu_cores']:.2f} "
                  f"cores ({level['ingest_cpu_cores_per_camera']:.3f}/camera = "
                  f"{level['cpu_per_camera_vs_baseline']:.2f}x baseline), server {level['server_cpu_cores']:.2f} "
                  f"cores, capture->raw p50/p95/p99 {lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms"
                  f"{'' if level['sustained'] else '  (not sustained)'}")
    sustained = max((lv["cameras"] for lv in levels if lv["sustained"]), default=0)
    report = {"baseline": base, "levels": levels, "sustained_cameras": sustained, "cores": os.cpu_count()}
    (OUT / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"sustained_cameras_720p25": sustained, "baseline_cpu_ms_per_frame":
                      round(base["cpu_ms_per_frame"], 2), "ingest_cpu_per_camera_at_1": round(
                          levels[0]["ingest_cpu_cores_per_camera"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
