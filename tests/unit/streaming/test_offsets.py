"""Offset tracking (imask.streaming.kafka.OffsetTracker): only a contiguous prefix of finished offsets commits."""

from __future__ import annotations

from imask.streaming.kafka import OffsetTracker


def test_offset_tracker_commits_only_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    for off in (5, 6, 7):
        tracker.add("t", 0, off)
    assert tracker.finish("t", 0, 6) is None
    assert tracker.finish("t", 0, 5) == 7
    assert tracker.finish("t", 0, 7) == 8
    assert tracker.inflight() == 0
    tracker.add("t", 1, 1)
    tracker.forget("t", 1)
    assert tracker.finish("t", 1, 1) is None
