"""Crowd context: a frame that shows a crowd is searched harder for more faces.

On WIDER FACE crowds most faces the default misses are small and blurred and still score 0.02-0.1 (docs/
EVALUATION.md); a global threshold that low masks textures (gravel, a motorcycle's bolts) in pictures with no
face. A faint detection is far likelier a face in a frame that already holds several, and over-masking a crowd
costs little next to leaving a face in it. So in a frame with at least `crowd_count` small boxes scoring
`crowd_floor` or more (the 22 face-free test pictures have at most 2; a crowd of small faces often has no single
confident one, so confidence is not asked), a new small face needs only `threshold`. Other frames keep the
variant's threshold: face-free pictures stay as clean as before, and a portrait gets no extra masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imask.engine.detectors.base import Detections
from imask.types import Image


@dataclass(frozen=True)
class ContextRule:
    threshold: float  # what a new small face needs in a crowd (0: the rule is off)
    crowd_floor: float
    crowd_count: int
    large_face_fraction: float  # boxes above this fraction of the shorter side are never anchors

    @property
    def enabled(self) -> bool:
        return self.threshold > 0


def small_boxes(image: Image, dets: Detections, large_face_fraction: float) -> npt.NDArray[np.bool_]:
    sides = np.maximum(dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1])
    return np.asarray(sides <= large_face_fraction * min(image.shape[:2]))


def is_crowd(image: Image, dets: Detections, rule: ContextRule) -> bool:
    small = small_boxes(image, dets, rule.large_face_fraction)
    return int((small & (dets.scores >= rule.crowd_floor)).sum()) >= rule.crowd_count
