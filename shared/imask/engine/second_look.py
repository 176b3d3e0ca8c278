"""Second look: in a crowd frame, a faint face is masked only when two other opinions together vouch for it.

The crowd rule (engine/context.py) lets a new small face start a track at 0.03 in a frame with 5+ small boxes. On
wider_dev that takes recall from 0.822 (0.2) to 0.957 but also masks heads seen from behind, chests, hands, flags and
clothing: 215 masks a picture, 12 per labelled face, a median 8.9% of each picture masked outside every labelled face
grown by 60% a side (p90 19.5%, max 38%).

Measured on wider_dev (103 crowd pictures, 741 valid faces). The crowd rule admits 20,849 candidates (0.03 <= score
< 0.2); 129 of them are the only detection of a labelled face they overlap at IoU >= 0.3. AUC of candidates on those
faces against candidates on no labelled face (IoU < 0.1), plain and weighted by the area each masks outside faces:

    the candidate's own score                                        0.71  0.72
    colour: skin share, Cr/Cb, saturation                            0.78  0.76
    CenterFace heat-map peakedness (faces peak, textures plateau)    0.75  0.72
    BlazeFace short-range / full-range on the enlarged crop          0.58 / 0.42
    CenterFace on the mirrored frame (IoU >= 0.4)                    0.75  0.76
    MTCNN's RNet (24 px) / ONet (48 px) on the crop, 1.2x the box    0.78 / 0.81  0.75 / 0.76
    CenterFace at 1.5x / 2x the pass's scale (IoU >= 0.3)            0.85 / 0.85  0.87 / 0.86
    1.5x pass and ONet (logistic, out of fold by picture)            0.90  0.89
    1.5x pass, ONet and RNet / and the candidate's score             0.90 / 0.89

The 1.5x pass (a small face is resolved and still found, most blobs that looked like one are not) and ONet (another
family, trained on WIDER crops) err on different candidates; together they vouch for a face by

    RESCAN_WEIGHT * ln(1.5x score + 0.01) + CHECK_WEIGHT * logit(ONet's face probability) > KEEP_LOGIT

(the weights are the logistic fit's). The 1.5x pass also finds faces the main pass has no box for at all (48 labelled
faces have none at 0.03; 22 of them score 0.03 or more at 1.5x): its boxes that overlap no main detection are
proposed and judged the same way, against PROPOSE_LOGIT. CenterFace regresses a mean face's landmarks for anything it
fires on, so the landmark order check (eyes above nose above mouth, inside the box) is a sanity gate only: it fails
0 of 417 confident faces and refuses the moon's box.

End to end (recall as imask.evaluation.runner counts it, YuNet referee included; masks per labelled face; share of
the picture masked outside labelled faces; photos_gt 43/43 in every row; kept candidates masked at FAINT_MASK_SCALE):

    rule                                                  recall  masks/face  outside p50  p90    max
    default before the second look (context 0.03, @1.5)   0.957   12.0        8.9%         19.5%  38.2%
    every candidate kept, @1.0                            0.953   12.0        5.0%         13.1%  29.3%
    1.5x >= 0.06 alone                                    0.942   5.0         1.5%         5.0%   14.5%
    1.5x and ONet, keep > -7.0, no proposals              0.946   4.6         1.6%         5.2%   15.0%
    ... with proposals > -6.0                             0.962   4.7         1.8%         5.2%   15.3%
    keep > -6.8, propose > -6.0                           0.960   4.3         1.5%         4.7%   14.1%
    ... 1.5x floor 0.04, proposals from 0.05 (the default) 0.960  4.2         1.3%         4.7%   13.9%
    ... 1.5x floor 0.05                                   0.957   4.0         1.3%         4.5%   13.7%
    keep > -6.5, propose > -6.0                           0.951   3.7         1.3%         4.2%   12.7%
    keep > -6.0, propose > -6.0 (`precise`)               0.950   2.9         0.9%         3.3%   9.9%
    keep > -6.8, propose > -6.5                           0.962   4.4         1.6%         5.4%   20.5%

The thresholds were chosen on wider_dev itself, so its figures flatter them a little; the held-out half is the
independent check. ONet costs about 0.7 ms a crop on one core (26 MFLOP; int8 gained 15%), so the floors matter:
with them a wider_dev crowd asks it about 121 boxes instead of 186.

Video: a camera's crowd frames get the full look every LOOK_EVERY-th frame with candidates and reuse its verdicts
in between (`remembered`); the sample clips' crowd clip otherwise spent 103 ms a 1080p frame in the 1.5x pass and
95 ms in ONet.

The module is pure: the engine runs the second pass (a CenterFace detector on the main one's model, sized by
rescan_geometry, floor RESCAN_FLOOR) on crowd frames that have candidates and are due a look, asks its FaceCheck
(detectors/onet.py) for the face probability of the candidates and proposals the 1.5x pass found (`to_check`), and
calls second_look() once per such frame before the tracker (remembered() on the frames between looks). Refused
candidates get an infinite new-track score (they may still continue a track a confident detection started); kept
ones and added proposals are shrunk by mask_boxes() so that the variant's mask scale masks them at FAINT_MASK_SCALE.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from imask.engine.detectors.base import Detections, DetectorGeometry, FloatArray
from imask.engine.detectors.geometry import concat

BoolArray = npt.NDArray[np.bool_]

# The second pass runs at this many times the main pass's linear scale (2.25x its pixels): 1.25x separated less
# (0.939 recall at 1.9% / 5.7% outside vs 0.942 at 1.5% / 5.0%) and 2x no better (0.939 at 1.5% / 4.9%) for 1.8x
# the cost of 1.5x.
RESCAN_FACTOR = 1.5
# A second-pass box speaks for a candidate it overlaps this much: 0.3 separated best (AUC 0.87 weighted; 0.4: 0.85,
# 0.5: 0.75, centre distance within 0.4 of a side: 0.86); the same overlap makes a second-pass box a new proposal
# when it has no main detection.
RESCAN_IOU = 0.3
# Second-pass boxes under this score count for nothing: a candidate without one is refused without asking ONet (the
# module doc's table: 0.03 asked ONet about 186 boxes a wider_dev picture, 0.04 about 121 for the same recall), and
# proposals start at PROPOSE_FLOOR (0.03 brought 57 a picture, 0.05 17, for the same faces).
RESCAN_FLOOR = 0.04
PROPOSE_FLOOR = 0.05
# The verdict: RESCAN_WEIGHT * ln(1.5x score + RESCAN_OFFSET) + CHECK_WEIGHT * logit(ONet) > KEEP_LOGIT (the
# logistic fit's weights; the module doc's table for the limits).
RESCAN_WEIGHT = 2.05
RESCAN_OFFSET = 0.01
CHECK_WEIGHT = 0.43
CHECK_CLIP = 1e-4  # ONet's probability is clipped to CHECK_CLIP..1-CHECK_CLIP before its logit
KEEP_LOGIT = -6.8
PROPOSE_LOGIT = -6.0
# Kept candidates are masked at this scale of their box instead of the variant's (1.5): 2.25x less area each, for 1
# face of 741 (0.943 -> 0.942 with the referee's check; 1.2: 0.943 at 2.0% / 6.0%). masks.MIN_MASK_SCALE: below 1.0
# a mask leaves part of the detector's box.
FAINT_MASK_SCALE = 1.0
# The landmark sanity gate's slack: landmarks may lie this far (share of the box side) outside the box.
LANDMARK_MARGIN = 0.1
# A camera's crowd frames get the full look (the 1.5x pass and ONet) on every LOOK_EVERY-th of them; in between each
# candidate takes the verdict of the box judged last time it overlaps at MEMORY_IOU (kept if it overlaps a kept one),
# and a candidate overlapping none is kept, the safe side, until the next look (`remembered`). On the sample clips
# (docs/BENCHMARKS.md) every 5th cost 1.07-1.14x the CPU of no second look between runs; every 10th is a third of a
# second at 30 fps.
LOOK_EVERY = 10
MEMORY_IOU = 0.3


@dataclass(frozen=True)
class LookPlan:
    """What one crowd frame's second look asks ONet about. `candidates` (see that function) and `rescan_scores`, the
    best second-pass score overlapping each detection (0: none at RESCAN_FLOOR), are per detection; `proposals` are
    the second-pass boxes no detection overlaps. ONet judges `to_check`: the candidates with a second-pass score
    (`checked`), then every proposal."""

    required: FloatArray
    candidates: BoolArray
    rescan_scores: FloatArray
    checked: BoolArray
    proposals: Detections
    to_check: FloatArray


@dataclass(frozen=True)
class SecondLook:
    """One frame's verdict. `detections`: the frame's detections followed by the proposals kept (`added` of them);
    per box of it: `keep` (False only for refused candidates), `required` (the score it needs to start a track; 0 for
    an added proposal) and the mask scale it gets (`FAINT_MASK_SCALE` for kept candidates and added proposals, NaN for
    the rest: the variant's own). `candidates` marks the frame's own faint candidates."""

    detections: Detections
    required: FloatArray
    candidates: BoolArray
    keep: BoolArray
    mask_scale: FloatArray
    added: int

    @property
    def refused(self) -> BoolArray:
        return self.candidates & ~self.keep

    def memory(self) -> LookMemory:
        """What the next frames of the camera remember of this look: the boxes judged and their verdicts."""
        judged = np.concatenate([self.candidates[:len(self.candidates) - self.added], np.ones(self.added, np.bool_)])
        return LookMemory(boxes=self.detections.boxes[judged], keep=self.keep[judged])


@dataclass(frozen=True)
class LookMemory:
    """A camera's last full look: the boxes it judged (candidates and added proposals), their verdicts, and how many
    crowd frames with candidates have passed since (`age`)."""

    boxes: FloatArray
    keep: BoolArray
    age: int = 0

    @property
    def due(self) -> bool:
        return self.age + 1 >= LOOK_EVERY

    def older(self) -> LookMemory:
        return replace(self, age=self.age + 1)


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


def rescan_scores(boxes: FloatArray, rescan: Detections, min_iou: float = RESCAN_IOU) -> FloatArray:
    """Per box: the best score of a second-pass box overlapping it at IoU >= min_iou (0 where none). A crowd brings
    hundreds of each, and each overlaps a handful: second-pass boxes sorted by left edge, each box is paired only with
    those whose left edge lies between its own right edge and, to its left, the widest box that could still reach
    min_iou with it (a full grid, or tracker.overlapping_pairs' x test over one, cost 2 ms for 730 x 260 boxes)."""
    out = np.zeros(boxes.shape[0], np.float32)
    if boxes.shape[0] == 0 or len(rescan) == 0:
        return out
    theirs = rescan.boxes.astype(np.float64)
    mine = boxes.astype(np.float64)
    order = np.argsort(theirs[:, 0], kind="stable")
    lefts = theirs[order, 0]
    # IoU >= min_iou needs the other box no wider than this one / min_iou (their intersection is at most this one's
    # width times the other's height, and must reach min_iou of the other's area).
    reach = np.minimum(float((theirs[:, 2] - theirs[:, 0]).max()), (mine[:, 2] - mine[:, 0]) / max(min_iou, 1e-3))
    lo = np.searchsorted(lefts, mine[:, 0] - reach, side="left")
    hi = np.searchsorted(lefts, mine[:, 2], side="right")
    counts = np.maximum(hi - lo, 0)
    rows = np.repeat(np.arange(mine.shape[0]), counts)
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    cols = order[np.arange(rows.shape[0]) + starts]
    a, b = mine[rows], theirs[cols]
    inter = (np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
             * np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None))
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    hit = inter >= min_iou * np.maximum(union, 1e-9)
    np.maximum.at(out, rows[hit], rescan.scores[cols[hit]].astype(np.float32))
    return out


def vouched(rescan_score: FloatArray, face_probability: FloatArray, limit: float) -> BoolArray:
    """The 1.5x pass and ONet together vouch for a face (the module doc's formula) beyond `limit`."""
    clipped = np.clip(face_probability.astype(np.float64), CHECK_CLIP, 1 - CHECK_CLIP)
    logit = RESCAN_WEIGHT * np.log(rescan_score.astype(np.float64) + RESCAN_OFFSET)
    return np.asarray(logit + CHECK_WEIGHT * np.log(clipped / (1 - clipped)) > limit, np.bool_)


def plan_look(dets: Detections, required: npt.NDArray[np.floating] | float, threshold: float,
              rescan: Detections) -> LookPlan:
    """The frame's candidates, their second-pass scores and the second-pass boxes (at RESCAN_FLOOR and up) that
    overlap no detection at RESCAN_IOU: what ONet is to judge (LookPlan)."""
    cand = candidates(dets, required, threshold)
    strong = rescan.scores >= RESCAN_FLOOR
    rescan = rescan.take(strong)
    scores = rescan_scores(dets.boxes, rescan)
    new = (rescan_scores(rescan.boxes, dets) == 0) & (rescan.scores >= PROPOSE_FLOOR)
    proposals = rescan.take(new)
    checked = cand & (scores > 0)
    return LookPlan(required=_per_box(required, len(dets)), candidates=cand, rescan_scores=scores, checked=checked,
                    proposals=proposals,
                    to_check=np.concatenate([dets.boxes[checked], proposals.boxes]).reshape(-1, 4).astype(np.float32))


def second_look(dets: Detections, plan: LookPlan, face_probability: FloatArray, upright: bool = True) -> SecondLook:
    """The verdict on one crowd frame (`plan` from plan_look, `face_probability` ONet's for plan.to_check):
    candidates are kept when vouched for beyond KEEP_LOGIT, proposals added when vouched for beyond PROPOSE_LOGIT,
    and, for an `upright` picture, their landmarks are in face order (a camera detected turned, engine/
    orientation.py, has its faces' landmarks turned in frame pixels: pass upright=False). Every other detection is
    left as it is."""
    checked = int(plan.checked.sum())
    keep = ~plan.candidates
    keep[plan.checked] = vouched(plan.rescan_scores[plan.checked], face_probability[:checked], KEEP_LOGIT)
    proposals = plan.proposals
    add = vouched(proposals.scores, face_probability[checked:], PROPOSE_LOGIT)
    if upright:
        keep &= ~plan.candidates | landmarks_in_face_order(dets)
        add &= landmarks_in_face_order(proposals)
    added = proposals.take(add)
    return _verdict(dets, plan.required, plan.candidates, keep, added)


def remembered(dets: Detections, required: npt.NDArray[np.floating] | float, threshold: float,
               memory: LookMemory) -> SecondLook:
    """The verdict between two full looks (see LOOK_EVERY): each candidate overlapping a box `memory` judged takes
    its verdict (kept when it overlaps a kept one), a candidate overlapping none is kept. Nothing is added."""
    cand = candidates(dets, required, threshold)
    # 2: overlaps a kept box, 1: only refused ones, 0: none.
    judged = Detections(boxes=memory.boxes, scores=np.where(memory.keep, 2.0, 1.0).astype(np.float32),
                        landmarks=np.zeros((len(memory.boxes), 5, 2), np.float32))
    verdict = rescan_scores(dets.boxes[cand], judged, MEMORY_IOU)
    keep = ~cand
    keep[cand] = verdict != 1.0
    return _verdict(dets, _per_box(required, len(dets)), cand, keep, Detections())


def _per_box(required: npt.NDArray[np.floating] | float, count: int) -> FloatArray:
    """The score each of `count` detections needs to start a track, from one value or one per box."""
    return np.broadcast_to(np.asarray(required, np.float32), (count,)).astype(np.float32)


def _verdict(dets: Detections, required: FloatArray, cand: BoolArray, keep: BoolArray,
             added: Detections) -> SecondLook:
    count = len(added)
    faint = np.concatenate([cand & keep, np.ones(count, np.bool_)])
    return SecondLook(
        detections=concat(dets, added),
        required=np.concatenate([required, np.zeros(count, np.float32)]).astype(np.float32),
        candidates=np.concatenate([cand, np.zeros(count, np.bool_)]),
        keep=np.concatenate([keep, np.ones(count, np.bool_)]),
        mask_scale=np.where(faint, np.float32(FAINT_MASK_SCALE), np.float32(np.nan)).astype(np.float32),
        added=count)


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
