"""The drift monitor over synthetic window sequences: each camera-side change raises its own alert within 2
windows after the persistence period, steady windows raise none over hundreds of windows, a flapping camera raises
one episode, a camera's switch to a weaker variant raises variant_regression against its own windows before."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from imask.drift import synthetic as syn
from imask.drift.monitor import DriftMonitor, Hysteresis, MonitorConfig, Transition
from imask.drift.rules import Thresholds
from imask.drift.window import Reference, Window

CONFIG = MonitorConfig()
CHANGE_AT = 40


def run(change: syn.Change | None, seed: int = 3, count: int = 80, camera: str = "cam1",
        scene: syn.Scene | None = None) -> list[tuple[int, Transition]]:
    scene = scene or syn.Scene()
    monitor = DriftMonitor(CONFIG)
    rng = np.random.default_rng(seed + 100)
    out = []
    for i, w in enumerate(syn.windows(camera, scene, count, seed=seed)):
        if change is not None and i >= CHANGE_AT:
            w = change(w, rng)
        out += [(i, t) for t in monitor.observe(w).transitions]
    return out


@pytest.mark.parametrize(("change", "kind", "feature"), [
    ("halved_luminance", "drift", "luma_mean"),
    ("faces_to_a_third", "drift", "face_size_hist"),
    ("covered", "tamper_covered", "covered"),
    ("defocused", "tamper_defocused", "defocused"),
    ("shifted", "tamper_moved", "moved"),
    ("blinded", "tamper_blinded", "blinded"),
])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_change_raises_its_alert_within_two_windows_after_persistence(change: str, kind: str, feature: str,
                                                                          seed: int) -> None:
    events = run(syn.CHANGES[change], seed)
    opened = [(i, t) for i, t in events if t.action == "open"]
    assert all(i >= CHANGE_AT for i, _ in opened), f"alarm before the change: {opened}"
    hit = [i for i, t in opened if t.kind == kind and t.labels["feature"] == feature]
    assert hit, f"{change}: no {kind} on {feature}; got {[(i, t.kind, t.labels) for i, t in opened]}"
    windows_to_detect = hit[0] - CHANGE_AT + 1
    assert windows_to_detect <= CONFIG.breach_windows + 2
    # The other tamper kinds stay quiet: each change has its own.
    others = {t.kind for _, t in opened if t.kind.startswith("tamper_")} - {kind}
    assert not others, f"{change} also raised {others}"


def test_steady_scenes_raise_nothing_over_hundreds_of_windows() -> None:
    windows_seen = 0
    for seed in range(8):
        scene = syn.Scene(faces=0.5 + seed * 0.6, face_px=30 + seed * 20, luma=70 + seed * 15)
        assert run(None, seed=seed, count=150, camera=f"cam{seed}", scene=scene) == []
        windows_seen += 150 - CONFIG.reference_windows
    assert windows_seen >= 8 * 100


def test_events_carry_identical_labels_when_opened_and_resolved() -> None:
    monitor = DriftMonitor(CONFIG)
    rng = np.random.default_rng(0)
    events = []
    for i, w in enumerate(syn.windows("cam1", syn.Scene(), 70, seed=5)):
        if 30 <= i < 40:
            w = syn.cover(w, rng)
        events += monitor.observe(w).transitions
    covered = [t for t in events if t.kind == "tamper_covered"]
    assert [t.action for t in covered] == ["open", "resolve"]
    assert covered[0].labels == covered[1].labels == {"variant": "default", "feature": "covered",
                                                      "test": "tamper_rule"}
    assert "opened with" in covered[1].detail


def test_hysteresis_makes_a_flapping_camera_one_episode() -> None:
    h = Hysteresis(breach=3, recover=3)
    pattern = [True, True, True, False, True, False, True, True, False, False, True, False, False, False]
    actions = [h.update(b) for b in pattern]
    assert [a for a in actions if a] == ["open", "resolve"]
    assert actions.index("open") == 2 and actions.index("resolve") == 13
    h = Hysteresis(breach=3, recover=3)
    assert [h.update(b) for b in [True, True, False, True, True, False]] == [None] * 6


def test_flapping_cover_raises_one_episode() -> None:
    monitor = DriftMonitor(CONFIG)
    rng = np.random.default_rng(1)
    events = []
    for i, w in enumerate(syn.windows("cam1", syn.Scene(), 80, seed=2)):
        if 30 <= i < 60 and i % 4 != 3:  # covered, uncovered for a window now and then
            w = syn.cover(w, rng)
        events += [t for t in monitor.observe(w).transitions if t.kind == "tamper_covered"]
    assert [t.action for t in events] == ["open", "resolve"]


def _switch_run(found: float, seed: int = 0, switch_at: int = 30, count: int = 60) -> list[tuple[int, Transition]]:
    monitor = DriftMonitor(CONFIG)
    rng = np.random.default_rng(seed)
    weaker = syn.weaker_detector(found)
    out = []
    for i, w in enumerate(syn.windows("cam1", syn.Scene(faces=3.0), count, seed=seed)):
        if i >= switch_at:
            w = dataclasses.replace(weaker(w, rng), variant="blazeface", arm="challenger")
        out += [(i, t) for t in monitor.observe(w).transitions]
    return out


@pytest.mark.parametrize("found", [0.26, 0.51])  # BlazeFace found 49-74% fewer faces per frame
def test_switch_to_a_weaker_variant_raises_variant_regression_within_two_windows(found: float) -> None:
    events = _switch_run(found)
    regressions = [(i, t) for i, t in events if t.kind == "variant_regression" and t.action == "open"]
    assert regressions, events
    i, t = regressions[0]
    assert i - 30 + 1 <= CONFIG.regression_breach_windows
    assert t.labels["variant"] == "blazeface" and "under default" in t.detail


def test_switch_to_an_equal_variant_raises_nothing_and_takes_its_own_reference() -> None:
    monitor = DriftMonitor(CONFIG)
    captured = []
    events = []
    for i, w in enumerate(syn.windows("cam1", syn.Scene(faces=3.0), 80, seed=4)):
        if i >= 30:
            w = dataclasses.replace(w, variant="precise")
        result = monitor.observe(w)
        events += result.transitions
        if result.captured:
            captured.append(result.captured)
    assert events == []
    assert [(r.variant, r.source) for r in captured] == [("default", "first_windows"), ("precise", "after_switch")]


def test_regression_ends_when_the_camera_goes_back() -> None:
    monitor = DriftMonitor(CONFIG)
    rng = np.random.default_rng(0)
    weaker = syn.weaker_detector(0.3)
    events = []
    for i, w in enumerate(syn.windows("cam1", syn.Scene(faces=3.0), 50, seed=1)):
        if 30 <= i < 35:  # rolled back after 5 windows
            w = dataclasses.replace(weaker(w, rng), variant="blazeface")
        events += [t for t in monitor.observe(w).transitions if t.kind == "variant_regression"]
    assert [t.action for t in events if t.labels["feature"] == "faces_mean"] == ["open", "resolve"]


def test_no_regression_judged_on_a_scene_without_faces() -> None:
    monitor = DriftMonitor(CONFIG)
    for i, w in enumerate(syn.windows("cam1", syn.Scene(faces=0.05), 40, seed=1)):
        if i >= 20:
            w = dataclasses.replace(w, variant="blazeface", faces_mean=0.0)
        assert not [t for t in monitor.observe(w).transitions if t.kind == "variant_regression"]


def test_reference_digest_round_trip_and_tamper_refused() -> None:
    ws = tuple(syn.windows("cam1", syn.Scene(), 5))
    ref = Reference("cam1", "default", ws, "capture", 123)
    again = Reference.from_dict(ref.to_dict())
    assert again == ref and again.digest.startswith("sha256:")
    assert (ref.start_ms, ref.end_ms) == (ws[0].start_ms, ws[-1].end_ms)
    raw = ref.to_dict()
    raw["windows"][0]["luma_mean"] = 1.0
    with pytest.raises(ValueError, match="digest"):
        Reference.from_dict(raw)


def test_operator_reference_replaces_the_automatic_one_and_reset_recaptures() -> None:
    monitor = DriftMonitor(MonitorConfig(reference_windows=4))
    ws = list(syn.windows("cam1", syn.Scene(), 12, seed=1))
    captured = [monitor.observe(w).captured for w in ws[:4]]
    assert captured[-1] is not None and captured[-1].source == "first_windows"
    monitor.set_reference(Reference("cam1", "default", tuple(ws[4:8]), "capture", 1))
    assert monitor.cameras["cam1"].references["default"].source == "capture"
    monitor.drop_reference("cam1")
    results = [monitor.observe(w) for w in ws[8:12]]
    assert results[-1].captured is not None and results[-1].captured.start_ms == ws[8].start_ms


def test_window_from_feature_row() -> None:
    row = {"window_start_ms": 0, "window_end_ms": 10_000, "frames_out": 60, "faces_mean": 1.5,
           "score_hist": [0] * 20, "face_size_hist": [0] * 13, "picture_frames": 60, "luma_mean": 100.0,
           "luma_std": 40.0, "sharpness": 2000.0, "variant": "default", "arm": "", "end_to_end_ms_p95": 120.0}
    w = Window.from_features("cam1", row)
    assert w is not None and w.latency_p95_ms == 120.0 and w.sharpness_norm == pytest.approx(1.25)
    assert Window.from_features("cam1", {**row, "frames_out": 0}) is None
    assert Window.from_features("cam1", {}) is None
    assert Window.from_dict(w.to_dict()) == w


def test_config_refuses_zero_windows() -> None:
    with pytest.raises(ValueError):
        MonitorConfig(breach_windows=0)
    assert Thresholds().covered_luma > 0


@pytest.mark.parametrize("softer", [False, True])
def test_a_camera_turned_to_a_like_view_is_moved_by_its_baseline_offset(softer: bool) -> None:
    """Another view as bright and sharp as the first (or softer, which read as defocused before) keeps every
    picture statistic but the thumbnail's distance from the camera's baseline: that alone raises tamper_moved."""

    def turned(w: Window, rng: np.random.Generator) -> Window:
        w = syn.blur(w, rng) if softer else w
        return dataclasses.replace(w, scene_offset=float(rng.normal(25.0, 2.0)))

    opened = [(i, t.kind) for i, t in run(turned, seed=4) if t.action == "open"]
    tampers = {kind for _, kind in opened if kind.startswith("tamper_")}
    assert tampers == {"tamper_moved"}, opened
    assert min(i for i, kind in opened if kind == "tamper_moved") - CHANGE_AT + 1 <= CONFIG.breach_windows + 2
