"""Close-up pass: a face that fills much of the frame is read again at a small input, where it is of a size the
detector knows.

At the variant's pixel budget a face filling 40-90% of a doorbell or kiosk picture is 170-430 px tall, beyond the
sizes CenterFace scores surely: on photos_gt close-ups it scores >= 0.5 for 0.885 of faces at the full budget (the
large-face rule's bar, which keeps the moon at 0.28 and a cat at 0.08 unmasked) and 0.3 for the same faces upside
down, while a second pass at 192x192 scores every one of 130 at >= 0.5 (upright) and puts no box of 0.2 or more on
anything else large. So when a frame's own pass is unsure of its large faces (nothing at the threshold at all, or
a large box scoring between the floor and the large-face bar), the picture, turned as its camera's orientation says,
is read once more at CLOSE_UP_BUDGET pixels; large boxes that pass scores at CLOSE_UP_SCORE or more, with their
landmarks in face order, are added to the frame's detections. Frames with confident faces, crowds included, skip it.

The module is pure: the engine runs the pass (the main detector's model at close_up_geometry) and calls
wants_close_up() before and close_up_faces() after.
"""

from __future__ import annotations

from dataclasses import replace

from imask.engine.context import small_boxes
from imask.engine.detectors.base import Detections, DetectorGeometry
from imask.engine.second_look import landmarks_in_face_order
from imask.types import Image

# The pass's pixel budget (192x192): 1/6 of a 720p frame's 640x352 pass, 1/6 of a 416x416 photo's 480x480.
CLOSE_UP_BUDGET = 192 * 192
# A close-up box is added when it scores this much: what the large-face rule asks of the full pass.
CLOSE_UP_SCORE = 0.5
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


def close_up_faces(picture: Image, close: Detections, large_face_fraction: float) -> Detections:
    """The close-up pass's faces worth adding: large, scoring CLOSE_UP_SCORE or more, landmarks in face order. In
    the coordinates of the `picture` the pass read (turned upright where its camera is not)."""
    keep = (close.scores >= CLOSE_UP_SCORE) & ~small_boxes(picture, close, large_face_fraction)
    if keep.any():
        keep &= landmarks_in_face_order(close)
    if keep.all():
        return close
    return close.take(keep)
