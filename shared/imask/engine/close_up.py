"""Large faces: the close-up pass, and the check a large box under the large-face bar must pass to be masked.

At the variant's pixel budget a face filling 40-90% of a doorbell or kiosk picture is 170-430 px tall, beyond the
sizes CenterFace scores surely: on photos_gt close-ups it scores >= 0.5 for 0.885 of faces at the full budget and 0.3
for the same faces upside down, while a second pass at 192x192 scores every one of 130 at >= 0.5 (upright). So when a
frame's own pass is unsure of its large faces (nothing at the threshold at all, or a large box scoring between the
floor and the large-face bar), the picture, turned as its camera's orientation says, is read once more at
CLOSE_UP_BUDGET pixels; large boxes that pass scores at CLOSE_UP_FLOOR or more, with their landmarks in face order,
join the frame's detections. Frames with confident faces, crowds included, skip it.

Faces enlarged from low-resolution pictures (wider_dev@closeup: WIDER faces of 24-60 px filling 40-90% of a 416 px
frame, what a low-resolution doorbell sends) score lower at every input: at most 0.74 of them reach 0.2 at any input
from 64 to 192 px, and a grey-padded canvas or ONet over a grid of windows do no better. The large-face bar alone (0.5,
which keeps round things that fill the frame unmasked) masks 0.674 of them. So a large box between the threshold and
the bar is judged (`large_face_vouched`): it is masked when its landmarks are in face order and MTCNN's ONet
(detectors/onet.py) gives its crop at least LARGE_FACE_CHECK. `imask eval` (recall; by the face's fill of the
frame), against deface 1.5 with its defaults on the same pictures:

    ONet's bar (LARGE_FACE_CHECK)     wider_dev@closeup  40% / 65% / 90%         clear / heavily blurred faces
    none (the large-face bar alone)   0.673              0.717 / 0.683 / 0.608   0.892 / 0.16
    0.5                               0.722              0.773 / 0.745 / 0.665   0.921 / 0.20
    0.1                               0.766              0.825 / 0.786 / 0.724   0.946 / 0.26
    0.03                              0.777                                      0.951 / 0.28
    any (landmarks alone)             0.787                                      0.953 / 0.30
    deface 1.5, defaults              0.729              0.794 / 0.735 / 0.668

photos_gt close-ups (upright and upside down) are 1.0, wider_dev 0.9595 and no face-free picture is over 1% masked,
in every row. ONet alone is a weak judge of a crop filling the frame: on the middle 80% of the face-free pictures it
gives the moon 0.002-0.005, a ball 0.03, a cat's head 0.04, but a coffee cup 0.21, a wall clock 0.35 and a colour
chart 0.41. On those pictures CenterFace puts no large box at 0.2 or more at all, so no bar costs anything there;
0.1 refuses the moon and the cat (what the bar of 0.5 was for) and still beats deface at every fill.

The module is pure: the engine runs the pass (the main detector's model at close_up_geometry) and calls
wants_close_up() before and close_up_faces() after, and asks its FaceCheck about the boxes unsure_large() marks.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from imask.engine.context import small_boxes
from imask.engine.detectors.base import Detections, DetectorGeometry, FloatArray
from imask.engine.second_look import BoolArray, landmarks_in_face_order
from imask.types import Image

# The pass's pixel budget (192x192): 1/6 of a 720p frame's 640x352 pass, 1/6 of a 416x416 photo's 480x480.
CLOSE_UP_BUDGET = 192 * 192
# The pass's large boxes join the frame's detections from this score (the default threshold); under the large-face
# bar they must then be vouched for like the full pass's own.
CLOSE_UP_FLOOR = 0.2
# What counts as a sure close-up face, unjudged: the large-face bar. The orientation estimate weighs only these.
CLOSE_UP_SURE = 0.5
# ONet's face probability a large box under the large-face bar needs (with its landmarks in face order) to be masked
# (the module doc's table).
LARGE_FACE_CHECK = 0.1
# Large boxes of the main pass scoring at least this, and under the large-face bar, make the frame unsure.
UNSURE_FLOOR = 0.05


def close_up_geometry(geometry: DetectorGeometry) -> DetectorGeometry:
    """The whole frame at CLOSE_UP_BUDGET pixels, never enlarged, one pass (no mirror, no tiles)."""
    return replace(geometry, pixel_budget=CLOSE_UP_BUDGET, max_upscale=1.0, max_downscale=0.0, flip=False, tile=0)


def wants_close_up(image: Image, dets: Detections, threshold: float, large_face_fraction: float,
                   large_face_threshold: float) -> bool:
    """The frame's own pass is unsure of its large faces: it found nothing at `threshold`, or it has a large box
    (over `large_face_fraction` of the shorter side) scoring between UNSURE_FLOOR and `large_face_threshold`."""
    scores = dets.scores
    if not (scores >= threshold).any():
        return True
    large = ~small_boxes(image, dets, large_face_fraction)
    return bool((large & (scores >= UNSURE_FLOOR) & (scores < large_face_threshold)).any())


def close_up_faces(picture: Image, close: Detections, large_face_fraction: float,
                   score: float = CLOSE_UP_FLOOR) -> Detections:
    """The close-up pass's faces worth adding: large, scoring `score` or more, landmarks in face order. In the
    coordinates of the `picture` the pass read (turned upright where its camera is not)."""
    keep = (close.scores >= score) & ~small_boxes(picture, close, large_face_fraction)
    if keep.any():
        keep &= landmarks_in_face_order(close)
    if keep.all():
        return close
    return close.take(keep)


def unsure_large(dets: Detections, large: BoolArray, floor: float, large_face_threshold: float) -> BoolArray:
    """Per box: `large` against the frame (context.small_boxes' complement) and scoring between `floor` and the
    large-face bar, so judged before it may start a track."""
    return np.asarray(large & (dets.scores >= floor) & (dets.scores < large_face_threshold))


def large_face_vouched(unsure: Detections, probability: FloatArray) -> BoolArray:
    """Per unsure large box: its landmarks in face order and ONet's face probability at least LARGE_FACE_CHECK."""
    return np.asarray(landmarks_in_face_order(unsure) & (probability >= LARGE_FACE_CHECK))
