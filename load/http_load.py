"""mask-api over HTTP next to gRPC, on one server and the same images in the same run (`make bench-http`).

  python -m load.http_load --duration 10     # starts a mask-api (gRPC + HTTP, result cache on the stack's Redis)

1. Latency at c=1 of a result-cache miss (an image not seen before: cache lookup, engine, store) and of a hit (the
   same image again: no engine), over HTTP and over gRPC (the cache emptied in between).
2. Throughput and latency at concurrency 1, 4 and 16 over gRPC and HTTP, the cache bypassed (Cache-Control: no-cache)
   so both measure the engine path; then HTTP hits at the same concurrencies.

Writes out/bench/http.json. The server's Redis keys live under a prefix of this run's own, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from imask.devstack.settings import REPO_ROOT
from imask.v1 import mask_service_pb2 as mpb
from imask.v1 import mask_service_pb2_grpc as mgrpc
from load.grpc_load import load_images

OUT = REPO_ROOT / "out" / "bench"
LOGS = REPO_ROOT / "out" / "load" / "http"
REDIS_URL = "redis://127.0.0.1:6390/0"


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (the load generator's cost stays small next to the
    server's; no client library is needed)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n{head}\r\n"
                          .encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        got: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            got[name.strip().lower()] = value.strip()
        data = await self.reader.readexactly(int(got.get("content-length", "0")))
        if got.get("connection") == "close":
            await self.close()
        return status, got, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _summary(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"n": 0}
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"n": len(latencies), "p50_ms": round(float(p50), 2), "p90_ms": round(float(p90), 2),
            "p99_ms": round(float(p99), 2)}


Call = Callable[[bytes], Awaitable[str]]  # sends one image, returns the outcome ("200", "OK", or an error)


async def closed_loop(make_call: Callable[[], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]],
                      images: list[bytes], concurrency: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    counter = iter(range(10**12))
    start = time.perf_counter()
    end = start + duration

    async def caller() -> None:
        call, close = await make_call()
        try:
            while time.perf_counter() < end:
                image = images[next(counter) % len(images)]
                t0 = time.perf_counter()
                outcome = await call(image)
                if outcome in ("200", "OK"):
                    latencies.append((time.perf_counter() - t0) * 1e3)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        finally:
            await close()

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "duration_s": round(wall, 2), "outcomes": outcomes,
            "throughput_rps": round(len(latencies) / wall, 2), "latency_ms": _summary(latencies)}


def http_client(port: int, headers: dict[str, str]) -> Callable[[], Awaitable[tuple[Call, Callable[[],
                                                                                                 Awaitable[None]]]]]:
    async def make() -> tuple[Call, Callable[[], Awaitable[None]]]:
        conn = HttpConnection("127.0.0.1", port)

        async def call(image: bytes) -> str:
            status, _, _ = await conn.post("/v1/mask", image, {"Content-Type": "image/jpeg", **headers})
            return str(status)

        return call, conn.close

    return make


def grpc_client(port: int, metadata: tuple[tuple[str, str], ...]) -> Callable[[], Awaitable[tuple[Call, Callable[
        [], Awaitable[None]]]]]:
    async def make() -> tuple[Call, Callable[[], Awaitable[None]]]:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)])
        stub = mgrpc.MaskServiceStub(channel)  # type: ignore[no-untyped-call]

        async def call(image: bytes) -> str:
            try:
                await stub.Mask(mpb.MaskRequest(image=image), timeout=60, metadata=metadata)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)

        async def close() -> None:
            await channel.close()

        return call, close

    return make


async def miss_then_hit(http_port: int, grpc_port: int, images: list[bytes], clear: Callable[[], None],
                        hits_per_image: int = 2) -> dict[str, Any]:
    """c=1: each image once (a miss: nothing stored under this run's prefix yet), then again (hits)."""
    result: dict[str, Any] = {}
    for transport in ("http", "grpc"):
        clear()
        conn = HttpConnection("127.0.0.1", http_port)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options=[
            ("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)])
        stub = mgrpc.MaskServiceStub(channel)  # type: ignore[no-untyped-call]
        timings: dict[str, list[float]] = {"miss": [], "hit": []}
        for image in images:
            for attempt in range(1 + hits_per_image):
                t0 = time.perf_counter()
                if transport == "http":
                    status, headers, _ = await conn.post("/v1/mask", image, {"Content-Type": "image/jpeg"})
                    assert status == 200, status
                    state = headers["x-cache"]
                else:
                    await stub.Mask(mpb.MaskRequest(image=image), timeout=60)
                    state = "miss" if attempt == 0 else "hit"
                ms = (time.perf_counter() - t0) * 1e3
                assert state == ("miss" if attempt == 0 else "hit"), (transport, attempt, state)
                timings[state].append(ms)
        await conn.close()
        await channel.close()
        result[transport] = {state: _summary(values) for state, values in timings.items()}
    return result


def bench(duration: float, concurrencies: tuple[int, ...] = (1, 4, 16)) -> dict[str, Any]:
    import redis

    from imask.devstack import stack
    from imask.devstack.procs import free_port, spawn, stop_all

    stack.up()
    images = load_images([])
    prefix = f"imask-bench-http-{uuid.uuid4().hex[:8]}"
    store = redis.Redis.from_url(REDIS_URL)

    def clear() -> None:
        keys = list(store.scan_iter(f"{prefix}:*"))
        if keys:
            store.delete(*keys)

    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "IMASK_MASK_API_PORT": str(grpc_port), "IMASK_MASK_API_HTTP_PORT": str(http_port),
           "IMASK_AUTH": "none", "IMASK_MASK_API_PUBLISH_META": "false", "IMASK_LOG_LEVEL": "warning",
           "IMASK_REDIS_URL": REDIS_URL, "IMASK_MASK_API_REDIS_PREFIX": prefix, "IMASK_MASK_API_CACHE_TTL_S": "600"}
    server = spawn("bench-mask-api-http", ["mask-api"], LOGS / "logs", env)
    no_cache_http = {"Cache-Control": "no-cache"}
    no_cache_grpc = (("cache-control", "no-cache"),)
    try:
        server.wait_ready(90)
        # Warm the server, both transports (not measured).
        asyncio.run(closed_loop(grpc_client(grpc_port, no_cache_grpc), images, 2, 2.0))
        asyncio.run(closed_loop(http_client(http_port, no_cache_http), images, 2, 2.0))
        cache = asyncio.run(miss_then_hit(http_port, grpc_port, images, clear))
        runs: list[dict[str, Any]] = []
        for c in concurrencies:
            for transport, make in (("grpc", grpc_client(grpc_port, no_cache_grpc)),
                                    ("http", http_client(http_port, no_cache_http))):
                runs.append({"transport": transport, "cache": "bypass",
                             **asyncio.run(closed_loop(make, images, c, duration))})
        for c in concurrencies:  # every image is stored by now: all hits
            runs.append({"transport": "http", "cache": "hit",
                         **asyncio.run(closed_loop(http_client(http_port, {}), images, c, duration / 2))})
    finally:
        stop_all([server])
        clear()
        store.close()
    size = [len(i) for i in images]
    return {"images": {"count": len(images), "kind": "720p crowd frames (JPEG q90)",
                       "bytes_mean": int(np.mean(size))},
            "cache_c1_ms": cache, "runs": runs,
            "cpu": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.http_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--out", type=Path, default=OUT / "http.json")
    args = parser.parse_args(argv)
    report = bench(args.duration)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for transport, states in report["cache_c1_ms"].items():
        for state, s in states.items():
            print(f"c=1 {transport:<4} cache {state:<4} n={s['n']:<4} p50 {s['p50_ms']:>8} ms  p99 {s['p99_ms']:>8} ms")
    for r in report["runs"]:
        lat = r["latency_ms"]
        print(f"{r['transport']:<4} cache {r['cache']:<6} c={r['concurrency']:<3} {r['throughput_rps']:>8} req/s  "
              f"p50 {lat.get('p50_ms', 0):>8} ms  p99 {lat.get('p99_ms', 0):>8} ms  {r['outcomes']}")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
