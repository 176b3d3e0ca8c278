"""A/B assignment (imask.routing.assign): sticky buckets (vectors, across processes, the weights' split),
monotonic ramps, configs by ingest time."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest

from imask.routing.assign import BUCKETS, ArmSpec, ConfigHistory, ExperimentConfig, bucket

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
