"""Fault counters at 0 from the start (imask.ops.metrics.zero_series): the helper, and each enumeration the services
initialise with against the label values the code counts under (so a reason added to the code is added to its
enumeration too, and none is invented)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from imask.alerting import metrics as alerting_metrics
from imask.alerting.events import KINDS
from imask.alerting.sink import zero_event_series
from imask.cameras.camera import DROP_REASONS, ERROR_KINDS, Camera
from imask.cameras.config import CameraConfig
from imask.devstack.settings import REPO_ROOT
from imask.engine import engine
from imask.features.serving import FRESHNESS
from imask.maskapi.executor import ENGINE_EXCEPTION
from imask.ops import metrics
from imask.pipeline.processor import DEAD_LETTER_REASONS
from imask.recording import recorder
from imask.v1 import frames_pb2 as pb

SHARED = REPO_ROOT / "shared" / "imask"


def label_literals(path: Path, metric: str, position: int) -> set[str]:
    """The string literals a file passes as the `position`th label value of `metric.labels(...)` (f-strings and
    names excluded)."""
    found = set()
    for args in re.findall(rf"\b{metric}\.labels\(([^()]*)\)", path.read_text()):
        parts = [part.strip() for part in args.split(",")]
        if position < len(parts) and re.fullmatch(r'"[a-z_-]+"', parts[position]):
            found.add(parts[position].strip('"'))
    return found


def test_zero_series_exports_every_combination_at_zero() -> None:
    registry = CollectorRegistry()
    counter = Counter("imask_test_faults_total", "test", ["camera", "reason"], registry=registry)
    metrics.zero_series(counter, camera=["a", "b"], reason=("x", "y", "z"))
    text = generate_latest(registry).decode()
    for camera in "ab":
        for reason in "xyz":
            assert f'imask_test_faults_total{{camera="{camera}",reason="{reason}"}} 0.0' in text
    counter.labels("a", "x").inc()
    metrics.zero_series(counter, camera=["a"], reason=["x"])  # again: a count is kept, never reset
    assert counter.labels("a", "x")._value.get() == 1
    with pytest.raises(ValueError):
        metrics.zero_series(counter, camera=["a"])  # every label must be given


def test_fail_closed_reasons_are_the_engines_own() -> None:
    source = (SHARED / "engine" / "engine.py").read_text()
    assert not re.search(r'(FailClosed|_fail_closed\(\w+,) "', source), "a reason without its constant"
    named = set(re.findall(r"FailClosed\(([A-Z_]+)[,)]", source))
    named |= set(re.findall(r"_fail_closed\(\w+, ([A-Z_]+),", source))
    assert {getattr(engine, name) for name in named} | {engine.UNREADABLE} == set(engine.FAIL_CLOSED_REASONS)
    assert ENGINE_EXCEPTION not in engine.FAIL_CLOSED_REASONS
    assert label_literals(SHARED / "maskapi" / "executor.py", "FRAMES_FAIL_CLOSED", 0) == set()  # the constant


def test_dead_letter_reasons_are_the_drop_reasons_a_worker_uses() -> None:
    used = set()
    for path in (SHARED / "frames" / "envelope.py", *(SHARED / "pipeline").glob("*.py")):
        used |= set(re.findall(r"pb\.(DROP_REASON_[A-Z_]+)", path.read_text()))
    assert used == set(DEAD_LETTER_REASONS)
    assert set(DEAD_LETTER_REASONS) < set(pb.DropReason.keys())


def test_camera_and_recorder_reasons_are_those_counted() -> None:
    camera = SHARED / "cameras" / "camera.py"
    assert set(re.findall(r'self\._drop\([^,]+, "(\w+)"', camera.read_text())) == set(DROP_REASONS)
    assert label_literals(camera, "CAMERA_ERRORS", 1) == set(ERROR_KINDS)
    assert label_literals(SHARED / "recording" / "recorder.py", "FRAMES_DROPPED", 0) == set(recorder.DROP_REASONS)


def test_service_enumerations_are_those_counted() -> None:
    from services.features_stream.service import SKIP_REASONS
    from services.mask_api.service import MetaPublisher

    stream = (SHARED / "features" / "stream.py").read_text()
    assert label_literals(SHARED / "features" / "stream.py", "SKIPPED", 1) == set(SKIP_REASONS)
    assert set(re.findall(r'skip="(\w+)"', stream)) == {"undecodable", "end_of_stream"}  # end_of_stream: not counted
    mask_api = REPO_ROOT / "services" / "mask_api" / "service.py"
    assert label_literals(mask_api, "META_DROPPED", 0) == set(MetaPublisher.DROP_REASONS)
    assert label_literals(SHARED / "features" / "serving.py", "SERVED", 1) == set(FRESHNESS)


def test_alerting_event_series_cover_the_catalogue() -> None:
    zero_event_series()
    text = generate_latest().decode()
    for kind, outcome in [("camera_down", "opened"), ("camera_down", "resolved"), ("camera_recovered", "resolved"),
                          ("camera_recovered", "nothing_to_resolve"), ("experiment_rolled_back", "oneshot"),
                          ("variant_regression", "opened"), ("-", "malformed")]:
        assert f'imask_alerting_events_total{{kind="{kind}",outcome="{outcome}"}}' in text, (kind, outcome)
    assert 'kind="camera_recovered",outcome="opened"' not in text  # a recovery never opens
    assert 'kind="experiment_rolled_back",outcome="opened"' not in text  # a one-off never opens
    assert {kind for kind in KINDS} <= {labels[0] for labels in alerting_metrics.EVENTS._metrics}


class _Outbox:
    def __init__(self) -> None:
        self.ended: list[str] = []

    def frame(self, camera_id: str, value: bytes, on_ack: object) -> None:
        raise AssertionError("no frame expected")

    def drop(self, camera_id: str, seq: int, reason: int, detail: str) -> None:
        raise AssertionError("no drop expected")

    def end_of_stream(self, camera_id: str, seq: int, fps: float) -> None:
        self.ended.append(camera_id)


def test_a_camera_exports_its_fault_series_at_zero_from_its_start(tmp_path: Path) -> None:
    outbox = _Outbox()
    camera = Camera(CameraConfig(camera_id="zero-cam", url=str(tmp_path / "missing.mp4")), outbox, 1 << 20).start()
    try:
        text = generate_latest().decode()
        for reason in DROP_REASONS:
            assert f'imask_camera_frames_dropped_total{{camera="zero-cam",reason="{reason}"}} 0.0' in text
        assert 'imask_camera_errors_total{camera="zero-cam",kind="read"} 0.0' in text
        assert 'imask_camera_reconnects_total{camera="zero-cam"} 0.0' in text
        assert 'imask_camera_gap_seconds_total{camera="zero-cam"} 0.0' in text
    finally:
        camera.stop()
        deadline = time.monotonic() + 10
        while not outbox.ended and time.monotonic() < deadline:
            time.sleep(0.01)
        metrics.forget_camera("zero-cam")
    assert outbox.ended == ["zero-cam"]
    assert 'camera="zero-cam"' not in generate_latest().decode()
