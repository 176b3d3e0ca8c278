"""A targeted experiment against the real Redis and the session's Feast project: the router's feature rule
(`face_size_p50 < 24`) reads the cameras' features through the FeatureReader and writes the matching cameras into
the experiment's config; workers' routing (`arm_for`) sends those to the challenger and every other camera, a stale
one included, to control; a camera whose faces grow leaves the experiment at the next check."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from imask.devstack.settings import StackSettings
from imask.features.repo import FeastSettings
from imask.features.schema import VIEW_10S, VIEW_60S, feast_row
from imask.features.store import FeatureReader, open_store, push_rows, utcnow
from imask.features.windows import FACE_SIZE_EDGES, feature_row, new_accumulator
from imask.routing.assign import ArmSpec
from imask.routing.router import Router
from imask.routing.store import ExperimentSpec, ExperimentStore
from imask.routing.targeting import reader_targeter
from imask.v1 import frames_pb2 as pb

pytestmark = [pytest.mark.redis]


def push_sizes(feast: FeastSettings, sizes: dict[str, float], end_ms: int) -> None:
    """Each camera's 10 s and 60 s rows ending at end_ms, its faces all of one size (px)."""
    store = open_store(feast)
    for view in (VIEW_10S, VIEW_60S):
        rows: list[dict[str, Any]] = []
        for camera, size in sizes.items():
            acc = new_accumulator()
            acc["frames"] = 10
            acc["sizes"][max(i for i, edge in enumerate(FACE_SIZE_EDGES[:-1]) if edge <= size)] = 20
            rows.append(feast_row(camera, end_ms - view.size_s * 1000, end_ms, feature_row(acc, view.size_s),
                                  utcnow()))
        push_rows(store, feast.data_dir, view, rows)


def test_feature_rule_targets_fresh_small_face_cameras(feast_repo: FeastSettings) -> None:
    prefix = f"rule-{uuid.uuid4().hex[:6]}"
    small, big, stale = f"{prefix}-small", f"{prefix}-big", f"{prefix}-stale"
    now_end = int(time.time()) // 10 * 10_000
    push_sizes(feast_repo, {small: 12, big: 80}, now_end)
    push_sizes(feast_repo, {stale: 12}, now_end - 600_000)  # small faces, but 10 minutes old
    store = ExperimentStore(StackSettings().redis_url, fleet=f"{prefix}-fleet", delay_s=0.0)
    router = Router(store, targeter=reader_targeter(FeatureReader(feast_repo, "operators", stale_after_s=35)))
    for camera in (small, big, stale):
        router.on_meta(pb.FrameMeta(camera_id=camera))
    spec = ExperimentSpec("hires-small-faces", (ArmSpec("control", "default", 0.0), ArmSpec("hires", "hires", 1.0)),
                          strategy="blue_green", target="face_size_p50 < 24", interval_s=0.0)
    try:
        first = router.create(spec)
        assert first.targets == ()  # nobody until the rule is first judged
        router.tick()
        config = store.latest(spec.name)
        assert config.targets == (small,)
        assert config.arm_for(small).name == "hires"
        assert config.arm_for(big).name == "control" and config.arm_for(stale).name == "control"
        assert "feature rule" in store.events(spec.name)[-1]["reason"]

        router.tick()  # nothing changed: no new config
        assert store.latest(spec.name).version == config.version

        push_sizes(feast_repo, {small: 40}, now_end + 10_000)  # its faces grew
        router.tick()
        later = store.latest(spec.name)
        assert later.targets == () and later.arm_for(small).name == "control"
    finally:
        for key in store.client.scan_iter(match=f"imask:exp:{prefix}-fleet:*"):
            store.client.delete(key)
