"""A/B routing: sticky assignment (vectors, across processes, the weights' split), monotonic ramps, configs by
ingest time, experiments in the real Redis, and a blue-green switch through real workers."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from imask.routing.assign import BUCKETS, ArmSpec, ConfigHistory, ExperimentConfig, bucket
from imask.routing.store import ExperimentError, ExperimentSpec, ExperimentStore

# Pinned so any other implementation (another language, a later refactor) routes cameras the same way.
VECTORS = [("exp-1", "cam-0", 4371), ("exp-1", "lobby", 2705), ("salt", "cam-42", 7236), ("", "", 4368)]


def config(weights: tuple[float, ...], version: int = 1, effective_us: int = 0, salt: str = "s") -> ExperimentConfig:
    arms = tuple(ArmSpec(f"arm{i}", "default", w) for i, w in enumerate(weights))
    return ExperimentConfig("exp", salt, arms, version, effective_us)


def test_bucket_vectors_and_definition() -> None:
    for salt, camera, expected in VECTORS:
        assert bucket(salt, camera) == expected
        digest = hashlib.sha256(f"{salt}:{camera}".encode()).digest()
        assert int.from_bytes(digest[:8], "big") % BUCKETS == expected


def test_assignment_is_the_same_in_another_process() -> None:
    cameras = [f"cam-{i}" for i in range(200)]
    here = {c: config((0.5, 0.3, 0.2)).arm_for(c).name for c in cameras}
    code = ("import json,sys; from imask.routing.assign import ArmSpec, ExperimentConfig; "
            "c = ExperimentConfig('exp', 's', tuple(ArmSpec(f'arm{i}', 'default', w) for i, w in "
            "enumerate((0.5, 0.3, 0.2))), 1, 0); "
            "print(json.dumps({x: c.arm_for(x).name for x in json.load(sys.stdin)}))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(cameras), capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert json.loads(out.stdout) == here


@pytest.mark.parametrize("weight", [0.05, 0.1, 0.5, 0.9])
def test_split_of_1000_cameras_matches_the_weights(weight: float) -> None:
    n = 1000
    challenger = sum(config((1 - weight, weight)).arm_for(f"synthetic-{i}").name == "arm1" for i in range(n))
    bound = 3 * math.sqrt(n * weight * (1 - weight))  # 99.7% of binomial outcomes
    assert abs(challenger - n * weight) <= bound, (challenger, n * weight, bound)


def test_ramps_only_move_cameras_to_the_challenger() -> None:
    cameras = [f"c{i}" for i in range(2000)]
    previous: set[str] = set()
    for weight in (0.0, 0.05, 0.1, 0.25, 0.5, 1.0):
        now = {c for c in cameras if config((1 - weight, weight)).arm_for(c).name == "arm1"}
        assert previous <= now
        previous = now
    assert previous == set(cameras)


def test_frames_take_the_config_in_effect_at_their_ingest_time() -> None:
    history = ConfigHistory()
    history.add(config((1.0, 0.0), version=1, effective_us=1_000))
    history.add(config((0.0, 1.0), version=2, effective_us=5_000))
    assert history.at(999) is None                      # before the experiment: the worker's own variant
    assert history.at(1_000).version == 1               # type: ignore[union-attr]
    assert history.at(4_999).arm_for("x").name == "arm0"  # type: ignore[union-attr]
    assert history.at(5_000).arm_for("x").name == "arm1"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="sum to 1"):
        config((0.5, 0.6))


@pytest.fixture
def store(stack_up: None) -> ExperimentStore:
    from imask.devstack import stack

    return ExperimentStore(stack.StackSettings().redis_url, fleet=f"test-{uuid.uuid4().hex[:8]}", delay_s=0.5)


def spec(name: str = "canary-1", challenger: str = "fast", weight: float = 0.1) -> ExperimentSpec:
    return ExperimentSpec(name, (ArmSpec("control", "default", 1 - weight), ArmSpec("challenger", challenger, weight)))


@pytest.mark.redis
def test_store_versions_changes_and_keeps_the_audit(store: ExperimentStore) -> None:
    first = store.create(spec())
    assert (first.version, first.salt, store.active()) == (1, "canary-1", "canary-1")
    with pytest.raises(ExperimentError, match="still routes"):
        store.create(spec("another"))
    second = store.set_weights("canary-1", {"control": 0.5, "challenger": 0.5}, reason="ramp to 50%")
    assert second.version == 2 and second.effective_us > first.effective_us
    with pytest.raises(ExperimentError, match="sum to 1"):
        store.set_weights("canary-1", {"control": 0.5, "challenger": 0.6})
    store.set_weights("canary-1", {"control": 1.0, "challenger": 0.0}, state="rolled_back", reason="guardrail")
    with pytest.raises(ExperimentError, match="rolled_back"):
        store.set_weights("canary-1", {"control": 0.0, "challenger": 1.0})
    assert [e["reason"] for e in store.events("canary-1")] == ["created", "ramp to 50%", "guardrail"]
    # A router restart is a new reader of the same keys: the same history, the same arms.
    again = ExperimentStore(store.url, fleet=store.fleet)
    cameras = [f"cam-{i}" for i in range(50)]
    assert [again.latest("canary-1").arm_for(c) for c in cameras] == [
        store.latest("canary-1").arm_for(c) for c in cameras]
    store.create(spec("another"))  # the fleet is free again once the first ended


@pytest.mark.kafka
@pytest.mark.redis
def test_blue_green_switch_mid_stream_is_atomic_per_camera(store: ExperimentStore, kafka_settings: object,
                                                            tmp_path: Path) -> None:
    """4 cameras, 2 workers; the switch cuts each camera's stream at one frame: control before, challenger after,
    every frame masked once, in order, none missing."""
    from streams import assert_in_order, collect, moving_face_frames, publish, start_worker

    group = f"g-{uuid.uuid4().hex[:6]}"
    store.fleet = group
    store.create(ExperimentSpec("bg", (ArmSpec("blue", "default", 1.0), ArmSpec("green", "fast", 0.0)),
                                strategy="blue_green"))
    env = {"IMASK_WORKER_REDIS_URL": store.url}
    workers = [start_worker(tmp_path, f"w{i}", group, **env) for i in range(2)]
    cameras = {f"cam-{i}": moving_face_frames(60) for i in range(4)}
    switch = threading.Timer(1.5, lambda: store.set_weights("bg", {"blue": 0.0, "green": 1.0}, reason="switch"))
    switch.start()
    publish(kafka_settings, cameras, pace_s=0.06)  # type: ignore[arg-type]
    got = collect(kafka_settings, set(cameras), timeout=120)  # type: ignore[arg-type]
    switch.join()
    summary = got.ledger.summary()
    assert summary["unaccounted"] == 0 and summary["frames_masked"] == 240, summary
    assert summary["duplicates"] == 0, summary
    assert_in_order(got)
    for camera in cameras:
        arms = [got.masked[(camera, seq)].arm for seq in range(60)]
        assert set(arms) == {"blue", "green"}, (camera, arms)  # the switch happened mid-stream
        cut = arms.index("green")
        assert arms == ["blue"] * cut + ["green"] * (60 - cut), (camera, arms)  # one cut, no going back
        variants = {got.masked[(camera, seq)].variant for seq in range(cut, 60)}
        assert variants == {"fast"}
        assert {got.meta[(camera, seq)].arm for seq in range(60)} == {"blue", "green"}
    for worker in workers:
        assert worker.metric("imask_frames_unmasked_total") == 0
