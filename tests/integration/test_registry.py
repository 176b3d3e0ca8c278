"""The model registry against a real MLflow server (the test session's own, not the local stack's): register, load,
evaluate, gate, roll back, a worker running a registered version, and a BlazeFace variant stored with its own model
file."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from imask.engine import FrameInput, MaskingEngine
from imask.engine.detectors.base import sha256_of
from imask.engine.detectors.blazeface import (
    FULL_RANGE,
)
from imask.engine.detectors.centerface.model import CENTERFACE_SHA256
from imask.engine.variants import default_variant, get_variant
from imask.evaluation.run import run_evaluation
from imask.loadtest.samples import astronaut
from imask.ops.settings import KafkaSettings, WorkerSettings
from imask.registry.refs import ModelRef, RegistryError
from imask.registry.store import Registry
from imask.types import Image

ASTRONAUT_FACE = (178, 60, 90, 115)  # x, y, w, h of the face in skimage's 512x512 astronaut


@pytest.fixture(scope="session")
def tracking_uri(mlflow_uri: str) -> str:
    return mlflow_uri


@pytest.fixture
def registry(tracking_uri: str, tmp_path: Path) -> Registry:
    return Registry(tracking_uri, cache_dir=tmp_path / "cache")


@pytest.fixture
def name() -> str:
    return f"test-masker-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def small_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight labelled 640x360 pictures, the astronaut at face sizes from 58 down to 23 px."""
    root = tmp_path_factory.mktemp("small-faces")
    face = astronaut()
    labels = {}
    for i, scale in enumerate((0.5, 0.42, 0.36, 0.3, 0.27, 0.24, 0.22, 0.2)):
        canvas = np.full((360, 640, 3), 90, np.uint8)
        side = int(512 * scale)
        x0, y0 = 40 + i * 60, 40 + (i % 3) * 40
        canvas[y0:y0 + side, x0:x0 + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        fx, fy, fw, fh = ASTRONAUT_FACE
        labels[f"{i}.png"] = {"faces": [{"box": [x0 + fx * scale, y0 + fy * scale, fw * scale, fh * scale]}]}
        cv2.imwrite(str(root / f"{i}.png"), canvas)
    (root / "gt.json").write_text(json.dumps(labels))
    return root


def _evaluate(registry: Registry, ref: ModelRef, dataset: Path, out: Path) -> None:
    report, _ = run_evaluation(registry.load(ref), [str(dataset)], out, curve=False, plot=False)
    registry.log_evaluation(ref, report, out)


@pytest.mark.mlflow
def test_registry_tests_leave_the_users_mlflow_alone(tracking_uri: str) -> None:
    """Models and runs of the tests go to the session's own server, and so does anything (a spawned worker, the
    `imask model` CLI) that falls back to the default one: `make run`'s registry lists none of them."""
    from imask.devstack.settings import StackSettings

    assert tracking_uri != StackSettings().mlflow_uri
    assert os.environ["IMASK_REGISTRY_URI"] == os.environ["MLFLOW_TRACKING_URI"] == tracking_uri
    assert WorkerSettings().registry_uri == tracking_uri


@pytest.mark.mlflow
def test_register_load_and_refuse_a_tampered_file(registry: Registry, name: str) -> None:
    info = registry.register(default_variant(), name, "default CenterFace")
    assert (info.version, info.sha256, info.detector) == ("1", CENTERFACE_SHA256, "centerface")
    variant = registry.load(ModelRef(name, version="1"))
    assert variant.model_version == f"{name}/1"
    assert sha256_of(Path(variant.model_path).read_bytes()) == CENTERFACE_SHA256
    assert dataclasses.replace(variant, model_path="", registry_version="") == default_variant()
    Path(variant.model_path).write_bytes(b"not the registered model")  # the cached copy altered on disk
    with pytest.raises(RegistryError, match="refusing to run it"):
        registry.load(ModelRef(name, version="1"))
    with pytest.raises(RegistryError, match="does not resolve"):
        registry.load(ModelRef(name, alias="champion"))


@pytest.mark.mlflow
def test_worse_challenger_cannot_take_champion_a_better_one_can(registry: Registry, name: str, small_faces: Path,
                                                               tmp_path: Path) -> None:
    base = default_variant()
    registry.register(base, name)                                   # 1: today's default
    registry.register(base.with_overrides(threshold=0.9), name)     # 2: finds far fewer faces
    registry.register(base.with_overrides(threshold=0.08), name)    # 3: a little more sensitive
    for version in ("1", "2", "3"):
        _evaluate(registry, ModelRef(name, version=version), small_faces, tmp_path / version)
    figures = {v: next(iter(registry.evaluations(ModelRef(name, version=v)).values())) for v in ("1", "2", "3")}
    assert figures["2"]["recall"] < figures["1"]["recall"] - 0.2, figures
    assert figures["3"]["recall"] >= figures["1"]["recall"], figures

    assert registry.promote(ModelRef(name, version="1"), "champion").allowed  # first holder, evaluated
    refused = registry.promote(ModelRef(name, version="2"), "champion")
    assert not refused.allowed and any("recall" in r for r in refused.reasons)
    assert registry.aliases(name) == {"champion": "1"}
    with pytest.raises(RegistryError, match="reason"):
        registry.promote(ModelRef(name, version="2"), "champion", force=True)
    forced = registry.promote(ModelRef(name, version="2"), "champion", force=True, reason="incident drill")
    assert not forced.allowed and registry.aliases(name) == {"champion": "2"}
    assert forced.reasons[-1] == "FORCED: incident drill"
    assert registry.rollback(name, "champion", "drill over").version == "1"
    assert registry.aliases(name) == {"champion": "1"}
    assert registry.promote(ModelRef(name, version="3"), "champion").allowed
    assert registry.aliases(name) == {"champion": "3"}
    # The audit holds every move with its reason, the refused one too.
    audit = registry.client.search_runs(
        [registry.client.get_experiment_by_name("imask-promotions").experiment_id],
        filter_string=f"tags.`imask.model_name` = '{name}'")
    assert sorted(r.data.tags["imask.moved"] for r in audit) == ["False", "True", "True", "True", "True"]
    assert any(r.data.tags["imask.reason"] == "incident drill" for r in audit)


@pytest.mark.mlflow
@pytest.mark.kafka
def test_worker_runs_the_champion_and_reports_its_version(registry: Registry, name: str, tracking_uri: str,
                                                          kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    from streams import collect, moving_face_frames, publish, start_worker

    registry.register(default_variant(), name)
    registry.client.set_registered_model_alias(name, "champion", "1")
    worker = start_worker(tmp_path, "registered", f"g-{uuid.uuid4().hex[:6]}", IMASK_MODEL=f"{name}@champion",
                          IMASK_REGISTRY_URI=tracking_uri, IMASK_MODEL_CACHE_DIR=str(tmp_path / "cache"))
    publish(kafka_settings, {"cam-r": moving_face_frames(6)})
    got = collect(kafka_settings, {"cam-r"})
    frames = [m for m in got.masked.values() if not m.frame.end_of_stream]
    assert len(frames) == 6 and {m.model_version for m in frames} == {f"{name}/1"}
    assert all(m.faces_masked >= 1 for m in frames)
    assert {m.model_version for m in got.meta.values() if not m.end_of_stream} == {f"{name}/1"}
    assert worker.metric("imask_model_info", f'model_version="{name}/1"') == 1
    assert json.loads(worker.get("/readyz")[1])["variant"] == "default"


MISSING = [name for name in ("ai_edge_litert", "mediapipe") if importlib.util.find_spec(name) is None]
needs_model = pytest.mark.skipif(
    bool(MISSING), reason=f"BlazeFace needs {MISSING}: the 'detectors' extra (LiteRT) and mediapipe==0.10.14 "
    "installed with --no-deps (its model files); `make venv` installs both")


@needs_model
@pytest.mark.mlflow
def test_registered_blazeface_version_loads_its_own_file(mlflow_uri: str, tmp_path: Path,
                                                         astronaut_image: Image) -> None:
    """The registry stores a BlazeFace variant with its .tflite and a worker runs that copy (sha256 checked)."""
    import uuid

    from imask.registry.refs import ModelRef
    from imask.registry.store import Registry

    registry = Registry(mlflow_uri, cache_dir=tmp_path / "cache")
    name = f"test-blazeface-{uuid.uuid4().hex[:8]}"
    info = registry.register(get_variant("blazeface"), name, "BlazeFace full range")
    assert (info.sha256, info.detector) == (FULL_RANGE.sha256, "blazeface")
    variant = registry.load(ModelRef(name, version=info.version))
    assert Path(variant.model_path).suffix == ".tflite" and variant.detector == "blazeface"
    engine = MaskingEngine.load(variant, provider="cpu")
    result = engine.process([FrameInput("astro", 0, astronaut_image)])[0]
    engine.close()
    assert not result.fail_closed and len(result.faces) == 1
