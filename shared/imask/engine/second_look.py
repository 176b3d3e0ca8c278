"""Second look: in a crowd frame, a faint detection starts a mask only when a second pass at 1.5x confirms it.

The crowd rule (engine/context.py) lets a new small face start a track at 0.03 in a frame with 5+ small boxes. On
wider_dev that takes recall from 0.822 (0.2) to 0.957 but also masks heads seen from behind, chests, hands, flags and
clothing: 215 masks a picture, 12 per labelled face, a median 8.9% of each picture masked outside every labelled face
grown by 60% a side (p90 19.5%, max 38%).

Measured on wider_dev (103 crowd pictures, 741 valid faces). The crowd rule admits 20,849 candidates (0.03 <= score
< 0.2); 1,255 overlap a labelled face at IoU >= 0.3. 100 valid faces are masked only thanks to candidates: 88 by one
at IoU >= 0.3 with them, 12 only by a misplaced neighbour's mask. AUC of candidates on those faces against
candidates on no labelled face (IoU < 0.1), plain and weighted by the area each masks outside faces:

    the candidate's own score                                        0.71  0.72
    size against confident faces at that height (perspective fit)    ~0.5
    colour: skin share, Cr/Cb, saturation, distance to the frame's
      confident faces' colour                                        0.78  0.76
    CenterFace heat-map peakedness (faces peak, textures plateau)    0.75  0.72
    BlazeFace short-range / full-range on the enlarged crop          0.58 / 0.42
    CenterFace on the mirrored frame (IoU >= 0.4)                    0.75  0.76
    CenterFace at 1.5x / 2x the pass's scale (IoU >= 0.3)            0.86 / 0.87  0.87 / 0.88
    logistic regression: colour, score, size (and the 1.5x pass)    0.78 (0.89)  0.76 (0.89)

CenterFace regresses a mean face's landmarks for anything it fires on: the order check (eyes above nose above mouth,
left/right, inside the box) fails 0 of 417 confident faces, 1 of the 129 needed candidates and 19 of 16,423 non-face
ones (0.8% of their area). It stays as a sanity gate (it refuses the moon's box, which the 1.5x pass confirms), not a
discriminator. The second pass is the one strong signal: at 1.5x a small face is resolved and still found, most blobs
that looked like one are not. Colour added 0.02 of AUC and nothing measurable end to end, so it is left out.

End to end (recall as imask.evaluation.runner counts it, YuNet referee included; masks per labelled face; share of
the picture masked outside labelled faces; no face-free picture of builtin:no-faces over 1% and photos_gt 43/43 in
every row; "@1.0": kept candidates masked at scale 1.0 instead of 1.5):

    rule                                      recall  masks/face  outside p50  p90    max
    default (context 0.03)                    0.957   12.0        8.9%         19.5%  38.2%
    default, candidates @1.0                  0.954   12.0        5.0%         13.4%  29.3%
    context 0.05 / 0.07 / 0.1                 0.935 / 0.908 / 0.885   6.2 / 3.7 / 2.1   3.8 / 2.3 / 1.2%
                                                                      p90 11.3 / 7.2 / 4.6%
    context 0.05 / 0.07, candidates @1.0      0.931 / 0.904   6.2 / 3.7   2.2 / 1.2%   7.3 / 4.3%
    1.5x >= 0.06, candidates @1.5             0.943   5.0         2.7%         7.6%   21.8%
    1.5x >= 0.06, candidates @1.2             0.943   5.0         2.0%         6.0%   17.4%
    1.5x >= 0.04, @1.0                        0.947   7.1         2.4%         7.2%   19.5%
    1.5x >= 0.05, @1.0                        0.943   5.9         1.9%         6.0%   17.3%
    1.5x >= 0.06, @1.0 (this module)          0.942   5.0         1.5%         5.0%   14.5%
    1.5x >= 0.08, @1.0                        0.934   3.7         1.0%         4.0%   10.5%
    2x >= 0.06 / 1.25x >= 0.06, @1.0          0.939 / 0.939   4.5 / 5.6   1.5 / 1.9%   4.9 / 5.7%

No rule keeps the default's 0.957 with less over-masking: the default already masks every face CenterFace finds at
0.03 (its 32 misses have no detection at all), and of the 11 faces this rule gives up, 5 were covered only by masks on
neighbouring non-faces and the rest are heavily blurred or occluded or atypical poses scoring 0.03-0.06 at both
scales. At equal recall the 1.5x check masks about half the area that a higher context threshold does (0.942 at
1.5% / 5.0% vs context 0.05 @1.0: 0.931 at 2.2% / 7.3%). Faces WIDER does not label but YuNet (2x, >= 0.6) or the 2x
pass (>= 0.5) find explain 0.2 points of the default's 8.9% median: nearly all of the outside share is non-faces.

The module is pure: the engine runs the second pass (a CenterFace detector on the main one's model, sized by
rescan_geometry, threshold RESCAN_SCORE) on crowd frames that have candidates, and calls second_look() once per such
frame before the tracker. Refused candidates get an infinite new-track score (they may still continue a track a
confident detection started); kept ones are shrunk by mask_boxes() so that the variant's mask scale masks them at
FAINT_MASK_SCALE.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from imask.engine.detectors.base import Detections, DetectorGeometry, FloatArray

BoolArray = npt.NDArray[np.bool_]

# The second pass runs at this many times the main pass's linear scale (2.25x its pixels): 1.25x separated less
# (0.939 recall at 1.9% / 5.7% outside vs 0.942 at 1.5% / 5.0%) and 2x no better (0.939 at 1.5% / 4.9%) for 1.8x
# the cost of 1.5x.
RESCAN_FACTOR = 1.5
# A candidate is confirmed by a second-pass box overlapping it this much: 0.3 separated best (AUC 0.87 weighted;
# 0.4: 0.85, 0.5: 0.75, centre distance within 0.4 of a side: 0.86).
RESCAN_IOU = 0.3
# ...scoring at least this much (the module doc's table: 0.05 keeps 1 more face for 0.4 points more median and 1.0
# more p90 outside share, 0.08 drops 6 more for 0.5 and 1.0 less).
RESCAN_SCORE = 0.06
# Kept candidates are masked at this scale of their box instead of the variant's (1.5): 2.25x less area each, for 1
# face of 741 (0.943 -> 0.942 with the referee's check; 1.2: 0.943 at 2.0% / 6.0%). masks.MIN_MASK_SCALE: below 1.0
# a mask leaves part of the detector's box.
FAINT_MASK_SCALE = 1.0
# The landmark sanity gate's slack: landmarks may lie this far (share of the box side) outside the box.
LANDMARK_MARGIN = 0.1


@dataclass(frozen=True)
class SecondLook:
    """One frame's verdict, per detection: `keep` (False only for refused candidates) and the mask scale each should
    get (`FAINT_MASK_SCALE` for kept candidates, NaN for the rest: the variant's own); `required`, the score each
    needed to start a track, as the verdict was made with it."""

    required: FloatArray
    candidates: BoolArray
    keep: BoolArray
    mask_scale: FloatArray

    @property
    def refused(self) -> BoolArray:
        return self.candidates & ~self.keep


def candidates(dets: Detections, required: npt.NDArray[np.floating] | float, threshold: float) -> BoolArray:
    """The detections the crowd rule alone admits: scoring at least what a new track needs (`required`, per box or
    one value) but under the variant's own `threshold` (0.2). Large boxes need 0.5 whatever the rule, so they never
    are candidates when threshold <= 0.5."""
    scores = dets.scores
    return np.asarray((scores >= np.asarray(required, np.float32)) & (scores < threshold), np.bool_)


def landmarks_in_face_order(dets: Detections, margin: float = LANDMARK_MARGIN) -> BoolArray:
    """Per box: its 5 landmarks (left eye, right eye, nose, left mouth corner, right mouth corner, as seen in the
    picture) lie in face order inside the box: both eyes above both mouth corners, the nose below the eyes' mean
    height and above the mouth's, the left eye and mouth corner left of the right ones, every point within the box
    grown by `margin` of its side. Upright faces only: the engine detects turned pictures turned upright."""
    if len(dets) == 0:
        return np.zeros(0, np.bool_)
    x, y = dets.landmarks[:, :, 0], dets.landmarks[:, :, 1]
    boxes = dets.boxes
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)[:, None]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)[:, None]
    inside = ((x >= boxes[:, :1] - margin * w) & (x <= boxes[:, 2:3] + margin * w)
              & (y >= boxes[:, 1:2] - margin * h) & (y <= boxes[:, 3:4] + margin * h)).all(axis=1)
    eyes_y, mouth_y = (y[:, 0] + y[:, 1]) / 2, (y[:, 3] + y[:, 4]) / 2
    eyes_above_mouth = np.maximum(y[:, 0], y[:, 1]) < np.minimum(y[:, 3], y[:, 4])
    nose_between = (eyes_y < y[:, 2]) & (y[:, 2] < mouth_y)
    left_right = (x[:, 0] < x[:, 1]) & (x[:, 3] < x[:, 4])
    return np.asarray(inside & eyes_above_mouth & nose_between & left_right, np.bool_)


def confirmed(boxes: FloatArray, rescan: Detections, min_score: float = RESCAN_SCORE,
              min_iou: float = RESCAN_IOU) -> BoolArray:
    """Per box: the second pass has a box scoring >= min_score that overlaps it at IoU >= min_iou. A crowd brings
    hundreds of each, and each overlaps a handful: second-pass boxes sorted by left edge, each box is paired only with
    those whose left edge lies between its own right edge and, to its left, the widest box that could still reach
    min_iou with it (a full grid, or tracker.overlapping_pairs' x test over one, cost 2 ms for 730 x 260 boxes)."""
    out = np.zeros(boxes.shape[0], np.bool_)
    strong = rescan.boxes[rescan.scores >= min_score].astype(np.float64)
    if boxes.shape[0] == 0 or strong.shape[0] == 0:
        return out
    mine = boxes.astype(np.float64)
    order = np.argsort(strong[:, 0], kind="stable")
    lefts = strong[order, 0]
    # IoU >= min_iou needs the other box no wider than this one / min_iou (their intersection is at most this one's
    # width times the other's height, and must reach min_iou of the other's area).
    reach = np.minimum(float((strong[:, 2] - strong[:, 0]).max()), (mine[:, 2] - mine[:, 0]) / max(min_iou, 1e-3))
    lo = np.searchsorted(lefts, mine[:, 0] - reach, side="left")
    hi = np.searchsorted(lefts, mine[:, 2], side="right")
    counts = np.maximum(hi - lo, 0)
    rows = np.repeat(np.arange(mine.shape[0]), counts)
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    cols = order[np.arange(rows.shape[0]) + starts]
    a, b = mine[rows], strong[cols]
    inter = (np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
             * np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None))
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    out[rows[inter >= min_iou * np.maximum(union, 1e-9)]] = True
    return out


def second_look(dets: Detections, required: npt.NDArray[np.floating] | float, threshold: float,
                rescan: Detections, upright: bool = True) -> SecondLook:
    """The verdict on one crowd frame's detections: candidates (see `candidates`) are kept when the second pass
    (`rescan`, in frame pixels, at RESCAN_FACTOR) confirms them and, for an `upright` picture, their landmarks are in
    face order (a camera detected turned, engine/orientation.py, has its faces' landmarks turned in frame pixels:
    pass upright=False); every other detection is left as it is."""
    cand = candidates(dets, required, threshold)
    keep = np.ones(len(dets), np.bool_)
    if cand.any():
        index = np.flatnonzero(cand)
        sub = Detections(boxes=dets.boxes[index], scores=dets.scores[index], landmarks=dets.landmarks[index])
        keep[index] = confirmed(sub.boxes, rescan)
        if upright:
            keep[index] &= landmarks_in_face_order(sub)
    scale = np.where(cand & keep, np.float32(FAINT_MASK_SCALE), np.float32(np.nan)).astype(np.float32)
    required_each = np.broadcast_to(np.asarray(required, np.float32), (len(dets),)).astype(np.float32)
    return SecondLook(required=required_each, candidates=cand, keep=keep, mask_scale=scale)


def mask_boxes(boxes: FloatArray, mask_scale: FloatArray, spec_scale: float) -> FloatArray:
    """The boxes to hand the tracker and apply_masks so that a mask grown by `spec_scale` covers each box grown by
    its own `mask_scale` instead (NaN: unchanged). Shrunk around the centre; the shape is unchanged."""
    factor = np.where(np.isnan(mask_scale), 1.0, mask_scale / spec_scale).astype(np.float32)[:, None]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * factor
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


def rescan_geometry(geometry: DetectorGeometry, factor: float = RESCAN_FACTOR) -> DetectorGeometry:
    """The second pass's geometry: the whole frame at `factor` times the main pass's linear scale (pixel budget
    factor^2, enlargement limit x factor up to 4, reduction limit / factor), one pass (no mirror, no tiles). A 416 px
    WIDER picture is read at 720 px instead of 480; 720p at 960x544 instead of 640x352; 1080p at 1280x720 (the
    detector's 1280 px cap) instead of 960x544."""
    return replace(geometry, pixel_budget=round(geometry.pixel_budget * factor * factor),
                   max_upscale=min(4.0, geometry.max_upscale * factor),
                   max_downscale=max(1.0, geometry.max_downscale / factor) if geometry.max_downscale > 0 else 0.0,
                   flip=False, tile=0)
