"""`imask console` in a real browser: Debian's chromium, headless, driven by Selenium through chromium-driver.

One ingest (a looping clip of one face, on the test's own topics), one worker, a router on a fleet of the test's own
(the stack's Redis), the session's own MLflow with one registered version, and the console: the camera list shows
the ingest's camera, the preview shows masked frames (the face region of the picture the console serves differs
from the raw frame of the same seq, read from frames.raw by the test, never by the console), a camera added through
the page appears in the ingest, the rollback button rolls an experiment back, and a request without the token or
without the CSRF token is refused. Each page's screenshot goes to docs/console/."""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import streams
from conftest import subprocess_env
from imask.devstack.procs import free_port
from imask.devstack.settings import REPO_ROOT
from imask.engine import default_variant
from imask.loadtest.samples import astronaut
from imask.media import decode_any
from imask.ops.http_json import call as request
from imask.ops.settings import KafkaSettings
from imask.registry.store import Registry
from imask.streaming.kafka import TopicReader
from imask.v1 import experiment_service_pb2 as epb
from imask.v1 import experiment_service_pb2_grpc as epb_grpc
from imask.v1 import frames_pb2 as pb
from streams import spawn_tracked, start_worker

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.mlflow, pytest.mark.browser]
TOKEN = "console-test-token-" + uuid.uuid4().hex
SHOTS = REPO_ROOT / "docs" / "console"
WAIT_S = 60.0
# The astronaut's face in the 360x360 picture every frame of the clip holds at (0, 0).
FACE = (slice(40, 150), slice(110, 210))


def wait_until(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    return streams.wait_until(what, probe, timeout, every=0.2)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make system-deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or ""), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def face_clip(path: Path, frames: int = 30) -> Path:
    picture = np.full((360, 640, 3), 40, np.uint8)
    picture[:360, :360] = cv2.resize(astronaut(), (360, 360))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, (640, 360))
    for _ in range(frames):
        writer.write(picture)
    writer.release()
    return path


def raw_frame(settings: KafkaSettings, camera: str, seq: int) -> pb.Frame:
    reader = TopicReader(settings, {(settings.topic_raw, p): 0 for p in range(settings.partitions)})
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is None:
                continue
            frame = pb.Frame.FromString(msg.value() or b"")
            if frame.camera_id == camera and frame.seq == seq:
                return frame
    finally:
        reader.close()
    raise AssertionError(f"raw frame {camera}/{seq} not found")


def http(url: str, method: str = "GET", data: dict[str, str] | None = None,
         headers: dict[str, str] | None = None) -> int:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_console_in_a_browser(kafka_settings: KafkaSettings, mlflow_uri: str, chromium: Any,
                              tmp_path: Path) -> None:
    import grpc
    from selenium.webdriver.common.by import By

    logs = tmp_path / "logs"
    env = {**subprocess_env(), "IMASK_REGISTRY_URI": mlflow_uri}
    Registry(mlflow_uri).register(default_variant(), description="registered by the console test")
    worker = start_worker(tmp_path, "worker-console", f"g-{uuid.uuid4().hex[:6]}")
    clip = face_clip(tmp_path / "face.mp4")
    ingest = spawn_tracked("ingest", ["ingest", "--keep-running", "--loop", "--fps", "4", "--source",
                                      f"lobby={clip}"], logs,
                           {**env, "IMASK_INGEST_ADMIN_ALLOWED_HOSTS": '["127.0.0.1"]'})
    router_port = free_port()
    fleet = f"fleet-{uuid.uuid4().hex[:6]}"
    router = spawn_tracked("router", ["router", "--port", str(router_port), "--fleet", fleet], logs,
                           {**env, "IMASK_AUTH": "none", "IMASK_ROUTER_GROUP_ID": f"r-{uuid.uuid4().hex[:6]}"})
    ingest.wait_ready(WAIT_S)
    admin = f"http://127.0.0.1:{json.loads(ingest.get('/readyz')[1])['admin_port']}"
    port = free_port()
    console = spawn_tracked("console", ["console", "--port", str(port), "--ingest-url", admin, "--router-address",
                                        f"127.0.0.1:{router_port}", "--features-address", "",
                                        "--alertmanager-url", ""], logs, {**env, "IMASK_CONSOLE_TOKEN": TOKEN})
    router.wait_ready(WAIT_S)
    console.wait_ready(WAIT_S)
    base = f"http://127.0.0.1:{port}"
    stub = epb_grpc.ExperimentServiceStub(grpc.insecure_channel(f"127.0.0.1:{router_port}"))  # type: ignore[no-untyped-call]
    stub.Create(epb.ExperimentSpec(name="canary-ui", arms=[epb.Arm(name="control", variant="default", weight=0.9),
                                                          epb.Arm(name="challenger", variant="realtime", weight=0.1)],
                                   guardrails=[epb.Guardrail(metric="latency_ms", tolerance=0.2)]), timeout=10)

    # Without the token: refused (the API), sent to sign in (pages).
    assert http(f"{base}/api/cameras") == 401
    assert http(f"{base}/cameras/lobby/preview") == 401
    driver = chromium
    driver.get(f"{base}/cameras")
    assert "/login" in driver.current_url
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "sign-in").click()
    wait_until("the camera list", lambda: driver.current_url.endswith("/cameras"))
    wait_until("lobby listed", lambda: "lobby" in driver.find_element(By.ID, "cameras").text)

    # The camera page: its preview shows masked frames, never the raw picture.
    driver.get(f"{base}/cameras/lobby")
    wait_until("a masked picture in the preview", lambda: driver.execute_script(
        "const i = document.getElementById('preview'); return i.complete && i.naturalWidth > 0 && i.dataset.seq;"))
    time.sleep(2.5)  # a few frames of history for the charts
    driver.save_screenshot(str(SHOTS / "camera.png"))
    shown = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('preview').dataset.src).then(async (r) => {
          const bytes = new Uint8Array(await r.arrayBuffer());
          let s = ''; bytes.forEach((b) => s += String.fromCharCode(b));
          done({seq: r.headers.get('X-Imask-Seq'), failClosed: r.headers.get('X-Imask-Fail-Closed'),
                data: btoa(s)});
        });""")
    assert shown["failClosed"] == "0"
    preview = decode_any(base64.b64decode(shown["data"]))
    raw = decode_any(raw_frame(kafka_settings, "lobby", int(shown["seq"])).data)
    assert preview.shape == raw.shape
    diff = np.abs(preview[FACE].astype(np.int16) - raw[FACE].astype(np.int16)).mean()
    assert diff > 15, f"the face region of the preview is the raw picture (mean difference {diff:.1f})"
    background = np.abs(preview[:, 400:].astype(np.int16) - raw[:, 400:].astype(np.int16)).mean()
    assert background < 5  # the same frame: only the face was masked

    # Adding a camera through the page makes it appear in the ingest.
    driver.get(f"{base}/cameras")
    new_url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    driver.find_element(By.ID, "camera_id").send_keys("dock")
    driver.find_element(By.ID, "camera_url").send_keys(new_url)
    driver.find_element(By.ID, "add").click()
    wait_until("the add confirmed", lambda: "camera dock added" in driver.page_source)
    code, listed = request(admin, "GET", "/cameras")
    assert code == 200 and {c["camera_id"] for c in listed["cameras"]} == {"lobby", "dock"}
    wait_until("dock listed", lambda: "dock" in driver.find_element(By.ID, "cameras").text)
    driver.save_screenshot(str(SHOTS / "cameras.png"))

    # With the session cookie but without the CSRF token, a change is refused; so is a forged token.
    cookie = f"imask_console={driver.get_cookie('imask_console')['value']}"
    form = {"camera_id": "evil", "url": new_url}
    assert http(f"{base}/cameras", "POST", form, {"Cookie": cookie}) == 403
    assert http(f"{base}/cameras", "POST", {**form, "csrf": "0" * 64}, {"Cookie": cookie}) == 403
    assert http(f"{base}/experiments/canary-ui/rollback", "POST", {}, {"Cookie": cookie}) == 403
    assert http(f"{base}/cameras", "POST", form) == 401
    assert "evil" not in json.dumps(request(admin, "GET", "/cameras")[1])

    # The rollback button rolls the experiment back.
    driver.get(f"{base}/experiments")
    assert "canary-ui" in driver.page_source and "running" in driver.find_element(By.ID, "exp-canary-ui").text
    driver.find_element(By.ID, "rollback-canary-ui").click()
    driver.switch_to.alert.accept()
    wait_until("the rollback confirmed", lambda: "rollback done" in driver.page_source)
    status = stub.Status(epb.ExperimentRef(name="canary-ui"), timeout=10)
    assert status.state == epb.EXPERIMENT_STATE_ROLLED_BACK and "console" in status.last_change
    driver.save_screenshot(str(SHOTS / "experiments.png"))

    driver.get(f"{base}/alerts")
    wait_until("the alerts page", lambda: "Recent events" in driver.page_source)
    driver.save_screenshot(str(SHOTS / "alerts.png"))
    driver.get(f"{base}/models")
    wait_until("the registered version", lambda: "version 1" in driver.page_source, timeout=30)
    driver.save_screenshot(str(SHOTS / "models.png"))
    assert worker.proc.poll() is None and console.proc.poll() is None
