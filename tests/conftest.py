"""Shared fixtures. Integration tests use the real local Kafka broker and Redis (started here if needed, exactly
as `make up` does); each test gets its own topics and consumer groups so tests never see each other's frames.
MLflow is the exception: the registry tests get a server of their own, so they leave no model or run in the user's
(the one `make run` uses).

Layout and markers agree, checked at collection: tests/unit/<package>/ holds the tests that need no server and
carry no server marker (`make unit` runs that folder); tests/integration/ holds those that do, each marked kafka,
redis, mlflow or alertmanager (an Alertmanager of the test's own); a test that uses a server fixture carries its
marker; a test that reads ../shared/data (the `data_dir` fixture) is marked shared_data automatically."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imask.devstack.procs import free_port
from imask.devstack.settings import StackSettings
from imask.engine import EngineResult, FrameInput, MaskingEngine, default_variant
from imask.loadtest.samples import astronaut, shared_data
from imask.ops.settings import KafkaSettings
from imask.types import Image

# The session's own MLflow server: its port is chosen at configure time (so the environment can name it), its
# folder and the server itself come with the first test that asks for it (the `mlflow_uri` fixture).
_TEST_MLFLOW: StackSettings | None = None

# Fixtures that need a server, and the markers one of which a test using them must carry.
_SERVER_FIXTURES = {"stack_up": ("kafka", "redis", "mlflow"), "kafka_settings": ("kafka",), "mlflow_uri": ("mlflow",),
                    "feast_repo": ("redis",)}
SERVER_MARKERS = {"kafka", "redis", "mlflow", "alertmanager"}
TESTS = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    global _TEST_MLFLOW
    _TEST_MLFLOW = StackSettings(mlflow_port=free_port(), mlflow=True)  # state_dir: the fixture's temp folder
    # For this process and every service it spawns: whatever falls back to the default tracking server reaches the
    # session's own, never the user's.
    os.environ["IMASK_REGISTRY_URI"] = os.environ["MLFLOW_TRACKING_URI"] = _TEST_MLFLOW.mlflow_uri


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every collected test is marked and checked
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "data_dir" in fixtures:
            item.add_marker(pytest.mark.shared_data)
        marks = {mark.name for mark in item.iter_markers()}
        for fixture, needed in _SERVER_FIXTURES.items():
            if fixture in fixtures and not marks & set(needed):
                wrong.append(f"{item.nodeid} uses {fixture} but is not marked {' or '.join(needed)}")
        folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else None
        servers = sorted(marks & SERVER_MARKERS)
        if folder == "integration" and not servers:
            wrong.append(f"{item.nodeid} is an integration test without a server marker (kafka, redis, mlflow or "
                         "alertmanager): mark it, or move it to tests/unit/<package>/ if it needs no server")
        elif folder == "unit" and servers:
            wrong.append(f"{item.nodeid} is a unit test marked {', '.join(servers)}: move it to tests/integration/")
        elif folder not in ("unit", "integration"):
            wrong.append(f"{item.nodeid}: tests live in tests/unit/<package>/ (no server) or tests/integration/")
    if wrong:
        raise pytest.UsageError("test markers and folders must agree (see tests/conftest.py):\n" + "\n".join(wrong))


@pytest.fixture(autouse=True)
def _stop_started_services() -> Iterator[None]:
    yield
    from streams import stop_leftovers

    stop_leftovers()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = shared_data()
    if root is None:
        pytest.skip("../shared/data is absent (a fresh clone): this test needs the shared face media")
    return root


@pytest.fixture(scope="session")
def engine() -> Iterator[MaskingEngine]:
    eng = MaskingEngine.load(default_variant(), provider="cpu")
    eng.warm_up()
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def astronaut_image() -> Image:
    return astronaut()


@pytest.fixture(scope="session")
def stack_up() -> None:
    from imask.devstack import stack

    stack.up()  # idempotent: a no-op when `make up` already ran


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tracking URI of the session's own MLflow server (its store in the session's temporary folder), started on
    first use and stopped at the end of the session."""
    from imask.devstack import mlflow, stack

    assert _TEST_MLFLOW is not None
    settings = _TEST_MLFLOW.model_copy(update={"state_dir": tmp_path_factory.mktemp("mlflow")})
    stack.up(settings, servers=[mlflow.SERVER])
    yield settings.mlflow_uri
    stack.down(settings, servers=[mlflow.SERVER])


@pytest.fixture(scope="session")
def feast_repo(stack_up: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's Feast repository (imask.features.repo.FeastSettings): a project of its own on the stack's Redis
    (Redis keys carry the project name, so the user's `imask` project is never touched), registry and parquet in the
    session's temporary folder; applied once, torn down (`feast teardown`) at the end of the session."""
    from imask.devstack import stack
    from imask.features import repo

    settings = repo.FeastSettings(project=f"imask_test_{uuid.uuid4().hex[:8]}",
                                  data_dir=tmp_path_factory.mktemp("feast"), redis_url=stack.StackSettings().redis_url)
    repo.apply(settings)
    yield settings
    repo.teardown(settings)


@pytest.fixture
def kafka_settings(stack_up: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[KafkaSettings]:
    """Settings with topics unique to this test, also exported as IMASK_* for service subprocesses."""
    from imask.devstack import stack
    from imask.streaming.kafka import delete_topics, ensure_topics

    suffix = uuid.uuid4().hex[:8]
    env = {
        "IMASK_BOOTSTRAP_SERVERS": stack.StackSettings().bootstrap_servers,
        "IMASK_TOPIC_RAW": f"t{suffix}.raw",
        "IMASK_TOPIC_MASKED": f"t{suffix}.masked",
        "IMASK_TOPIC_META": f"t{suffix}.meta",
        "IMASK_TOPIC_DLQ": f"t{suffix}.dlq",
        "IMASK_TOPIC_ALERTS": f"t{suffix}.alerts",
        "IMASK_PARTITIONS": "4",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = KafkaSettings()
    ensure_topics(settings)
    yield settings
    # The services this test left running stop first: with their topics gone, a producer's drain would wait out
    # its flush timeout for messages it can no longer deliver (10 s of teardown per camera test).
    from streams import stop_leftovers

    stop_leftovers()
    delete_topics(settings, [settings.topic_raw, settings.topic_masked, settings.topic_meta, settings.topic_dlq,
                             settings.topic_alerts])


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "IMASK_LOG_LEVEL": "info"}


def textured(height: int, width: int, seed: int = 0) -> Image:
    """A picture the detector reads (a gradient with grain, no faces) that JPEG cannot squeeze: ~0.5 bytes a pixel at
    quality 85. Uniform random noise is no picture at all: the engine obscures it whole (picture_out_of_range)."""
    base = np.tile(np.linspace(40, 215, width), (height, 1))[:, :, None].repeat(3, axis=2)
    grain = np.random.default_rng(seed).normal(0, 25, base.shape)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def near_uniform(image: Image) -> bool:
    return int(image.max()) - int(image.min()) <= 2


def similarity(a: Image, b: Image) -> float:
    """Normalised correlation of two same-sized grey images; ~1 means the same picture."""
    ga = a.astype(np.float32).mean(axis=2).ravel()
    gb = b.astype(np.float32).mean(axis=2).ravel()
    ga -= ga.mean()
    gb -= gb.mean()
    denom = float(np.linalg.norm(ga) * np.linalg.norm(gb))
    return 0.0 if denom == 0 else float(ga @ gb / denom)


def detail_ratio(masked: Image, original: Image) -> float:
    """How much fine detail (edges: eyes, mouth) survives: Laplacian variance of masked over original."""
    import cv2

    def energy(img: Image) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_32F).var())

    return energy(masked) / max(energy(original), 1e-6)


class BrokenEngine:
    """A real engine whose `process` raises on chosen calls (a bug outside its guards)."""

    def __init__(self, inner: MaskingEngine, fail_calls: set[int]) -> None:
        self.inner = inner
        self.fail_calls = fail_calls
        self.calls = 0
        self.variant = inner.variant
        self.execution_provider = inner.execution_provider

    def process(self, frames: list[FrameInput], *args: Any) -> list[EngineResult]:
        call, self.calls = self.calls, self.calls + 1
        if call in self.fail_calls:
            raise RuntimeError("simulated bug")
        return self.inner.process(frames, *args)

    def forget(self, camera_id: str) -> None:
        self.inner.forget(camera_id)
