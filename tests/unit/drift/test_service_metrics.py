"""The drift service's metrics: each tamper rule writes its own imask_drift_score/breach series (feature = the rule),
so one rule's value does not overwrite another's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from prometheus_client import REGISTRY

from imask.drift import synthetic as syn
from imask.drift.rules import TAMPER_FEATURE, TAMPER_KINDS
from services.drift.service import DriftService


class _Store:
    def save_reference(self, reference: Any) -> None:
        pass

    def version(self) -> int:
        return 1


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    def send(self, topic: str, key: str, value: bytes) -> None:
        self.sent.append((topic, key, value))


def test_the_four_tamper_rules_are_separate_series(tmp_path: Path) -> None:
    settings: Any = SimpleNamespace(feast_dir=tmp_path, topic_alerts="alerts", instance_id="drift-test",
                                    reference_windows=18, breach_windows=3, recover_windows=3, regression_windows=12,
                                    regression_breach_windows=2, regression_tolerance=0.3)
    service = DriftService(settings, store=_Store(), producer=_Outbox())  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    camera = "metrics-cam"
    for i, w in enumerate(syn.windows(camera, syn.Scene(), 24, seed=4)):
        service.apply(service.monitor.observe(syn.cover(w, rng) if i >= 20 else w))

    assert len(set(TAMPER_FEATURE.values())) == len(TAMPER_KINDS)
    scores, breaches = {}, {}
    for feature in TAMPER_FEATURE.values():
        labels = {"camera": camera, "variant": "default", "feature": feature, "test": "tamper_rule"}
        scores[feature] = REGISTRY.get_sample_value("imask_drift_score", labels)
        breaches[feature] = REGISTRY.get_sample_value("imask_drift_breach", labels)
    assert None not in scores.values() and None not in breaches.values(), (scores, breaches)
    # Covered for 4 windows: its episode is open, the others' are not; each series holds its own rule's value.
    assert breaches == {"covered": 1.0, "defocused": 0.0, "moved": 0.0, "blinded": 0.0}
    assert scores["covered"] < 10  # luminance of a covered picture
    assert len(set(scores.values())) == len(scores)
    assert REGISTRY.get_sample_value("imask_drift_breach", {"camera": camera, "variant": "default",
                                                            "feature": "picture", "test": "tamper_rule"}) is None
