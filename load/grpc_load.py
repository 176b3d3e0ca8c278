"""gRPC load generator for mask-api: concurrency, rate, duration, image set; JSON report and a PNG plot.

  python -m load.grpc_load --target 127.0.0.1:50051 --concurrency 4 --duration 20
  python -m load.grpc_load --bench        # starts a server, compares with the bare engine at c=1, 4, 16

Closed loop by default (each of N callers sends its next request when the last reply came); with --rate the
callers share an open-loop schedule of that many requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from imask.devstack.settings import REPO_ROOT
from imask.v1 import mask_service_pb2 as mpb
from imask.v1 import mask_service_pb2_grpc as mgrpc

OUT = REPO_ROOT / "out" / "load" / "grpc"


def load_images(paths: list[str], limit: int = 60) -> list[bytes]:
    """JPEGs from files/folders, or 720p frames of the crowd clip (or a synthetic face clip when absent)."""
    from imask.loadtest.samples import shared_data, synthetic_clip
    from imask.media import encode_jpeg, iter_video, open_video

    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jpg")) if p.is_dir() else [p]
    if files:
        return [f.read_bytes() for f in files[:limit]]
    root = shared_data()
    clip = root / "video" / "facenet_pytorch_crowd_1080p.mp4" if root else None
    if clip is None or not clip.is_file():
        clip = synthetic_clip(OUT / "synthetic.mp4", frames=limit, fps=25, size=(1280, 720))
    import cv2

    cap, _ = open_video(clip)
    frames = [encode_jpeg(cv2.resize(f, (1280, 720), interpolation=cv2.INTER_AREA), 90)
              for _, f in zip(range(limit), iter_video(cap), strict=False)]
    cap.release()
    return frames


async def run_load(target: str, images: list[bytes], concurrency: int, duration: float, rate: float = 0.0,
                   api_key: str | None = None) -> dict[str, Any]:
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    samples: list[tuple[float, float, str]] = []  # (start offset s, latency ms, code)
    options = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = mgrpc.MaskServiceStub(channel)  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        end = start + duration
        counter = iter(range(10**12))

        async def caller() -> None:
            while True:
                n = next(counter)
                if rate > 0:
                    due = start + n / rate
                    if due >= end:
                        return
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                elif time.perf_counter() >= end:
                    return
                t0 = time.perf_counter()
                try:
                    await stub.Mask(mpb.MaskRequest(image=images[n % len(images)]), timeout=30, metadata=metadata)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                samples.append((t0 - start, (time.perf_counter() - t0) * 1e3, code))

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = [lat for _, lat, code in samples if code == "OK"]
    codes: dict[str, int] = {}
    for _, _, code in samples:
        codes[code] = codes.get(code, 0) + 1
    pct = np.percentile(ok, [50, 90, 99]) if ok else [0, 0, 0]
    return {"concurrency": concurrency, "rate": rate, "duration_s": round(wall, 2), "requests": len(samples),
            "codes": codes, "throughput_rps": round(len(ok) / wall, 2),
            "latency_ms": {"p50": round(float(pct[0]), 2), "p90": round(float(pct[1]), 2),
                           "p99": round(float(pct[2]), 2)},
            "samples": samples}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (over_time, hist) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        t = [s[0] for s in r["samples"] if s[2] == "OK"]
        lat = [s[1] for s in r["samples"] if s[2] == "OK"]
        label = f"c={r['concurrency']}" + (f" rate={r['rate']:g}/s" if r["rate"] else "")
        over_time.plot(t, lat, ".", markersize=3, label=label)
        hist.hist(lat, bins=40, histtype="step", label=label)
    over_time.set(xlabel="time since start (s)", ylabel="latency (ms)", title="mask-api unary latency over time")
    hist.set(xlabel="latency (ms)", ylabel="requests", title="latency histogram")
    over_time.legend()
    hist.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bare_engine(images: list[bytes], repeats: int = 2) -> dict[str, float]:
    """The same images through the engine in this process: decode, mask, encode (what the server does)."""
    from imask.engine import FrameInput, MaskingEngine, default_variant
    from imask.media import decode_image, encode_jpeg

    engine = MaskingEngine.load(default_variant(), provider="cpu")
    engine.warm_up()
    lat = []
    start = time.perf_counter()
    for r in range(repeats):
        for i, data in enumerate(images):
            t0 = time.perf_counter()
            result = engine.process([FrameInput(f"bare{r}-{i}", 0, decode_image(data, 8192, 8192))])[0]
            encode_jpeg(result.image, 90)
            lat.append((time.perf_counter() - t0) * 1e3)
    wall = time.perf_counter() - start
    engine.close()
    p50, p99 = np.percentile(lat, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2), "fps": round(len(lat) / wall, 2)}


def bench(duration: float) -> dict[str, Any]:
    from imask.devstack.procs import free_port, spawn, stop_all

    images = load_images([])
    engine = bare_engine(images)
    port = free_port()
    # The result cache is off: the images repeat every 60 requests, and this bench measures the engine path
    # (bench-http measures the cache).
    env = {**os.environ, "IMASK_MASK_API_PORT": str(port), "IMASK_AUTH": "none", "IMASK_MASK_API_PUBLISH_META": "false",
           "IMASK_LOG_LEVEL": "warning", "IMASK_MASK_API_CACHE_TTL_S": "0"}
    server = spawn("bench-mask-api", ["mask-api"], OUT / "logs", env)
    try:
        server.wait_ready(60)
        asyncio.run(run_load(f"127.0.0.1:{port}", images, 2, 2.0))  # warm the server and the channel
        runs = [asyncio.run(run_load(f"127.0.0.1:{port}", images, c, duration)) for c in (1, 4, 16)]
    finally:
        stop_all([server])
    c1, c16 = runs[0], runs[-1]
    return {
        "engine": engine, "runs": runs,
        "targets": {
            "c1_p50_minus_engine_p50_ms": round(c1["latency_ms"]["p50"] - engine["p50_ms"], 2),
            "c1_p99_over_engine_p99": round(c1["latency_ms"]["p99"] / engine["p99_ms"], 2),
            "c16_throughput_over_engine": round(c16["throughput_rps"] / engine["fps"], 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.grpc_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051", help="mask-api address")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel callers")
    parser.add_argument("--rate", type=float, default=0.0, help="open-loop requests/s in total (0: closed loop)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--images", nargs="*", default=[], help="JPEG files or folders (default: crowd frames)")
    parser.add_argument("--api-key", default=os.environ.get("IMASK_CLIENT_API_KEY"), help="client API key")
    parser.add_argument("--bench", action="store_true", help="start a server; compare with the bare engine")
    parser.add_argument("--out", type=Path, default=OUT, help="where report.json and latency.png go")
    args = parser.parse_args(argv)
    if args.bench:
        report = bench(args.duration)
        runs = report["runs"]
    else:
        runs = [asyncio.run(run_load(args.target, load_images(args.images), args.concurrency, args.duration,
                                     args.rate, args.api_key))]
        report = {"runs": runs}
    plot(runs, args.out / "latency.png")
    for r in runs:
        r.pop("samples")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    for r in runs:
        print(f"c={r['concurrency']:<3} {r['throughput_rps']:>7} req/s  p50 {r['latency_ms']['p50']:>7} ms  "
              f"p90 {r['latency_ms']['p90']:>7} ms  p99 {r['latency_ms']['p99']:>7} ms  codes {r['codes']}")
    if "engine" in report:
        print(f"bare engine: {report['engine']}")
        print(f"targets: {report['targets']}")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    print(f"report: {args.out / 'report.json'}, plot: {args.out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
