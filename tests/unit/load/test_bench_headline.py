"""make bench's target checks (load/bench.py): each issue-9 target read from the headline figures, met or not."""

from __future__ import annotations

from load.bench import target_checks


def test_targets_are_met_or_missed_by_the_measured_values() -> None:
    checks = target_checks({"engine_720p_engine_cpu_ms_per_frame": 67.7,
                            "realtime_vs_default_engine_frames_per_cpu_s": 2.23})
    assert checks == {
        "engine_720p_engine_cpu_ms_per_frame <= 30": {"value": 67.7, "met": False},
        "realtime_vs_default_engine_frames_per_cpu_s >= 2": {"value": 2.23, "met": True},
    }
    flipped = target_checks({"engine_720p_engine_cpu_ms_per_frame": 29.9,
                             "realtime_vs_default_engine_frames_per_cpu_s": 1.88})
    assert [c["met"] for c in flipped.values()] == [True, False]


def test_a_figure_the_run_did_not_measure_is_left_out() -> None:
    assert list(target_checks({"engine_720p_engine_cpu_ms_per_frame": 25.0})) == [
        "engine_720p_engine_cpu_ms_per_frame <= 30"]
