"""Settings (imask.ops.settings): one IMASK_ name per setting and service, errors that name the variable,
renamed and unknown variables refused with the right name."""

from __future__ import annotations

from pathlib import Path

import pytest

from imask.ops.settings import (
    SETTINGS_CLASSES,
    SHARED_GROUPS,
    ConfigError,
    IngestSettings,
    RecorderSettings,
    WorkerSettings,
    check_environment,
    env_name,
    known_env_names,
    load_settings,
)


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
        "IMASK_MASK_API_INSTANCE_ID", "IMASK_ROUTER_INSTANCE_ID", "IMASK_FEATURES_STREAM_INSTANCE_ID",
        "IMASK_ALERTING_INSTANCE_ID", "IMASK_DRIFT_INSTANCE_ID", "IMASK_FEATURES_INSTANCE_ID",
        "IMASK_CONSOLE_INSTANCE_ID"}
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


def test_a_camera_rotation_is_a_quarter_turn_or_unset() -> None:
    from imask.cameras.config import CameraConfig

    assert CameraConfig(camera_id="c", url="rtsp://cam.example/1").rotation == -1  # the workers estimate it
    assert CameraConfig(camera_id="c", url="rtsp://cam.example/1", rotation=270).rotation == 270
    with pytest.raises(ValueError, match="90, 180 or 270"):
        CameraConfig(camera_id="c", url="rtsp://cam.example/1", rotation=45)
