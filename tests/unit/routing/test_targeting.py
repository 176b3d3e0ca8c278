"""Feature rules of targeted experiments: parsing, values (numbers and histogram percentiles), freshness (stale or
missing features never match), and a targeted config's routing (cameras outside its targets on control)."""

from __future__ import annotations

from typing import Any

import pytest

from imask.features.schema import VIEW_10S, VIEW_60S
from imask.features.store import CameraFeatures
from imask.features.windows import FACE_SIZE_EDGES
from imask.routing.assign import ArmSpec, ExperimentConfig
from imask.routing.targeting import FeatureRule, histogram_percentile


def camera(values60: dict[str, Any] | None, fresh: bool = True, camera_id: str = "cam") -> CameraFeatures:
    values = {VIEW_10S.name: {}, VIEW_60S.name: {}}
    if values60 is not None:
        values[VIEW_60S.name] = {"window_end_ms": 1_000, **values60}
    return CameraFeatures(camera_id, None, values, 1_000 if values60 is not None else None,
                          5.0 if fresh else 500.0, fresh and values60 is not None)


def sizes(**bins: int) -> list[int]:
    """face_size_hist counts with counts at the bins starting at the given edges (b16=3: 3 faces of 16-24 px)."""
    counts = [0] * (len(FACE_SIZE_EDGES) - 1)
    for name, count in bins.items():
        counts[FACE_SIZE_EDGES.index(float(name[1:]))] = count
    return counts


def test_parse() -> None:
    rule = FeatureRule.parse("face_size_p50 < 24")
    assert rule == FeatureRule("face_size_p50", "<", 24.0, VIEW_60S.name)
    assert FeatureRule.parse(" camera_stats_10s.fail_closed_rate>=0.05") == FeatureRule(
        "fail_closed_rate", ">=", 0.05, VIEW_10S.name)
    assert str(rule) == "camera_stats_60s.face_size_p50 < 24"
    for bad in ("face_size_p50 ~ 24", "nonsense < 1", "variant == 1", "face_size_hist < 3", "faces_mean < x",
                "camera_variant_stats_60s.faces_mean < 1", "other_view.faces_mean < 1", "face_size_p0 < 3", ""):
        with pytest.raises(ValueError):
            FeatureRule.parse(bad)


def test_histogram_percentile_is_the_bins_middle() -> None:
    assert histogram_percentile(sizes(b16=3, b32=1), FACE_SIZE_EDGES, 50) == 20.0  # [16, 24)
    assert histogram_percentile(sizes(b16=1, b32=3), FACE_SIZE_EDGES, 50) == 40.0  # [32, 48)
    assert histogram_percentile(sizes(b512=2), FACE_SIZE_EDGES, 50) == 512.0  # open last bin: its lower edge
    assert histogram_percentile(sizes(), FACE_SIZE_EDGES, 50) is None


def test_small_faces_match_large_do_not() -> None:
    rule = FeatureRule.parse("face_size_p50 < 24")
    assert rule.matches(camera({"face_size_hist": sizes(b8=5, b16=4, b64=3)}))
    assert not rule.matches(camera({"face_size_hist": sizes(b16=2, b24=5)}))  # median in [24, 32)
    assert not rule.matches(camera({"face_size_hist": sizes()}))  # no face seen: no median, no match


def test_stale_or_missing_features_never_match() -> None:
    rule = FeatureRule.parse("face_size_p50 < 24")
    small = {"face_size_hist": sizes(b8=9)}
    assert rule.matches(camera(small))
    assert not rule.matches(camera(small, fresh=False))  # the values would match, but they are old
    assert not rule.matches(camera(None))
    other_view = CameraFeatures("cam", None, {VIEW_10S.name: {"window_end_ms": 1, "face_size_hist": sizes(b8=9)},
                                              VIEW_60S.name: {}}, 1, 1.0, True)
    assert not rule.matches(other_view)  # fresh in the 10 s view, but the rule reads the 60 s view


def test_numbers_and_operators() -> None:
    row = camera({"fail_closed_rate": 0.1, "faces_mean": float("nan")})
    assert FeatureRule.parse("fail_closed_rate > 0.05").matches(row)
    assert FeatureRule.parse("fail_closed_rate <= 0.1").matches(row)
    assert not FeatureRule.parse("fail_closed_rate != 0.1").matches(row)
    assert not FeatureRule.parse("faces_mean < 1").matches(row)  # NaN never matches
    assert not FeatureRule.parse("luma_mean < 1").matches(row)  # absent value


def test_targeted_config_routes_only_its_cameras() -> None:
    arms = (ArmSpec("control", "default", 0.0), ArmSpec("hires", "hires", 1.0))
    everyone = ExperimentConfig("e", "e", arms, 1, 0)
    targeted = ExperimentConfig("e", "e", arms, 2, 0, targets=("small",))
    assert everyone.arm_for("big").name == "hires"
    assert targeted.arm_for("small").name == "hires" and targeted.arm_for("big").name == "control"
    assert ExperimentConfig("e", "e", arms, 3, 0, targets=()).arm_for("small").name == "control"
    raw = targeted.to_dict()
    assert ExperimentConfig.from_dict(raw) == targeted
    assert ExperimentConfig.from_dict({k: v for k, v in everyone.to_dict().items() if k != "targets"}) == everyone
