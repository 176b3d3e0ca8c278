"""The router acting on the drift service's variant_regression flags, on the stack's Redis: the 8-camera canary of
the issue (7 cameras on the challenger, 1 in control: the router's between-camera statistics cannot judge it) is
rolled back as soon as one camera's regression flag is written."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from imask.devstack.settings import StackSettings
from imask.drift import synthetic as syn
from imask.drift.monitor import DriftMonitor, MonitorConfig
from imask.drift.rules import REGRESSION
from imask.drift.store import DriftStore, RegressionFlag
from imask.routing.assign import ArmSpec
from imask.routing.router import Router
from imask.routing.store import ExperimentSpec, ExperimentStore, Guardrail

pytestmark = [pytest.mark.redis]


def test_canary_on_a_small_fleet_rolled_back_by_a_camera_regression(stack_up: None) -> None:
    url = StackSettings().redis_url
    fleet = f"drift-test-{uuid.uuid4().hex[:8]}"
    drift = DriftStore(url, f"imask:drift-test:{fleet}")
    store = ExperimentStore(url, fleet, delay_s=0.0)

    def regressions(variant: str, since_ms: int) -> list[str]:
        return [f"{f.camera_id}: {f.detail}" for f in drift.regressions(variant, since_ms)]

    router = Router(store, regressions=regressions)
    try:
        spec = ExperimentSpec(f"canary-{fleet}", (ArmSpec("control", "default", 0.5),
                                                  ArmSpec("challenger", "blazeface", 0.5)),
                              guardrails=(Guardrail("faces_per_frame", 0.1),), interval_s=0.0)
        config = router.create(spec)
        cameras = [f"cam{i}" for i in range(8)]
        on_challenger = [c for c in cameras if config.arm_for(c).name == "challenger"]
        router.tick(now=1.0)
        assert store.latest(spec.name).state == "running"  # nothing flagged, nothing judged yet
        # The drift monitor on one challenger camera's windows across its switch: the weaker detector finds half
        # the faces; its regression is flagged the way the service does it.
        monitor = DriftMonitor(MonitorConfig())
        rng = np.random.default_rng(0)
        camera = on_challenger[0] if on_challenger else cameras[0]
        windows_after = 0
        for i, w in enumerate(syn.windows(camera, syn.Scene(faces=3.0), 30, seed=1,
                                          start_ms=store.spec(spec.name).created_us // 1000 - 200_000)):
            if i >= 20:
                w = dataclasses.replace(syn.weaker_detector(0.4)(w, rng), variant="blazeface")
                windows_after += 1
            opened = [t for t in monitor.observe(w).transitions if t.kind == REGRESSION and t.action == "open"]
            if opened:
                drift.flag_regression(RegressionFlag(camera, "blazeface", "default",
                                                     store.spec(spec.name).created_us // 1000 + 1, opened[0].detail))
                break
        assert windows_after <= 2
        router.tick(now=2.0)
        latest = store.latest(spec.name)
        assert latest.state == "rolled_back" and latest.arms[0].weight == 1.0
        assert "variant_regression" in latest.reason and camera in latest.reason
        assert store.events(spec.name)[-1]["actor"] == "router"
    finally:
        for key in list(store.client.scan_iter(match=f"imask:exp:{fleet}:*")) + \
                list(drift.client.scan_iter(match=f"{drift.prefix}:*")):
            store.client.delete(key)
