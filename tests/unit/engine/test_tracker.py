"""The face tracker (imask.engine.tracker): held faces, expiry, sparse IoU matching, shrinking boxes."""

from __future__ import annotations

import numpy as np
import pytest

from imask.engine.tracker import FaceTracker, iou_matrix, overlapping_pairs


def test_tracker_holds_and_expires() -> None:
    tracker = FaceTracker(max_missed=2)
    box = np.array([[10, 10, 50, 50]], np.float32)
    first = tracker.update(box, np.array([0.9], np.float32))
    assert len(first) == 1 and not first[0].held
    moved = tracker.update(box + 4, np.array([0.9], np.float32))
    assert moved[0].track_id == first[0].track_id
    # The output covers both the fresh detection and the smoothed track.
    assert moved[0].box[0] <= 14 and moved[0].box[2] >= 54
    empty = np.zeros((0, 4), np.float32)
    held = [tracker.update(empty, np.zeros(0, np.float32)) for _ in range(3)]
    assert [len(h) for h in held] == [1, 1, 0]
    assert held[0][0].held and held[1][0].box[2] - held[1][0].box[0] > 40  # grows while held


def test_overlapping_pairs_are_the_matrix_entries_over_the_threshold() -> None:
    # The tracker's sparse matching must see exactly what the full IoU matrix shows: same pairs, same order
    # (row-major, as the greedy match's stable sort relies on), same values. Crowd-like: many small boxes, some
    # touching, some identical, some degenerate.
    rng = np.random.default_rng(7)
    for n, m in ((0, 5), (5, 0), (300, 600), (40, 40)):
        corners = rng.uniform(0, 1280, (n + m, 2))
        sizes = rng.choice([0.0, 8.0, 20.0, 60.0], (n + m, 2))
        boxes = np.concatenate([corners, corners + sizes], axis=1)
        if n and m:
            boxes[n] = boxes[0]  # an exact duplicate
        a, b = boxes[:n], boxes[n:]
        for threshold in (0.2, 1e-6, 1.0):
            ti, di, ious = overlapping_pairs(a, b, threshold)
            full = iou_matrix(a, b)
            want_t, want_d = np.nonzero(full >= threshold)
            assert np.array_equal(ti, want_t) and np.array_equal(di, want_d), (n, m, threshold)
            assert np.array_equal(ious, full[want_t, want_d]), (n, m, threshold)
    with pytest.raises(ValueError):
        overlapping_pairs(np.zeros((1, 4)), np.zeros((1, 4)), 0.0)


def test_a_shrinking_face_held_for_frames_never_turns_inside_out() -> None:
    """Corner velocities of a box that shrank used to move its corners past each other while held."""
    tracker = FaceTracker(max_missed=10)
    for step in range(4):  # the box shrinks by 8 px a side each frame
        tracker.update(np.array([[100 + 8 * step, 100 + 8 * step, 200 - 8 * step, 200 - 8 * step]], np.float32),
                       np.array([0.9], np.float32))
    widths = []
    for _ in range(10):
        held = tracker.update(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
        assert len(held) == 1
        x1, y1, x2, y2 = held[0].box
        widths.append(min(x2 - x1, y2 - y1))
    assert min(widths) >= 52  # the last detection's size: a held face is never masked smaller
    assert widths == sorted(widths)  # and grows with its uncertainty
    coasted = tracker.coast()
    assert all(t.box[2] > t.box[0] and t.box[3] > t.box[1] for t in coasted)
