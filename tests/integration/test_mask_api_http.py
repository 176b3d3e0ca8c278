"""mask-api's HTTP API against real servers: a mask-api process (its HTTP port beside gRPC) on the stack's Redis
under a key prefix of the test's own (deleted afterwards), and for engine failures and a model not yet loaded the
same app on uvicorn in this process over a deliberately failing engine. Every status with the request that causes
it, faces masked in what comes back, camera bindings, the result cache, and the README's curl examples as written."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from conftest import BrokenEngine, detail_ratio
from imask.devstack.procs import ServiceProcess, free_port
from imask.devstack.settings import REPO_ROOT
from imask.engine import MaskingEngine
from imask.evaluation.leakcheck import check_leak
from imask.maskapi.client import MaskClient
from imask.media import encode_jpeg
from imask.types import Image
from imask.v1 import mask_service_pb2 as mpb
from streams import spawn_tracked

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6390/0"
FACE = (slice(95, 155), slice(205, 270))  # the astronaut's face


@pytest.fixture
def prefix(stack_up: None) -> Iterator[str]:
    """This test's own Redis key prefix (rate limits and cache): nothing is left in the user's stack."""
    import redis

    name = f"imask-test-http-{uuid.uuid4().hex[:10]}"
    yield name
    store = redis.Redis.from_url(REDIS_URL)
    keys = list(store.scan_iter(f"{name}:*"))
    if keys:
        store.delete(*keys)
    store.close()


class Api:
    def __init__(self, svc: ServiceProcess | None, http_port: int, grpc_port: int) -> None:
        self.svc = svc
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.url = f"http://127.0.0.1:{http_port}"

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def mask(self, body: bytes, query: str = "", key: str | None = None, content_type: str = "image/jpeg",
             path: str = "/v1/mask", **headers: str) -> tuple[int, dict[str, str], bytes]:
        sent = {"Content-Type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
        if key:
            sent["Authorization"] = f"Bearer {key}"
        return self.request("POST", path + (f"?{query}" if query else ""), body, sent)

    def metric(self, name: str, labels: str = "") -> float:
        _, _, body = self.request("GET", "/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name)] in " {" and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_http_api(tmp_path: Path, prefix: str, name: str = "http", **env: str) -> Api:
    grpc_port, http_port = free_port(), free_port()
    settings = {"IMASK_MASK_API_PORT": str(grpc_port), "IMASK_MASK_API_HTTP_PORT": str(http_port),
                "IMASK_AUTH": "none", "IMASK_MASK_API_PUBLISH_META": "false", "IMASK_REDIS_URL": REDIS_URL,
                "IMASK_MASK_API_REDIS_PREFIX": prefix, **env}
    svc = spawn_tracked(name, ["mask-api"], tmp_path / "logs", {**os.environ, **settings})
    svc.wait_ready(90)
    return Api(svc, http_port, grpc_port)


def new_key(keys: Path, client: str, revoke: bool = False, cameras: tuple[str, ...] = ()) -> str:
    out = subprocess.run([".venv/bin/imask", "api-key", client, "--file", str(keys),
                          *[arg for camera in cameras for arg in ("--camera", camera)],
                          *(["--revoke"] if revoke else [])], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT)
    return out.stdout.strip()


def decode(data: bytes) -> Image:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the reply is not an image"
    return image


def multipart(field: str, filename: str, content_type: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --- statuses ---------------------------------------------------------------------------------------------------

def test_statuses_of_a_served_api(tmp_path: Path, prefix: str, astronaut_image: Image) -> None:
    keys = tmp_path / "keys.json"
    alice = new_key(keys, "alice", cameras=("lobby",))
    revoked = new_key(keys, "mallory")
    new_key(keys, "mallory", revoke=True)
    api = start_http_api(tmp_path, prefix, IMASK_AUTH="api-key", IMASK_API_KEYS_FILE=str(keys),
                         IMASK_MAX_FRAME_BYTES="300000", IMASK_MAX_REQUEST_BYTES="400000")
    jpeg = encode_jpeg(astronaut_image, 90)
    cases: list[tuple[str, tuple[int, dict[str, str], bytes], int]] = [
        ("masked", api.mask(jpeg, key=alice), 200),
        ("no key", api.mask(jpeg), 401),
        ("unknown key", api.mask(jpeg, key="imk_wrong"), 401),
        ("revoked key", api.mask(jpeg, key=revoked), 403),
        ("bound camera", api.mask(jpeg, "camera=lobby", key=alice), 200),
        ("another camera", api.mask(jpeg, "camera=dock", key=alice), 403),
        ("bad camera id", api.mask(jpeg, "camera=a/b", key=alice), 400),
        ("garbage", api.mask(os.urandom(500), key=alice), 400),
        ("truncated", api.mask(jpeg[: len(jpeg) // 2], key=alice), 400),
        ("empty", api.mask(b"", key=alice), 400),
        ("png said, jpeg sent", api.mask(jpeg, key=alice, content_type="image/png"), 400),
        ("bad style", api.mask(jpeg, "style=sparkle", key=alice), 400),
        ("scale out of range", api.mask(jpeg, "scale=9", key=alice), 400),
        ("threshold above the variant's", api.mask(jpeg, "threshold=0.99", key=alice), 400),
        ("scale not a number", api.mask(jpeg, "scale=big", key=alice), 400),
        ("unknown parameter", api.mask(jpeg, "colour=red", key=alice), 400),
        ("bad timeout", api.mask(jpeg, key=alice, x_request_timeout_ms="-5"), 400),
        ("image over IMASK_MAX_FRAME_BYTES", api.mask(b"\xff\xd8" + b"\0" * 350_000, key=alice), 413),
        ("body over IMASK_MAX_REQUEST_BYTES", api.mask(b"\xff\xd8" + b"\0" * 450_000, key=alice), 413),
        ("text", api.mask(b"hello", key=alice, content_type="text/plain"), 415),
        ("gif", api.mask(b"GIF89a", key=alice, content_type="image/gif"), 415),
        ("no type", api.request("POST", "/v1/mask", jpeg, {"Authorization": f"Bearer {alice}"}), 415),
        ("deadline", api.mask(encode_jpeg(cv2.resize(astronaut_image, (1280, 1280)), 90), key=alice,
                              x_request_timeout_ms="1", cache_control="no-cache"), 504),
    ]
    got = {name: status for name, (status, _, _), _ in cases}
    assert got == {name: want for name, _, want in cases}
    for name, (status, headers, body), _ in cases:
        if status != 200:  # every error is JSON with its status, never an image
            assert headers["content-type"] == "application/json", name
            assert json.loads(body)["status"] == status and json.loads(body)["message"], name
    assert cases[1][1][1]["www-authenticate"].startswith("Bearer")
    status, headers, body = cases[0][1]
    assert headers["content-type"] == "image/jpeg" and headers["x-faces-masked"] == "1"
    assert headers["x-fail-closed"] == "false" and "x-fail-closed-reason" not in headers
    assert headers["x-model-version"].startswith("centerface@") and headers["x-cache"] == "miss"
    assert detail_ratio(decode(body)[FACE], astronaut_image[FACE]) < 0.3
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):  # open, no key
        assert api.request("GET", path)[0] == 200, path
    spec = json.loads(api.request("GET", "/openapi.json")[2])
    assert {"/v1/mask", "/v1/detect", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert {"image/jpeg", "image/png", "multipart/form-data"} == set(
        spec["paths"]["/v1/mask"]["post"]["requestBody"]["content"])
    assert api.metric("imask_http_requests_total", 'status="415"') == 3


def test_rate_limit_is_429_with_retry_after_and_shared_with_grpc(tmp_path: Path, prefix: str,
                                                                 astronaut_image: Image) -> None:
    window = 3600
    left = window - time.time() % window
    if left < 60:  # the burst stays in one window
        time.sleep(left + 0.1)
    api = start_http_api(tmp_path, prefix, IMASK_MASK_API_RATE_LIMIT="4",
                         IMASK_MASK_API_RATE_LIMIT_WINDOW_S=str(window))
    jpeg = encode_jpeg(cv2.resize(astronaut_image, (128, 128)), 85)
    statuses = [api.mask(jpeg)[0] for _ in range(3)]
    grpc_reply = MaskClient(f"127.0.0.1:{api.grpc_port}").mask(jpeg)  # the same budget: the 4th call
    status, headers, body = api.mask(jpeg)
    assert statuses == [200, 200, 200] and len(grpc_reply.detections) == 1
    assert status == 429 and 0 < int(headers["retry-after"]) <= window
    assert json.loads(body)["code"] == "RESOURCE_EXHAUSTED"


def test_queue_full_is_429_with_retry_after(tmp_path: Path, prefix: str, astronaut_image: Image) -> None:
    api = start_http_api(tmp_path, prefix, IMASK_MASK_API_QUEUE_MAX="1", IMASK_MASK_API_CACHE_TTL_S="0")
    big = encode_jpeg(cv2.resize(astronaut_image, (1920, 1920)), 90)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: api.mask(big), range(12)))
    statuses = [status for status, _, _ in results]
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}, statuses
    assert all(headers.get("retry-after") == "1" for status, headers, _ in results if status == 429)


class InProcessApi:
    """The HTTP app on uvicorn in this process (a real listener on a free port) over a servicer whose engine is
    given: for the statuses a healthy mask-api process cannot be made to give on demand (500, 503)."""

    def __init__(self, engine: Any | None) -> None:
        from imask.httpapi.app import create_app
        from imask.httpapi.server import HttpServer
        from imask.maskapi.executor import EngineExecutor
        from imask.maskapi.servicer import MaskServicer
        from imask.ops.settings import MaskApiSettings

        self.servicer = MaskServicer(MaskApiSettings(auth="none", cache_ttl_s=0), None, None)
        self.executor = EngineExecutor(engine) if engine is not None else None  # type: ignore[arg-type]
        if self.executor is not None:
            self.servicer.attach(self.executor)
        self.loop = asyncio.new_event_loop()
        self.server = HttpServer(create_app(self.servicer), "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.api = Api(None, self.server.port, 0)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if self.executor is not None:
            self.executor.close()


@pytest.mark.usefixtures("stack_up")
def test_engine_failure_is_500_without_an_image_and_no_model_is_503(engine: MaskingEngine,
                                                                     astronaut_image: Image) -> None:
    jpeg = encode_jpeg(astronaut_image, 90)
    broken = InProcessApi(BrokenEngine(engine, fail_calls={0}))
    try:
        status, headers, body = broken.api.mask(jpeg)
        assert status == 500 and headers["content-type"] == "application/json"
        assert json.loads(body)["code"] == "INTERNAL" and b"\xff\xd8" not in body  # no picture at all
        status, headers, body = broken.api.mask(jpeg)  # the next call is served: one bad batch fails only itself
        assert status == 200 and headers["x-faces-masked"] == "1"
    finally:
        broken.close()
    loading = InProcessApi(None)  # no engine attached yet: the model is loading
    try:
        status, headers, body = loading.api.mask(jpeg)
        assert status == 503 and headers["retry-after"] == "1" and json.loads(body)["code"] == "UNAVAILABLE"
        assert loading.api.request("GET", "/readyz")[0] == 503
        assert loading.api.request("GET", "/healthz")[0] == 200
    finally:
        loading.close()


# --- what comes back --------------------------------------------------------------------------------------------

def test_faces_are_masked_in_jpeg_png_and_multipart(tmp_path: Path, prefix: str, data_dir: Path,
                                                    astronaut_image: Image) -> None:
    api = start_http_api(tmp_path, prefix)
    truth = json.loads((data_dir / "photos_gt" / "dlib_faces_gt.json").read_text())
    covered = total = 0
    for name, info in truth.items():
        data = (data_dir / "photos_gt" / name).read_bytes()
        status, headers, body = api.mask(data, "style=solid&shape=box")
        assert status == 200 and headers["content-type"] == "image/jpeg", name
        masked = decode(body)
        original = decode(data)
        assert check_leak(original, masked).reliable_leaks == [], f"{name}: a face came back"
        for face in info["faces"]:
            x, y, w, h = face["box"]
            total += 1
            covered += int(masked[y + h // 2, x + w // 2].max()) < 16  # the centre is under a solid mask
    assert covered / total >= 0.95, f"{covered}/{total}"
    _, png = cv2.imencode(".png", astronaut_image)
    status, headers, body = api.mask(png.tobytes(), content_type="image/png")
    assert status == 200 and headers["content-type"] == "image/png" and body[:4] == b"\x89PNG"
    masked = decode(body)
    assert masked.shape == astronaut_image.shape and check_leak(astronaut_image, masked).reliable_leaks == []
    assert detail_ratio(masked[FACE], astronaut_image[FACE]) < 0.3
    form, form_type = multipart("image", "a.png", "image/png", png.tobytes())
    status, headers, body = api.mask(form, content_type=form_type)
    assert status == 200 and headers["content-type"] == "image/png"
    assert detail_ratio(decode(body)[FACE], astronaut_image[FACE]) < 0.3
    form, form_type = multipart("picture", "a.png", "image/png", png.tobytes())
    assert api.mask(form, content_type=form_type)[0] == 400  # no "image" field
    form, form_type = multipart("image", "a.gif", "image/gif", b"GIF89a")
    assert api.mask(form, content_type=form_type)[0] == 415


def test_json_detections_without_pixels(tmp_path: Path, prefix: str, astronaut_image: Image) -> None:
    api = start_http_api(tmp_path, prefix)
    jpeg = encode_jpeg(astronaut_image, 90)
    replies = [api.mask(jpeg, accept="application/json"), api.mask(jpeg, path="/v1/detect"),
               api.mask(jpeg, accept="image/jpeg;q=0.5, application/json")]
    for status, headers, body in replies:
        assert status == 200 and headers["content-type"] == "application/json"
        reply = json.loads(body)
        assert reply["faces_masked"] == 1 and (reply["width"], reply["height"]) == (512, 512)
        (face,) = reply["detections"]
        x1, y1, x2, y2 = face["box"]
        assert x1 < 237 < x2 and y1 < 125 < y2 and face["score"] > 0.5 and len(face["landmarks"]) == 5
        assert "image" not in reply and b"\xff\xd8" not in body
    status, headers, _ = api.mask(jpeg, accept="application/json;q=0.2, image/jpeg")
    assert status == 200 and headers["content-type"] == "image/jpeg"


def test_fail_closed_reply_is_grey_and_says_why(tmp_path: Path, prefix: str, astronaut_image: Image) -> None:
    api = start_http_api(tmp_path, prefix, IMASK_DETECTOR_TIMEOUT_MS="1", IMASK_DETECTOR_WIDTH="1280",
                         IMASK_DETECTOR_HEIGHT="736")
    big = cv2.resize(astronaut_image, (1280, 1280))
    status, headers, body = api.mask(encode_jpeg(big, 90))
    out = decode(body)
    assert status == 200 and headers["x-fail-closed"] == "true"
    assert headers["x-fail-closed-reason"] in {"detector_timeout", "detector_unhealthy"}
    assert int(out.max()) - int(out.min()) <= 2 and out.shape == big.shape
    assert api.metric("imask_result_cache_total", 'result="not_stored_fail_closed"') == 1  # never cached


# --- the result cache -------------------------------------------------------------------------------------------

def _engine_runs(api: Api) -> float:
    return api.metric("imask_stage_latency_seconds_count", 'stage="inference"')


def test_result_cache(tmp_path: Path, prefix: str, astronaut_image: Image) -> None:
    import redis

    keys = tmp_path / "keys.json"
    alice, bob = new_key(keys, "alice"), new_key(keys, "bob")
    env = {"IMASK_AUTH": "api-key", "IMASK_API_KEYS_FILE": str(keys), "IMASK_MASK_API_CACHE_TTL_S": "3"}
    api = start_http_api(tmp_path, prefix, **env)
    jpeg = encode_jpeg(astronaut_image, 90)

    first = api.mask(jpeg, "style=solid", key=alice)
    runs = _engine_runs(api)
    again = api.mask(jpeg, "style=solid", key=alice)
    assert (first[0], first[1]["x-cache"], again[0], again[1]["x-cache"]) == (200, "miss", 200, "hit")
    assert again[2] == first[2] and again[1]["x-faces-masked"] == "1"  # the same masked picture
    assert _engine_runs(api) == runs  # the engine was not called
    assert api.metric("imask_result_cache_total", 'result="hit"') == 1

    # Stored: the reply only, never the upload; with the TTL.
    store = redis.Redis.from_url(REDIS_URL)
    (entry,) = store.scan_iter(f"{prefix}:cache:*")
    value = store.get(entry)
    assert value is not None and jpeg not in value and first[2] in value
    assert 0 < int(store.ttl(entry)) <= 3  # type: ignore[arg-type]
    store.close()

    assert api.mask(jpeg, "style=solid", key=bob)[1]["x-cache"] == "miss"  # another key: its own results
    assert api.mask(jpeg, "style=pixelate", key=alice)[1]["x-cache"] == "miss"  # other options
    assert api.mask(jpeg, "style=solid", key=alice, accept="application/json")[1]["x-cache"] == "miss"
    assert api.mask(jpeg, "style=solid", key=alice, cache_control="no-cache")[1]["x-cache"] == "bypass"
    runs = _engine_runs(api)
    assert api.mask(jpeg, "style=solid", key=alice, accept="application/json")[1]["x-cache"] == "hit"
    # gRPC's unary Mask reads the same cache (the same key, options and encoding as the plain HTTP request)
    grpc_reply = MaskClient(f"127.0.0.1:{api.grpc_port}", alice).mask(
        jpeg, mpb.MaskOptions(style=mpb.MASK_STYLE_SOLID))
    assert grpc_reply.image == first[2] and _engine_runs(api) == runs
    assert api.metric("imask_result_cache_total", 'result="hit",transport="grpc"') == 1

    time.sleep(3.5)  # the TTL passed
    assert api.mask(jpeg, "style=solid", key=alice)[1]["x-cache"] == "miss"

    # A new model version (here: another input size, so another version string) misses what the old one stored.
    assert api.mask(jpeg, key=alice)[1]["x-cache"] == "miss"
    assert api.mask(jpeg, key=alice)[1]["x-cache"] == "hit"
    newer = start_http_api(tmp_path, prefix, "http2", IMASK_DETECTOR_WIDTH="480", IMASK_DETECTOR_HEIGHT="288", **env)
    status, headers, _ = newer.mask(jpeg, key=alice)
    assert status == 200 and headers["x-cache"] == "miss"
    assert headers["x-model-version"] != api.mask(jpeg, key=alice)[1]["x-model-version"]


# --- the README --------------------------------------------------------------------------------------------------

def test_readme_curl_examples_work_as_written(tmp_path: Path, prefix: str, astronaut_image: Image) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- http-examples -->\n```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no http-examples block"
    lines = block.group(1).splitlines()
    exports = [line for line in lines if line.startswith("export ")]
    assert exports == ["export IMASK_CLIENT_HTTP=http://127.0.0.1:8051 IMASK_CLIENT_API_KEY=imk_your_key"]
    keys = tmp_path / "keys.json"
    key = new_key(keys, "alice", cameras=("lobby",))
    api = start_http_api(tmp_path, prefix, IMASK_AUTH="api-key", IMASK_API_KEYS_FILE=str(keys))
    work = tmp_path / "examples"
    work.mkdir()
    cv2.imwrite(str(work / "photo.jpg"), astronaut_image)
    cv2.imwrite(str(work / "photo.png"), astronaut_image)
    # Only where the API is and the key change: the README's own lines, its export left out.
    script = "set -euo pipefail\n" + "\n".join(line for line in lines if not line.startswith("export "))
    env = {**os.environ, "IMASK_CLIENT_HTTP": api.url, "IMASK_CLIENT_API_KEY": key}
    out = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert re.search(r"(?im)^x-faces-masked: 1", out.stdout)
    detections = json.loads(out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1])
    assert detections["faces_masked"] == 1 and len(detections["detections"][0]["landmarks"]) == 5
    for name in ("masked.jpg", "masked.png", "masked-again.jpg"):
        masked = cv2.imread(str(work / name))
        assert masked is not None and masked.shape == astronaut_image.shape, name
        assert detail_ratio(masked[FACE], astronaut_image[FACE]) < 0.3, name
        assert check_leak(astronaut_image, masked).reliable_leaks == [], name
