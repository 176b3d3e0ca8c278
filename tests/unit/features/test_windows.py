"""The features stream's window arithmetic, without a broker: bins, percentiles, window bounds, lateness, clamping,
accumulating, merging and hop windows, checked against an independent reference (imask.loadtest.features)."""

from __future__ import annotations

import math
import random

import pytest

from imask.features import windows as w
from imask.features.schema import FEATURE_NAMES, feast_row
from imask.features.store import utcnow
from imask.loadtest.features import Record, drop_record, meta_record, reference_row
from imask.v1 import frames_pb2 as pb


def accumulate(records: list[Record]) -> w.Accumulator:
    acc = w.new_accumulator()
    for r in records:
        if r.topic == "meta":
            w.add(acc, w.observe_meta(pb.FrameMeta.FromString(r.value), r.capture_ms))
        else:
            w.add(acc, w.observe_drop(pb.DropRecord.FromString(r.value), r.capture_ms))
    return acc


def assert_matches(row: dict[str, object], expected: dict[str, object]) -> None:
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def records(n: int, camera: str = "cam-1", drop_every: int = 7) -> list[Record]:
    return [drop_record(camera, i, i * 100, 1 + i % 8) if i % drop_every == drop_every - 1
            else meta_record(camera, i, i * 100) for i in range(n)]


def test_fixed_bins_clip_and_take_the_lower_edge() -> None:
    assert w.fixed_bin(0.0, w.SCORE_EDGES) == 0
    assert w.fixed_bin(-1.0, w.SCORE_EDGES) == 0
    assert w.fixed_bin(0.05, w.SCORE_EDGES) == 1
    assert w.fixed_bin(0.0999, w.SCORE_EDGES) == 1
    assert w.fixed_bin(1.0, w.SCORE_EDGES) == 19
    assert w.fixed_bin(7.9, w.FACE_SIZE_EDGES) == 0
    assert w.fixed_bin(8.0, w.FACE_SIZE_EDGES) == 1
    assert w.fixed_bin(511.9, w.FACE_SIZE_EDGES) == 11
    assert w.fixed_bin(5000.0, w.FACE_SIZE_EDGES) == 12
    assert w.fixed_bin(math.nan, w.SCORE_EDGES) == 0


def test_latency_bins_report_within_two_percent() -> None:
    assert w.latency_bin(0.0) == w.latency_bin(-3.0) == w.latency_bin(math.nan) == -1
    assert w.latency_value(-1) == 0.0
    for ms in (0.011, 0.5, 1.0, 12.3, 250.0, 9_999.0, 120_000.0):
        value = w.latency_value(w.latency_bin(ms))
        assert abs(value / ms - 1) <= math.sqrt(w.LATENCY_RATIO) - 1 + 1e-9, ms


def test_nearest_rank_percentiles() -> None:
    hist = {"1": 5, "3": 4, "10": 1}  # 1 x5, 3 x4, 10 x1
    assert w.nearest_rank(hist, 50) == 1
    assert w.nearest_rank(hist, 51) == 3
    assert w.nearest_rank(hist, 90) == 3
    assert w.nearest_rank(hist, 95) == 10
    assert w.nearest_rank(hist, 100) == 10
    assert w.nearest_rank({}, 50) is None
    assert w.nearest_rank({"-1": 3, "4": 1}, 75) == -1


def test_window_bounds_and_hops() -> None:
    assert w.window_start(12_345, 10_000) == 10_000
    assert w.window_start(-1, 10_000) == -10_000
    hops = w.hop_windows(65_000, 60_000, 10_000)
    assert hops == [(10_000, 70_000), (20_000, 80_000), (30_000, 90_000), (40_000, 100_000), (50_000, 110_000),
                    (60_000, 120_000)]
    assert all(start <= 65_000 < end for start, end in hops)


def test_lateness_follows_the_grace_period() -> None:
    # A window [0, 10 s) with 2 s of grace closes once the clock reaches 12 s.
    assert not w.is_late(9_000, 11_999, 10_000, 2_000)
    assert w.is_late(9_000, 12_000, 10_000, 2_000)
    assert not w.is_late(10_000, 12_000, 10_000, 2_000)  # the next window is open


def test_future_timestamps_are_clamped() -> None:
    assert w.clamp_event_ms(1_000, now_ms=1_000, max_future_ms=5_000) == (1_000, False)
    assert w.clamp_event_ms(6_000, now_ms=1_000, max_future_ms=5_000) == (6_000, False)
    assert w.clamp_event_ms(6_001, now_ms=1_000, max_future_ms=5_000) == (6_000, True)


def test_a_window_matches_the_reference() -> None:
    recs = records(137)
    row = w.feature_row(accumulate(recs), 10.0)
    assert_matches(row, reference_row(recs, 10.0))
    assert row["frames_in"] == 137 and row["drops"] == 137 // 7
    assert sum(row["score_hist"]) + sum(1 for r in recs if r.topic == "meta"
                                        for d in pb.FrameMeta.FromString(r.value).detections if d.held) \
        == sum(pb.FrameMeta.FromString(r.value).faces_masked for r in recs if r.topic == "meta")
    assert row["variant"] == "default" and row["arm"] == "control"


def test_an_empty_window_has_zeros_not_errors() -> None:
    row = w.feature_row(w.new_accumulator(), 10.0)
    assert row["frames_in"] == 0 and row["faces_mean"] == 0.0 and row["inference_ms_p99"] == 0.0
    assert row["variant"] == "" and row["score_hist"] == [0] * 20


def test_only_drops_gives_drop_rates() -> None:
    recs = [drop_record("c", i, i, reason) for i, reason in enumerate([7, 7, 7, 4])]
    row = w.feature_row(accumulate(recs), 10.0)
    assert row["drop_rate"] == 1.0 and row["drop_rate_ingest_stale"] == 0.75 and row["drop_rate_oversize"] == 0.25
    assert row["fps_in"] == 0.4 and row["fps_out"] == 0.0


def test_merging_windows_equals_one_window_of_all_their_records() -> None:
    recs = records(600)
    random.Random(1).shuffle(recs)
    parts = [accumulate(recs[i:i + 100]) for i in range(0, 600, 100)]
    merged = w.feature_row(w.merge(parts), 60.0)
    whole = w.feature_row(accumulate(recs), 60.0)
    for name in whole:
        expected = whole[name]
        assert merged[name] == (expected if isinstance(expected, str) else pytest.approx(expected, rel=1e-12)), name
    assert_matches(merged, reference_row(recs, 60.0))


def test_accumulator_survives_a_json_round_trip() -> None:
    import json

    acc = accumulate(records(50))
    assert w.feature_row(json.loads(json.dumps(acc)), 10.0) == w.feature_row(acc, 10.0)


def parts_of(records: list[Record]) -> w.Parts:
    parts: w.Parts = {}
    for r in records:
        if r.topic == "meta":
            w.add_part(parts, w.observe_meta(pb.FrameMeta.FromString(r.value), r.capture_ms))
        else:
            w.add_part(parts, w.observe_drop(pb.DropRecord.FromString(r.value), r.capture_ms))
    return parts


def test_parts_per_variant_merge_into_the_camera() -> None:
    recs = [meta_record("c", i, i, variant="default" if i % 3 else "precise") for i in range(60)]
    recs += [drop_record("c", 100 + i, i, 7) for i in range(5)]
    parts = parts_of(recs)
    assert sorted(parts) == ["", "default", "precise"]
    assert parts[""]["frames"] == 0 and sum(parts[""]["drops"]) == 5
    assert_matches(w.feature_row(w.merge(parts.values()), 10.0), reference_row(recs, 10.0))
    assert_matches(w.feature_row(parts["precise"], 10.0), reference_row(
        [r for r in recs if r.topic == "meta" and pb.FrameMeta.FromString(r.value).variant == "precise"], 10.0))
    again = w.merge_parts([parts_of(recs[:30]), parts_of(recs[30:])])
    assert {v: w.feature_row(a, 10.0) for v, a in again.items()} == {v: w.feature_row(a, 10.0)
                                                                    for v, a in parts.items()}


def test_hop_windows_from_closed_step_windows() -> None:
    hops = w.HopWindows(60_000, 10_000)
    kept: list[list[object]] = []
    per_window = {start: records(10 + start // 10_000, camera="c") for start in range(0, 100_000, 10_000)}
    for start, recs in per_window.items():
        if start == 30_000:
            continue  # a window without records: never closed, never kept
        merged, kept = hops.close(kept, start, parts_of(recs))
        inside = [r for s, rs in per_window.items() if start + 10_000 - 60_000 <= s <= start and s != 30_000
                  for r in rs]
        assert w.feature_row(w.merge(merged.values()), 60.0)["frames_in"] == len(inside), start
        assert_matches(w.feature_row(w.merge(merged.values()), 60.0), reference_row(inside, 60.0))
        assert len(kept) <= 5 and all(item[0] > start + 10_000 - 60_000 for item in kept)
    with pytest.raises(ValueError, match="multiple"):
        w.HopWindows(45_000, 10_000)


def test_feast_row_has_every_feature_in_order() -> None:
    from imask.features.schema import VARIANT_VIEW_10S, VIEW_10S

    features = w.feature_row(accumulate(records(5)), 10.0)
    row = feast_row("cam-1", 0, 10_000, features, utcnow())
    assert list(row)[:3] == ["camera_id", "event_timestamp", "created"]
    assert tuple(list(row)[3:]) == FEATURE_NAMES == tuple(f.name for f in VIEW_10S.features)
    assert row["event_timestamp"].timestamp() == 10.0
    row = feast_row("cam-1", 0, 10_000, features, utcnow(), variant="precise")
    assert list(row)[:4] == ["camera_id", "variant", "event_timestamp", "created"]
    assert row["variant"] == "precise"
    assert tuple(list(row)[4:]) == tuple(f.name for f in VARIANT_VIEW_10S.features)
