"""Orientation: turning pictures, mapping detections back, choosing a camera's turn, and the engine using it."""

from __future__ import annotations

import numpy as np
import pytest

from imask.engine import FrameInput, MaskingEngine
from imask.engine.detectors.base import Detections
from imask.engine.orientation import SURE_FACES, choose, evidence, turn, turn_back, upright_is_sure
from imask.engine.tracker import iou_matrix
from imask.engine.variants import default_variant
from imask.types import Image


def _dets(boxes: list[list[float]], scores: list[float]) -> Detections:
    box_array = np.asarray(boxes, np.float32).reshape(-1, 4)
    centres = np.stack([(box_array[:, 0] + box_array[:, 2]) / 2, (box_array[:, 1] + box_array[:, 3]) / 2], axis=1)
    return Detections(boxes=box_array, scores=np.asarray(scores, np.float32),
                      landmarks=np.repeat(centres[:, None, :], 5, axis=1).astype(np.float32))


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_boxes_found_on_a_turned_picture_map_back_to_the_original(turns: int) -> None:
    image = np.zeros((120, 200, 3), np.uint8)
    image[20:70, 30:70] = 255  # a white "face" at x 30..70, y 20..70
    turned = turn(image, turns)
    ys, xs = np.nonzero(turned[:, :, 0])
    found = _dets([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], [0.9])
    back = turn_back(found, turns, 120, 200)
    assert np.allclose(back.boxes, [[30, 20, 70, 70]])
    assert np.allclose(back.landmarks[0, 0], [50, 45])  # points follow the boxes
    assert back.scores.tolist() == pytest.approx([0.9])


def test_a_turn_wins_only_with_clearly_more_evidence() -> None:
    assert evidence(_dets([[0, 0, 1, 1]] * 3, [0.9, 0.5, 0.2])) == pytest.approx(1.4)  # 0.2 is no evidence
    none = _dets([], [])

    def passes(*scores: list[float]) -> dict[int, Detections]:
        return {t: _dets([[0, 0, 1, 1]] * len(s), s) for t, s in enumerate(scores)}

    assert choose(passes([0.9], [0.95], [], [])) == 0  # not 1.2x upright's evidence
    assert choose(passes([0.5], [0.35], [0.9, 0.6], [])) == 2
    assert choose(passes([], [0.37], [], [])) == 0  # one box under 0.4: no turn on so little
    assert choose({t: none for t in range(4)}) == 0
    # A crowd of faint faces: no box at 0.3 anywhere, so the turn where 5+ boxes reach 0.1 with twice upright's sum.
    assert choose(passes([0.12, 0.12], [0.15] * 6, [], [0.11])) == 1
    assert choose(passes([0.12] * 5, [0.15] * 6, [], [])) == 0  # 0.9 is not twice 0.6
    assert choose(passes([], [0.25] * 4, [], [])) == 0  # too few to be a crowd
    assert choose(passes([0.31], [0.15] * 20, [], [])) == 0  # evidence elsewhere: the faint rule does not apply
    assert upright_is_sure(_dets([[0, 0, 1, 1]] * SURE_FACES, [0.8] * SURE_FACES))
    assert not upright_is_sure(_dets([[0, 0, 1, 1]] * SURE_FACES, [0.8] * (SURE_FACES - 1) + [0.5]))


def _found(engine: MaskingEngine, camera: str, image: Image, rotation: int | None = None) -> tuple[int, np.ndarray]:
    result = engine.process([FrameInput(camera, 0, image, rotation)])[0]
    assert not result.fail_closed
    return result.orientation, np.array([f.box for f in result.faces], np.float64).reshape(-1, 4)


def test_a_configured_rotation_finds_the_face_upright_and_reports_it(engine: MaskingEngine,
                                                                       astronaut_image: Image) -> None:
    _, upright = _found(engine, "upright", astronaut_image)
    assert len(upright) == 1
    for turns in (1, 2, 3):
        sideways = turn(astronaut_image, turns)
        expected = turn_back(_dets(upright.tolist(), [1.0]), 4 - turns, *astronaut_image.shape[:2]).boxes
        orientation, boxes = _found(engine, f"cam-{turns}", sideways, rotation=(4 - turns) * 90)
        assert orientation == (4 - turns) * 90
        assert len(boxes) == 1 and iou_matrix(boxes, expected.astype(np.float64))[0, 0] > 0.9


def test_an_upside_down_crowd_is_found_turned(engine: MaskingEngine, astronaut_image: Image) -> None:
    """Six small faces upside down: the upright pass is unsure, the estimate turns the picture, and every face
    the upright picture shows is found where it is in the turned one."""
    import cv2

    face = cv2.resize(astronaut_image[40:200, 160:290], (52, 64))
    crowd = np.full((300, 420, 3), 90, np.uint8)
    spots = [(20 + 130 * (k % 3), 40 + 140 * (k // 3)) for k in range(6)]
    for x, y in spots:
        crowd[y:y + 64, x:x + 52] = face
    auto = MaskingEngine(default_variant(), engine.detector)
    try:
        orientation, boxes = _found(auto, "ceiling", turn(crowd, 2))
    finally:
        auto.close()
    truth = np.array([[420 - x - 52, 300 - y - 64, 420 - x, 300 - y] for x, y in spots], np.float64)
    assert orientation == 180
    assert (iou_matrix(truth, boxes).max(axis=1) > 0.4).all()


def test_orientation_upright_variants_take_pictures_as_they_come(engine: MaskingEngine,
                                                                    astronaut_image: Image) -> None:
    plain = MaskingEngine(default_variant().with_overrides(orientation="upright"), engine.detector)
    try:
        orientation, _ = _found(plain, "plain", turn(astronaut_image, 2))
    finally:
        plain.close()
    assert orientation == 0
    with pytest.raises(ValueError, match="orientation"):
        default_variant().with_overrides(orientation="sideways")
