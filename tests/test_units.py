"""Library pieces that need no broker: media checks, envelope validation, masks, tracker, offsets, config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import near_uniform, similarity
from imask.engine.masks import (
    MaskShape,
    MaskSpec,
    MaskStyle,
    apply_masks,
    masked_regions_changed,
    obscure_frame,
)
from imask.engine.tracker import FaceTracker, iou_matrix, overlapping_pairs
from imask.frames.envelope import Rejected, make_frame, parse_frame
from imask.media import ImageError, decode_image, encode_jpeg, sniff_size
from imask.ops.settings import (
    SETTINGS_CLASSES,
    SHARED_GROUPS,
    ConfigError,
    FrameLimits,
    IngestSettings,
    RecorderSettings,
    WorkerSettings,
    check_environment,
    env_name,
    known_env_names,
    load_settings,
)
from imask.streaming.kafka import OffsetTracker
from imask.types import Image
from imask.v1 import frames_pb2 as pb

LIMITS = FrameLimits(max_frame_bytes=2_000_000, max_width=2000, max_height=2000)


def test_sniff_and_decode(astronaut_image: Image) -> None:
    jpeg = encode_jpeg(astronaut_image, 90)
    assert sniff_size(jpeg) == ("jpeg", 512, 512)
    _ok, png = cv2.imencode(".png", astronaut_image)
    assert sniff_size(png.tobytes()) == ("png", 512, 512)
    assert decode_image(jpeg, 2000, 2000).shape == (512, 512, 3)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x00" * 100, "not a JPEG or PNG"),
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:2] + bytes(np.random.default_rng(1).integers(0, 255, 300, dtype=np.uint8)), "corrupt"),
    (lambda b: b"", "not a JPEG"),
])
def test_bad_images_are_refused(astronaut_image: Image, mutate: object, message: str) -> None:
    data = mutate(encode_jpeg(astronaut_image, 90))  # type: ignore[operator]
    with pytest.raises(ImageError, match=message):
        decode_image(data, 2000, 2000)


def test_dimension_bomb_refused_before_decoding() -> None:
    huge = np.zeros((3000, 100, 3), np.uint8)
    with pytest.raises(ImageError, match="exceeds"):
        decode_image(encode_jpeg(huge, 50), 2000, 2000)


def _frame(**changes: object) -> pb.Frame:
    frame = make_frame("cam-1", 7, encode_jpeg(np.zeros((8, 8, 3), np.uint8), 80), 8, 8, 1)
    for key, value in changes.items():
        setattr(frame, key, value)
    return frame


@pytest.mark.parametrize("key, value, reason", [
    (b"cam-1", b"\xff\xff\xff garbage", pb.DROP_REASON_UNDECODABLE_ENVELOPE),
    (b"cam-1", _frame().SerializeToString()[:20], pb.DROP_REASON_UNDECODABLE_ENVELOPE),
    (b"cam-1", _frame(schema_version=9).SerializeToString(), pb.DROP_REASON_SCHEMA_VERSION),
    (b"other", _frame().SerializeToString(), pb.DROP_REASON_INVALID_FIELDS),
    (b"cam-1", _frame(encoding=pb.ENCODING_UNSPECIFIED).SerializeToString(), pb.DROP_REASON_INVALID_FIELDS),
    (b"cam-1", _frame(width=5000).SerializeToString(), pb.DROP_REASON_OVERSIZE),
    (b"cam-1", _frame(data=b"x" * 2_100_000).SerializeToString(), pb.DROP_REASON_OVERSIZE),
    (b"cam-1", None, pb.DROP_REASON_UNDECODABLE_ENVELOPE),
])
def test_envelope_rejections(key: bytes, value: bytes | None, reason: int) -> None:
    parsed = parse_frame(key, value, LIMITS)
    assert isinstance(parsed, Rejected), parsed
    assert parsed.reason == reason and parsed.detail


def test_valid_envelope_passes() -> None:
    parsed = parse_frame(b"cam-1", _frame().SerializeToString(), LIMITS)
    assert isinstance(parsed, pb.Frame) and parsed.seq == 7


@pytest.mark.parametrize("style", list(MaskStyle))
@pytest.mark.parametrize("shape", list(MaskShape))
def test_every_style_obscures_the_face(astronaut_image: Image, style: MaskStyle, shape: MaskShape) -> None:
    out = astronaut_image.copy()
    box = np.array([[205, 75, 290, 175]], np.float32)
    regions = apply_masks(out, box, MaskSpec(style, shape, 1.0))
    face = (slice(95, 155), slice(225, 270))  # well inside the ellipse
    assert similarity(out[face], astronaut_image[face]) < 0.6
    assert masked_regions_changed(astronaut_image, out, regions)
    outside = (slice(300, 512), slice(0, 512))
    assert np.array_equal(out[outside], astronaut_image[outside])
    x1, y1, _x2, _y2 = regions[0]
    corner_changed = not np.array_equal(out[y1:y1 + 3, x1:x1 + 3], astronaut_image[y1:y1 + 3, x1:x1 + 3])
    assert corner_changed == (shape is MaskShape.BOX)


def test_mask_scale_grows_the_region(astronaut_image: Image) -> None:
    box = np.array([[200, 100, 300, 200]], np.float32)
    small = apply_masks(astronaut_image.copy(), box, MaskSpec(scale=1.0))[0]
    large = apply_masks(astronaut_image.copy(), box, MaskSpec(scale=1.5))[0]
    assert tuple(small) == (200, 100, 300, 200)
    assert tuple(large) == (175, 75, 325, 225)
    with pytest.raises(ValueError):
        MaskSpec(scale=10)


def test_guard_catches_an_untouched_face(astronaut_image: Image) -> None:
    regions = np.array([[205, 75, 290, 175]], np.int32)
    assert not masked_regions_changed(astronaut_image, astronaut_image.copy(), regions)
    assert near_uniform(obscure_frame(astronaut_image))


def test_tracker_holds_and_expires() -> None:
    tracker = FaceTracker(max_missed=2)
    box = np.array([[10, 10, 50, 50]], np.float32)
    first = tracker.update(box, np.array([0.9], np.float32))
    assert len(first) == 1 and not first[0].held
    moved = tracker.update(box + 4, np.array([0.9], np.float32))
    assert moved[0].track_id == first[0].track_id
    # The output covers both the fresh detection and the smoothed track.
    assert moved[0].box[0] <= 14 and moved[0].box[2] >= 54
    empty = np.zeros((0, 4), np.float32)
    held = [tracker.update(empty, np.zeros(0, np.float32)) for _ in range(3)]
    assert [len(h) for h in held] == [1, 1, 0]
    assert held[0][0].held and held[1][0].box[2] - held[1][0].box[0] > 40  # grows while held


def test_overlapping_pairs_are_the_matrix_entries_over_the_threshold() -> None:
    # The tracker's sparse matching must see exactly what the full IoU matrix shows: same pairs, same order
    # (row-major, as the greedy match's stable sort relies on), same values. Crowd-like: many small boxes, some
    # touching, some identical, some degenerate.
    rng = np.random.default_rng(7)
    for n, m in ((0, 5), (5, 0), (300, 600), (40, 40)):
        corners = rng.uniform(0, 1280, (n + m, 2))
        sizes = rng.choice([0.0, 8.0, 20.0, 60.0], (n + m, 2))
        boxes = np.concatenate([corners, corners + sizes], axis=1)
        if n and m:
            boxes[n] = boxes[0]  # an exact duplicate
        a, b = boxes[:n], boxes[n:]
        for threshold in (0.2, 1e-6, 1.0):
            ti, di, ious = overlapping_pairs(a, b, threshold)
            full = iou_matrix(a, b)
            want_t, want_d = np.nonzero(full >= threshold)
            assert np.array_equal(ti, want_t) and np.array_equal(di, want_d), (n, m, threshold)
            assert np.array_equal(ious, full[want_t, want_d]), (n, m, threshold)
    with pytest.raises(ValueError):
        overlapping_pairs(np.zeros((1, 4)), np.zeros((1, 4)), 0.0)


def test_offset_tracker_commits_only_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    for off in (5, 6, 7):
        tracker.add("t", 0, off)
    assert tracker.finish("t", 0, 6) is None
    assert tracker.finish("t", 0, 5) == 7
    assert tracker.finish("t", 0, 7) == 8
    assert tracker.inflight() == 0
    tracker.add("t", 1, 1)
    tracker.forget("t", 1)
    assert tracker.finish("t", 1, 1) is None


def test_config_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMASK_WORKER_BATCH_MAX", "lots")
    with pytest.raises(ConfigError, match="IMASK_WORKER_BATCH_MAX"):
        load_settings(WorkerSettings)
    monkeypatch.delenv("IMASK_WORKER_BATCH_MAX")
    monkeypatch.setenv("IMASK_WORKER_BATCH_MAXX", "2")
    with pytest.raises(ConfigError, match=r"unknown setting.*IMASK_WORKER_BATCH_MAXX \(did you mean "
                       r"IMASK_WORKER_BATCH_MAX\?\)"):
        check_environment()
    monkeypatch.delenv("IMASK_WORKER_BATCH_MAXX")
    monkeypatch.setenv("IMASK_INGEST_SOURCES", "cam=rtsp://h/")  # a list setting given as a bare string
    with pytest.raises(ConfigError, match="IMASK_INGEST_SOURCES must be JSON"):
        load_settings(IngestSettings)
    monkeypatch.delenv("IMASK_INGEST_SOURCES")
    monkeypatch.setenv("IMASK_BOOTSTRAP_SERVERS", "nohostport")
    with pytest.raises(ConfigError, match="host:port"):
        load_settings(WorkerSettings)
    monkeypatch.delenv("IMASK_BOOTSTRAP_SERVERS")
    monkeypatch.setenv("IMASK_KAFKA_EXTRA", "{not json")  # used to end in a traceback
    with pytest.raises(ConfigError, match="IMASK_KAFKA_EXTRA must be JSON"):
        load_settings(WorkerSettings)


def test_generated_protos_are_up_to_date(tmp_path: Path) -> None:
    from imask.devstack.protogen import PY_ROOT, generate

    for fresh in generate(tmp_path):
        committed = PY_ROOT / fresh.relative_to(tmp_path)
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make protos`"


def test_cli_help_explains_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "--help"], capture_output=True, text=True, check=True)
    for command in ("worker", "ingest", "recorder", "mask", "stack", "run"):
        assert command in out.stdout
    for command in ("worker", "ingest", "recorder", "mask"):
        sub = subprocess.run([sys.executable, "-m", "imask.cli.main", command, "--help"], capture_output=True,
                             text=True, check=True)
        assert "IMASK_" in sub.stdout


def test_cli_bad_setting_exits_2_with_message() -> None:
    env = {**os.environ, "IMASK_WORKER_JPEG_QUALITY": "200"}
    out = subprocess.run([sys.executable, "-m", "imask.cli.main", "worker"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "IMASK_WORKER_JPEG_QUALITY" in out.stderr


def test_no_two_settings_share_a_variable_with_different_meanings() -> None:
    """The bug class the per-service namespaces fix: one IMASK_ name read by two services with different defaults
    or meanings (IMASK_JPEG_QUALITY was 85 for the worker's masked output, 90 for the ingest's published frames).
    Any two fields that read the same variable must be the same setting: same default, type and description."""
    seen: dict[str, tuple[str, object]] = {}
    for cls in (*SETTINGS_CLASSES, *SHARED_GROUPS):
        names = [env_name(cls, field) for field in cls.model_fields]
        assert len(names) == len(set(names)), f"{cls.__name__}: two fields read one variable"
        for field, info in cls.model_fields.items():
            meaning = (repr(info.default), info.default_factory is None, info.annotation, info.description,
                       repr(info.metadata))
            first = seen.setdefault(env_name(cls, field), (cls.__name__, meaning))
            assert first[1] == meaning, (f"{env_name(cls, field)} means one thing in {first[0]} and another in "
                                         f"{cls.__name__}: give one of them its service's prefix")
    # The fields the old flat namespace got wrong now read different variables.
    assert env_name(WorkerSettings, "jpeg_quality") != env_name(IngestSettings, "jpeg_quality")
    assert env_name(WorkerSettings, "max_inflight") != env_name(IngestSettings, "max_inflight")
    assert env_name(WorkerSettings, "group_id") != env_name(RecorderSettings, "group_id")
    assert len({env_name(cls, "ops_port") for cls in SETTINGS_CLASSES}) == len(SETTINGS_CLASSES)


def test_settings_names_follow_the_scheme() -> None:
    """Shared settings are IMASK_<FIELD> wherever they appear; a service's own are IMASK_<SERVICE>_<FIELD>."""
    shared = {field for group in SHARED_GROUPS for field in group.model_fields}
    for cls in SETTINGS_CLASSES:
        prefix = "IMASK_" + cls.service.upper().replace("-", "_") + "_"
        for field in cls.model_fields:
            name = env_name(cls, field)
            if field in shared:
                assert name == f"IMASK_{field.upper()}", name
            else:
                assert name.startswith(prefix), name
    assert env_name(WorkerSettings, "instance_id") == "IMASK_WORKER_INSTANCE_ID"
    assert env_name(IngestSettings, "ops_port") == "IMASK_INGEST_OPS_PORT"
    assert env_name(WorkerSettings, "bootstrap_servers") == "IMASK_BOOTSTRAP_SERVERS"


def test_one_environment_configures_each_service_separately(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMASK_WORKER_JPEG_QUALITY", "70")
    monkeypatch.setenv("IMASK_INGEST_JPEG_QUALITY", "95")
    monkeypatch.setenv("IMASK_WORKER_OPS_PORT", "9401")
    monkeypatch.setenv("IMASK_INGEST_OPS_PORT", "9402")
    monkeypatch.setenv("IMASK_PARTITIONS", "6")  # shared: both read it
    worker, ingest = load_settings(WorkerSettings), load_settings(IngestSettings)  # each accepts the other's
    assert (worker.jpeg_quality, worker.ops_port, worker.partitions) == (70, 9401, 6)
    assert (ingest.jpeg_quality, ingest.ops_port, ingest.partitions) == (95, 9402, 6)
    assert load_settings(WorkerSettings, jpeg_quality=60).jpeg_quality == 60  # flags still override
    monkeypatch.delenv("IMASK_WORKER_JPEG_QUALITY")
    assert load_settings(WorkerSettings).jpeg_quality == 85  # the worker's own default, not the ingest's value


def test_unknown_and_old_flat_names_are_refused_with_the_new_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMASK_WORKER_FOO", "1")
    with pytest.raises(ConfigError, match=r"unknown setting.*IMASK_WORKER_FOO"):
        load_settings(WorkerSettings)
    monkeypatch.delenv("IMASK_WORKER_FOO")
    monkeypatch.setenv("IMASK_JPEG_QUALITY", "80")  # a deployment from before the per-service names
    with pytest.raises(ConfigError) as err:
        load_settings(IngestSettings)
    assert "IMASK_JPEG_QUALITY (now per service: IMASK_INGEST_JPEG_QUALITY or IMASK_WORKER_JPEG_QUALITY)" in str(
        err.value)
    monkeypatch.delenv("IMASK_JPEG_QUALITY")
    monkeypatch.setenv("IMASK_ADMIN_TOKEN", "t")
    with pytest.raises(ConfigError, match=r"IMASK_ADMIN_TOKEN \(now per service: IMASK_INGEST_ADMIN_TOKEN\)"):
        check_environment()
    assert "IMASK_JPEG_QUALITY" not in known_env_names() and "IMASK_CLIENT_ADMIN_TOKEN" not in known_env_names()
    check_environment({"IMASK_CLIENT_ADMIN_TOKEN": "t", "IMASK_STACK_KAFKA_PORT": "1"})  # tools' own prefixes


def test_settings_read_only_their_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """No prefix-plus-field guessing: a bare or old-style name never sets a field, even when constructed directly."""
    for name in ("JPEG_QUALITY", "jpeg_quality", "IMASK_JPEG_QUALITY", "imask_worker_jpeg_quality"):
        monkeypatch.setenv(name, "11")
    assert WorkerSettings().jpeg_quality == 85


def test_a_shrinking_face_held_for_frames_never_turns_inside_out() -> None:
    """Corner velocities of a box that shrank used to move its corners past each other while held."""
    tracker = FaceTracker(max_missed=10)
    for step in range(4):  # the box shrinks by 8 px a side each frame
        tracker.update(np.array([[100 + 8 * step, 100 + 8 * step, 200 - 8 * step, 200 - 8 * step]], np.float32),
                       np.array([0.9], np.float32))
    widths = []
    for _ in range(10):
        held = tracker.update(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
        assert len(held) == 1
        x1, y1, x2, y2 = held[0].box
        widths.append(min(x2 - x1, y2 - y1))
    assert min(widths) >= 52  # the last detection's size: a held face is never masked smaller
    assert widths == sorted(widths)  # and grows with its uncertainty
    coasted = tracker.coast()
    assert all(t.box[2] > t.box[0] and t.box[3] > t.box[1] for t in coasted)


def test_a_ready_service_has_frozen_its_start_up_heap() -> None:
    # In a child: freezing is process-wide. Full collections then skip what start-up allocated (no ~20 ms pauses
    # mid-frame); the process is ready only after.
    code = """
import gc
from imask.ops.runtime import ServiceRuntime
from imask.ops.settings import RecorderSettings
runtime = ServiceRuntime("probe", RecorderSettings(ops_port=0)).start()
before = (gc.get_freeze_count(), runtime.is_ready())
runtime.mark_ready()
print(before, (gc.get_freeze_count() > 1000, runtime.is_ready()))
runtime.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[0] == "(0, False) (True, True)", out.stdout + out.stderr


def test_shadow_disagreement_matches_greedily_by_iou() -> None:
    from imask.pipeline.routed import disagreement

    served = [(0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 30.0, 30.0), (100.0, 100.0, 110.0, 110.0)]
    shadow = [(21.0, 21.0, 31.0, 31.0), (1.0, 1.0, 11.0, 11.0), (0.0, 0.0, 10.0, 9.0), (200.0, 0.0, 210.0, 10.0)]
    # served 0 takes the closer of two candidates (IoU 0.9 over 0.68), served 1 its neighbour, served 2 nothing
    assert disagreement(served, shadow) == (2, 1, 2)
    assert disagreement([], shadow) == (0, 0, 4)
    assert disagreement(served, []) == (0, 3, 0)
    # one shadow box is taken once: the second served box over it stays unmatched
    assert disagreement([(0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 10.0, 10.0)], [(0.0, 0.0, 10.0, 10.0)]) == (1, 1, 0)


def test_one_name_per_idea_in_settings() -> None:
    """Every service names itself with instance_id; registry and Redis are shared settings with one default; every
    port picks a free one at 0, and an optional listener is off at -1; a renamed variable is refused with its new
    name."""
    from imask.ops.settings import (
        SETTINGS_CLASSES,
        ConfigError,
        IngestSettings,
        MaskApiSettings,
        RecorderSettings,
        RouterSettings,
        check_environment,
    )

    ids = {cls.service: cls().instance_id for cls in SETTINGS_CLASSES}
    assert all(value.startswith(f"{service}-") for service, value in ids.items()), ids
    assert {env_name(cls, "instance_id") for cls in SETTINGS_CLASSES} == {
        "IMASK_WORKER_INSTANCE_ID", "IMASK_INGEST_INSTANCE_ID", "IMASK_RECORDER_INSTANCE_ID",
        "IMASK_MASK_API_INSTANCE_ID", "IMASK_ROUTER_INSTANCE_ID"}
    for field in ("registry_uri", "redis_url"):
        owners = [cls for cls in SETTINGS_CLASSES if field in cls.model_fields]
        assert {env_name(cls, field) for cls in owners} == {f"IMASK_{field.upper()}"}
        assert len({cls.model_fields[field].default for cls in owners}) == 1
    assert {WorkerSettings, MaskApiSettings, RouterSettings} <= {
        cls for cls in SETTINGS_CLASSES if "redis_url" in cls.model_fields}
    for cls in SETTINGS_CLASSES:
        for name, field in cls.model_fields.items():
            if name.endswith("port"):
                assert "0: pick a free one" in (field.description or ""), (cls.__name__, name)
                bounds = {getattr(m, "ge", None) for m in field.metadata} - {None}
                assert bounds in ({0}, {-1}), (cls.__name__, name, bounds)
                if bounds == {-1}:
                    assert "-1: off" in (field.description or ""), (cls.__name__, name)
    assert IngestSettings().publish_port == -1 and RecorderSettings().output_dir == Path("recordings")
    for old, new in (("IMASK_WORKER_ID", "IMASK_WORKER_INSTANCE_ID"), ("IMASK_WORKER_REDIS_URL", "IMASK_REDIS_URL"),
                     ("IMASK_MLFLOW_TRACKING_URI", "IMASK_REGISTRY_URI")):
        with pytest.raises(ConfigError, match=f"{old} \\(renamed: {new}"):
            check_environment({old: "x"})
