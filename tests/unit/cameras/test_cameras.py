"""Camera pieces that need no broker: configuration, backoff, the grabber/publisher hand-over, resolution cap,
the camera commands and the admin API's policy and listener."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imask.cameras.camera import FrameSlot, GrabbedFrame, RateMeter, cap_resolution
from imask.cameras.capture import Backoff
from imask.cameras.config import CameraConfigError, camera_config, load_cameras_file, parse_source
from imask.ops.settings import CameraDefaults, IngestSettings


def frame(seq: int) -> GrabbedFrame:
    return GrabbedFrame(seq, np.zeros((4, 4, 3), np.uint8), 0, time.monotonic())


def test_cameras_file_defaults_and_per_camera_settings(tmp_path: Path) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text("""
defaults: {fps: 10, cap_width: 1280}
cameras:
  - {camera_id: lobby, url: "rtsp://admin:pw@10.0.0.5/stream1"}
  - {camera_id: dock, url: "rtsp://10.0.0.6/h264", drop_policy: complete, fps: 5}
""")
    lobby, dock = load_cameras_file(path, CameraDefaults(jpeg_quality=70))
    assert not camera_config(CameraDefaults(), {"camera_id": "w", "url": "²"}).is_stream
    assert (lobby.fps, lobby.cap_width, lobby.jpeg_quality, lobby.drop_policy) == (10, 1280, 70, "realtime")
    assert (dock.fps, dock.drop_policy) == (5, "complete")
    assert lobby.is_stream and lobby.redacted_url == "rtsp://***@10.0.0.5/stream1"
    assert not parse_source("f=clip.mp4", CameraDefaults()).is_stream


@pytest.mark.parametrize(("text", "message"), [
    ("cameras: [{camera_id: a, url: x}, {camera_id: a, url: y}]", "duplicate camera ids ['a']"),
    ("cameras: [{camera_id: a, url: x, fsp: 3}]", "fsp: Extra inputs are not permitted"),
    ("cameras: [{camera_id: 'a b', url: x}]", "camera_id: String should match pattern"),
    ("cameras: [{camera_id: a, url: x, drop_policy: sometimes}]", "drop_policy"),
    ("cameras: [{camera_id: a, url: x.mp4, pace: max}]", "use it with drop_policy complete"),
    ("camera: []", "expected a mapping with a 'cameras' list"),
    ("cameras: [1]", "entry 0 is not a mapping"),
    ("cameras: [{camera_id: a, url: x, defaults: 1}]", "defaults: Extra inputs are not permitted"),
    ("cameras: [{camera_id: a", "cameras file"),
])
def test_cameras_file_errors_say_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    with pytest.raises(CameraConfigError) as err:
        load_cameras_file(path, CameraDefaults())
    assert message in str(err.value)


def test_camera_fields_never_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMASK_CAMERA_ID", "sneaky")
    monkeypatch.setenv("IMASK_INGEST_CAMERA_ID", "sneaky")  # the name it would have in the ingest's namespace
    config = camera_config(IngestSettings(fps=7), {"camera_id": "a", "url": "rtsp://h/"})
    assert config.camera_id == "a" and config.fps == 7
    with pytest.raises(CameraConfigError, match="source 'nourl' must look like"):
        parse_source("nourl", CameraDefaults())


def test_backoff_grows_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays[3:]}) > 1  # jittered, not in lock-step
    backoff.reset()
    assert backoff.next_delay() <= 0.5


class Numbering:
    """What Camera._number does: hands out the next sequence number (under the slot's lock)."""

    def __init__(self) -> None:
        self.next_seq = 0

    def __call__(self) -> GrabbedFrame:
        made = frame(self.next_seq)
        self.next_seq += 1
        return made


def test_realtime_slot_keeps_only_the_newest_frame() -> None:
    slot, stop, number = FrameSlot(None), threading.Event(), Numbering()
    for _ in range(5):
        assert slot.put(number, stop, lambda _: None) is not None
    taken = slot.take(0.1)
    assert taken is not None and taken.seq == 4 and slot.take(0.01) is None
    slot.close()
    assert slot.drained


def test_complete_slot_blocks_the_grabber_when_full_and_reports_it() -> None:
    slot, stop, number = FrameSlot(2), threading.Event(), Numbering()
    waits: list[bool] = []
    slot.put(number, stop, waits.append)
    slot.put(number, stop, waits.append)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (slot.put(number, stop, waits.append), done.set()))
    thread.start()
    time.sleep(0.3)
    assert not done.is_set() and waits == [True] and number.next_seq == 2  # blocked, and not numbered yet
    assert [f.seq for f in (slot.take(0.1), slot.take(0.1)) if f] == [0, 1]
    thread.join(2)
    assert done.is_set() and waits == [True, False]
    taken = slot.take(0.1)
    assert taken is not None and taken.seq == 2  # nothing skipped


def test_a_closed_slot_numbers_nothing_more() -> None:
    slot, stop, number = FrameSlot(1), threading.Event(), Numbering()
    slot.put(number, stop, lambda _: None)
    stop.set()
    assert slot.put(number, stop, lambda _: None) is None  # stopped while full
    slot.close()
    assert slot.put(number, threading.Event(), lambda _: None) is None
    realtime = FrameSlot(None)
    realtime.close()
    assert realtime.put(number, threading.Event(), lambda _: None) is None
    assert number.next_seq == 1  # only the frame that was handed over got a number


@pytest.mark.parametrize(("url", "shown"), [
    ("rtsp://admin:pw@10.0.0.5/stream1", "rtsp://***@10.0.0.5/stream1"),
    ("rtsp://u:p@ss@h/s", "rtsp://***@h/s"),
    ("rtsp://u:a/b@h/s", "rtsp://***@h/s"),
    ("http://cam/video.cgi?user=admin&pwd=secret", "http://cam/video.cgi?***"),
    ("rtsp://10.0.0.5/stream1", "rtsp://10.0.0.5/stream1"),
])
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert camera_config(CameraDefaults(), {"camera_id": "c", "url": url}).redacted_url == shown


def test_rate_meter_over_window_and_since_start() -> None:
    meter = RateMeter(window_s=5.0)
    for i in range(50):
        meter.tick(100.0 + i * 0.1)  # 10 per second for 5 s
    assert meter.rate(105.0) == pytest.approx(10.0, rel=0.05)
    assert meter.rate(200.0) == 0.0
    fresh = RateMeter(window_s=5.0)
    for i in range(20):
        fresh.tick(10.0 + i * 0.1)
    assert fresh.rate(12.0) == pytest.approx(10.0, rel=0.05)  # 2 s old: not diluted over 5 s


def test_resolution_cap_keeps_aspect_and_never_upscales() -> None:
    image = np.zeros((1080, 1920, 3), np.uint8)
    assert cap_resolution(image, 1280, 0).shape == (720, 1280, 3)
    assert cap_resolution(image, 1280, 600).shape == (600, 1067, 3)
    assert cap_resolution(image, 0, 0) is image and cap_resolution(image, 4000, 4000) is image


def test_camera_commands_explain_themselves() -> None:
    for command in (["cameras", "--help"], ["rtsp-server", "--help"], ["ingest", "--help"]):
        out = subprocess.run([sys.executable, "-m", "imask.cli.main", *command], capture_output=True, text=True,
                             check=True)
        assert "usage:" in out.stdout
    ingest = subprocess.run([sys.executable, "-m", "imask.cli.main", "ingest", "--help"], capture_output=True,
                            text=True, check=True).stdout
    assert "IMASK_INGEST_STALL_AFTER_S" in ingest and "--cameras-file" in ingest and "/cameras" in ingest


def test_ingest_without_cameras_explains_how_to_give_some() -> None:
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "ingest", "--bootstrap-servers", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no cameras" in out.stderr and "--keep-running" in out.stderr


def test_admin_api_exposure_token_and_sources() -> None:
    from imask.cameras.admin_policy import (
        SourceRefused,
        authorized,
        check_admin_exposure,
        check_admin_source,
    )
    from imask.ops.settings import ConfigError, IngestSettings

    open_on_all = IngestSettings(admin_host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"IMASK_INGEST_ADMIN_HOST='0\.0\.0\.0'.*set IMASK_INGEST_ADMIN_TOKEN"):
        check_admin_exposure(open_on_all)
    check_admin_exposure(IngestSettings(admin_host="0.0.0.0", admin_token="t0ken"))
    check_admin_exposure(IngestSettings(admin_host="0.0.0.0", admin_port=-1))  # no admin API at all
    check_admin_exposure(IngestSettings())  # loopback without a token: local use
    check_admin_exposure(IngestSettings(ops_host="0.0.0.0"))  # metrics for Prometheus; the admin API stays local

    guarded = IngestSettings(admin_token="t0ken")
    assert authorized(guarded, {"Authorization": "Bearer t0ken"})
    assert not authorized(guarded, {"Authorization": "Bearer t0ke"})
    assert not authorized(guarded, {})
    assert authorized(IngestSettings(), {})

    settings = IngestSettings()
    check_admin_source("rtsp://10.0.0.5:554/stream1", settings)  # cameras live on private networks
    for url in ("/etc/passwd", "file:///etc/passwd", "0", "rtsp://127.0.0.1/x", "rtsp://localhost/x",
                "http://169.254.169.254/latest/meta-data", "rtsp://[::1]/x", "rtsp:///nohost", "udp://10.0.0.5:5000"):
        with pytest.raises(SourceRefused):
            check_admin_source(url, settings)
    listed = IngestSettings(admin_allowed_hosts=["127.0.0.1", "10.0.0.0/24"])
    check_admin_source("rtsp://127.0.0.1:8554/a", listed)
    check_admin_source("rtsp://10.0.0.77/a", listed)
    with pytest.raises(SourceRefused, match="ALLOWED_HOSTS"):
        check_admin_source("rtsp://10.0.1.1/a", listed)


def test_admin_api_has_its_own_listener_and_the_ops_port_never_answers_it() -> None:
    import json
    import urllib.error
    import urllib.request

    from imask.cli.cameras import main as cameras_cli
    from imask.ops.runtime import ServiceRuntime

    calls: list[tuple[str, str]] = []

    def routes(method: str, path: str, body: bytes, headers: Any) -> tuple[int, Any] | None:
        calls.append((method, path))
        return (200, {"cameras": []}) if path == "/cameras" else None

    def get(url: str, method: str = "GET") -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method, data=b"{}" if method == "POST"
                                                               else None), timeout=5) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    runtime = ServiceRuntime("probe", IngestSettings(ops_host="0.0.0.0")).start()
    try:
        admin_port = runtime.serve_admin(routes, "127.0.0.1", 0)
        ops = f"http://127.0.0.1:{runtime.details['ops_port']}"
        assert admin_port != runtime.details["ops_port"] and runtime.details["admin_port"] == admin_port
        assert get(f"{ops}/cameras")[0] == 404 and get(f"{ops}/cameras", "POST")[0] >= 404
        assert get(f"{ops}/metrics")[0] == 200 and not calls  # the ops port never reached the admin routes
        code, body = get(f"http://127.0.0.1:{admin_port}/cameras")
        assert code == 200 and json.loads(body) == {"cameras": []}
        assert get(f"http://127.0.0.1:{admin_port}/metrics")[0] == 404  # nor does the admin serve metrics
        assert cameras_cli(["--url", f"http://127.0.0.1:{admin_port}", "list"]) == 0
        assert cameras_cli(["--url", ops, "list"]) == 1  # an ops URL: refused, with a hint on stderr
    finally:
        runtime.close()
    assert cameras_cli(["--url", f"http://127.0.0.1:{admin_port}", "list"]) == 2  # nothing listens any more
