"""Crowd context (imask.engine.context): faint boxes are masked in crowds only, never in portraits or textures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import textured
from imask.engine import FrameInput, MaskingEngine, default_variant
from imask.engine.context import ContextRule, is_crowd
from imask.engine.detectors.base import Detections
from imask.engine.masks import coverage_map
from imask.types import Image

RULE = ContextRule(threshold=0.03, crowd_floor=0.1, crowd_count=5, large_face_fraction=0.25)


def _dets(scores: list[float], side: float = 20.0) -> Detections:
    boxes = np.array([[10 * i, 10, 10 * i + side, 10 + side] for i in range(len(scores))], np.float32).reshape(-1, 4)
    return Detections(boxes=boxes, scores=np.array(scores, np.float32), landmarks=np.zeros((len(scores), 5, 2),
                                                                                            np.float32))


def test_a_crowd_is_five_small_boxes_at_the_floor() -> None:
    frame = np.zeros((400, 400, 3), np.uint8)
    assert is_crowd(frame, _dets([0.1] * 5), RULE)
    assert not is_crowd(frame, _dets([0.1] * 4 + [0.09] * 50), RULE)  # faint boxes alone never make a crowd
    assert not is_crowd(frame, _dets([0.9] * 5, side=150), RULE)  # large boxes are not crowd faces
    assert not is_crowd(frame, _dets([]), RULE)


class FixedDetections:
    """A detector that returns the given boxes for every frame (and honours the threshold it is asked for)."""

    def __init__(self, dets: Detections) -> None:
        self.dets = dets
        self.asked: list[float] = []

    def detect(self, frames: list[Image], threshold: float, timings: object = None) -> list[Detections]:
        self.asked.append(threshold)
        keep = self.dets.scores >= threshold
        return [Detections(self.dets.boxes[keep], self.dets.scores[keep], self.dets.landmarks[keep]) for _ in frames]


@pytest.mark.parametrize(("confident", "expected"), [(5, 6), (4, 4)])
def test_a_faint_face_is_masked_in_a_crowd_only(confident: int, expected: int) -> None:
    frame = textured(400, 640, seed=1)
    detector = FixedDetections(_dets([0.6] * confident + [0.04]))
    engine = MaskingEngine(default_variant().with_overrides(orientation="upright"), detector)
    result = engine.process([FrameInput("cam", 0, frame)])[0]
    assert detector.asked == [0.03]  # read down to the context threshold, once
    assert len(result.faces) == expected
    engine.close()


def test_the_portrait_gets_no_faint_extra_masks(engine: MaskingEngine, astronaut_image: Image) -> None:
    faint = engine.detector.detect([astronaut_image], 0.03)[0]
    assert len(faint) > 1  # faint boxes are there ...
    assert len(engine.process([FrameInput("portrait", 0, astronaut_image)])[0].faces) == 1  # ... and stay unmasked


def test_faint_boxes_do_not_reach_frames_that_are_not_crowds(engine: MaskingEngine) -> None:
    gravel = _textures()
    result = engine.process([FrameInput("gravel", 0, gravel)])[0]
    boxes = np.array([f.box for f in result.faces], np.float32).reshape(-1, 4)
    assert coverage_map(gravel.shape[0], gravel.shape[1], boxes, engine.variant.mask).mean() <= 0.01


def _textures() -> Image:
    from skimage import data

    return cv2.cvtColor(data.gravel(), cv2.COLOR_GRAY2BGR)  # type: ignore[no-untyped-call]
