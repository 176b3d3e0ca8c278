"""Large faces (imask.engine.close_up): a face filling the frame, which the full pass scores under the large-face
bar, is found again at a small input and masked; a large box under the bar is masked when its landmarks and ONet vouch
for it; a round thing filling the frame is not, even when the full pass hands it the same score; every pass, every
face it adds and every large box judged is counted, and a check that cannot answer fails the frame closed."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import similarity
from imask.engine import FrameInput, MaskingEngine
from imask.engine.close_up import (
    CLOSE_UP_BUDGET,
    CLOSE_UP_FLOOR,
    CLOSE_UP_SURE,
    LARGE_FACE_CHECK,
    close_up_faces,
    close_up_geometry,
    large_face_vouched,
    unsure_large,
    wants_close_up,
)
from imask.engine.context import small_boxes
from imask.engine.detectors.base import BatchTimings, Detections
from imask.engine.detectors.centerface.detector import CenterFaceDetector
from imask.engine.detectors.geometry import detector_size
from imask.evaluation.datasets import open_dataset
from imask.evaluation.transforms import open_spec
from imask.ops import metrics
from imask.types import Image

FACE_ORDER = np.array([[0.33, 0.38], [0.72, 0.38], [0.52, 0.56], [0.38, 0.76], [0.68, 0.76]], np.float32)
BAND_SCORE = 0.45  # under the large-face bar (0.5), over the threshold (0.2)


def _dets(boxes: list[list[float]], scores: list[float], unit: np.ndarray = FACE_ORDER) -> Detections:
    b = np.array(boxes, np.float32).reshape(-1, 4)
    landmarks = (b[:, None, :2] + unit[None] * (b[:, 2:] - b[:, :2])[:, None, :]).astype(np.float32)
    return Detections(boxes=b, scores=np.array(scores, np.float32), landmarks=landmarks)


def _close_up_of_face(image: Image, engine: MaskingEngine, fill: float, size: int = 416) -> Image:
    """The picture's surest face enlarged until it fills `fill` of a size x size frame (a doorbell camera)."""
    found = engine.detector.detect([image], 0.3)[0]
    x1, y1, x2, y2 = found.boxes[int(np.argmax(found.scores))]
    side = max(x2 - x1, y2 - y1) / fill
    scale = size / side
    x0, y0 = (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2
    matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def upside_down_close_up(engine: MaskingEngine, astronaut_image: Image) -> Image:
    return np.ascontiguousarray(np.rot90(_close_up_of_face(astronaut_image, engine, 0.9), 2))


@pytest.fixture(scope="module")
def round_things() -> dict[str, Image]:
    samples = open_dataset("builtin:no-faces").samples
    # Round things ONet refuses (a wall clock's face it gives 0.35: were CenterFace to take one for a face, with its
    # landmarks in face order, it would be masked; on the real picture it does not).
    return {s.name: s.image() for s in samples if s.name in ("ball", "coins.png", "full-moon", "chelsea.png@close")}


# --- the rule ------------------------------------------------------------------------------------------------------

def test_only_frames_unsure_of_their_large_faces_want_the_pass() -> None:
    frame = np.zeros((400, 400, 3), np.uint8)
    assert wants_close_up(frame, Detections(), 0.2, 0.25, 0.5)  # nothing found at all
    assert wants_close_up(frame, _dets([[50, 50, 350, 350]], [BAND_SCORE]), 0.2, 0.25, 0.5)  # large, in the band
    assert not wants_close_up(frame, _dets([[50, 50, 350, 350]], [0.8]), 0.2, 0.25, 0.5)  # large and sure
    assert not wants_close_up(frame, _dets([[10, 10, 40, 40]] * 3, [0.6, 0.3, 0.04]), 0.2, 0.25, 0.5)  # small faces
    assert not wants_close_up(frame, _dets([[10, 10, 40, 40], [50, 50, 350, 350]], [0.6, 0.03]), 0.2, 0.25, 0.5)


def test_the_pass_adds_only_large_boxes_over_its_floor_in_face_order() -> None:
    picture = np.zeros((416, 416, 3), np.uint8)
    boxes = [[40, 40, 380, 380], [60, 60, 360, 360], [10, 10, 50, 50], [30, 30, 390, 390], [50, 50, 370, 370]]
    upside_down = FACE_ORDER[::-1].copy()
    close = _dets(boxes, [0.9, BAND_SCORE, 0.9, 0.9, CLOSE_UP_FLOOR - 0.01])
    close.landmarks[3] = (np.array(boxes[3][:2], np.float32) + upside_down * 360)
    kept = close_up_faces(picture, close, 0.25)
    assert kept.scores.tolist() == pytest.approx([0.9, BAND_SCORE])
    assert kept.boxes.tolist() == boxes[:2]
    # What an orientation estimate weighs: the sure ones alone.
    assert close_up_faces(picture, close, 0.25, CLOSE_UP_SURE).scores.tolist() == pytest.approx([0.9])


def test_unsure_large_boxes_are_the_band_between_the_floor_and_the_bar() -> None:
    frame = np.zeros((400, 400, 3), np.uint8)
    dets = _dets([[50, 50, 350, 350], [60, 60, 340, 340], [70, 70, 330, 330], [10, 10, 40, 40]],
                 [BAND_SCORE, 0.6, 0.1, BAND_SCORE])
    large = ~small_boxes(frame, dets, 0.25)
    assert unsure_large(dets, large, 0.2, 0.5).tolist() == [True, False, False, False]


def test_a_large_box_is_vouched_for_by_onet_and_its_landmarks_together() -> None:
    dets = _dets([[50, 50, 350, 350]] * 3, [BAND_SCORE] * 3)
    dets.landmarks[2] = np.array([50, 50], np.float32) + FACE_ORDER[::-1] * 300  # upside down
    probability = np.array([LARGE_FACE_CHECK, LARGE_FACE_CHECK / 2, 0.99], np.float32)
    assert large_face_vouched(dets, probability).tolist() == [True, False, False]


def test_the_pass_reads_a_small_input() -> None:
    from imask.engine import default_variant

    geometry = close_up_geometry(default_variant().geometry)
    width, height = detector_size(416, 416, geometry)
    assert width * height <= CLOSE_UP_BUDGET * 1.1 and (geometry.flip, geometry.tile, geometry.max_upscale) == (
        False, 0, 1.0)
    assert detector_size(1280, 720, geometry)[0] <= 256


# --- on real pixels ------------------------------------------------------------------------------------------------

def test_an_upside_down_close_up_is_found_by_the_pass_alone(engine: MaskingEngine,
                                                            upside_down_close_up: Image) -> None:
    full = engine.detector.detect([upside_down_close_up], 0.03)[0]
    assert 0.2 <= float(full.scores.max()) < 0.5, "the full pass should score this face under the large-face bar"
    assert isinstance(engine.detector, CenterFaceDetector)
    close = engine.detector.with_geometry(close_up_geometry(engine.detector.geometry))
    # Landmarks are read in the turned picture's pixels: the pass runs on the picture as its camera's orientation
    # says; here, the orientation step is off and the face is upside down, so only score and size decide.
    found = close.detect([upside_down_close_up], CLOSE_UP_FLOOR)[0]
    assert len(found) >= 1 and float(found.scores.max()) >= CLOSE_UP_SURE


# photos_gt close-ups (a face enlarged to fill 65-90% of a 416 px frame) that the full pass scores under the
# large-face bar: 0.23, 0.47 and 0.16 at the time of writing.
MISSED_CLOSE_UPS = ("2007_007763.jpg@closeup0-90", "2008_002079.jpg@closeup4-65", "2008_007676.jpg@closeup6-90")


def test_engine_masks_close_ups_the_full_pass_lets_go(engine: MaskingEngine, data_dir: Path) -> None:
    samples = {s.name: s for s in open_spec(str(data_dir / "photos_gt@closeup")).samples if s.name in MISSED_CLOSE_UPS}
    assert sorted(samples) == sorted(MISSED_CLOSE_UPS)
    variant = engine.variant.with_overrides(orientation="upright")  # the close-up pass alone decides
    # Neither the pass nor ONet's large-face check (which a second look's engine also has).
    without = MaskingEngine(variant.with_overrides(close_up=False, second_look=False), engine.detector)
    with_pass = MaskingEngine(variant, engine.detector)
    for name, sample in samples.items():
        picture = sample.image()
        subject = max((f for f in sample.faces or [] if f.valid), key=lambda f: f.size)
        x, y, w, h = (int(v) for v in subject.box)
        face = slice(y + h // 4, y + 3 * h // 4), slice(x + w // 4, x + 3 * w // 4)  # eyes, nose and mouth
        assert float(engine.detector.detect([picture], 0.03)[0].scores.max()) < 0.5, name
        assert np.array_equal(without.process([FrameInput(name, 0, picture)])[0].image[face], picture[face]), name
        passes, added = metrics.CLOSE_UP_PASSES._value.get(), metrics.CLOSE_UP_FACES._value.get()
        result = with_pass.process([FrameInput(name, 0, picture)])[0]
        assert similarity(result.image[face], picture[face]) < 0.9, f"{name}: face left visible"
        assert metrics.CLOSE_UP_PASSES._value.get() == passes + 1
        assert metrics.CLOSE_UP_FACES._value.get() >= added + 1


class BandDetector:
    """The real detector, plus one large box over the middle of each frame at BAND_SCORE (a round thing the full
    pass takes half for a face): what the close-up pass must refuse."""

    def __init__(self, inner: CenterFaceDetector) -> None:
        self.inner = inner
        self.run_options = inner.run_options
        self.geometry = inner.geometry

    def with_geometry(self, geometry: object) -> CenterFaceDetector:
        return self.inner.with_geometry(geometry)  # type: ignore[arg-type]

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        out = []
        for frame, found in zip(frames, self.inner.detect(frames, threshold, timings), strict=True):
            h, w = frame.shape[:2]
            band = _dets([[w * 0.1, h * 0.1, w * 0.9, h * 0.9]], [BAND_SCORE])
            out.append(Detections(boxes=np.concatenate([found.boxes, band.boxes]),
                                  scores=np.concatenate([found.scores, band.scores]),
                                  landmarks=np.concatenate([found.landmarks, band.landmarks])))
        return out


def test_round_things_at_the_band_score_are_not_masked(engine: MaskingEngine, round_things: dict[str, Image],
                                                       astronaut_image: Image) -> None:
    assert isinstance(engine.detector, CenterFaceDetector)
    eng = MaskingEngine(engine.variant.with_overrides(orientation="upright"), BandDetector(engine.detector))
    assert len(round_things) == 4
    for name, picture in round_things.items():
        added = metrics.CLOSE_UP_FACES._value.get()
        result = eng.process([FrameInput(name, 0, picture)])[0]
        assert result.faces == [] and np.array_equal(result.image, picture), f"{name} was masked"
        assert metrics.CLOSE_UP_FACES._value.get() == added
    # The same band box over a real close-up face is masked: the pass confirms it.
    face = _close_up_of_face(astronaut_image, engine, 0.75)
    assert len(eng.process([FrameInput("face", 0, face)])[0].faces) >= 1


def _checks(verdict: str) -> float:
    return float(metrics.LARGE_FACE_CHECKS.labels(verdict)._value.get())


def test_a_large_box_in_the_band_is_masked_over_a_face_and_refused_over_round_things(
        engine: MaskingEngine, round_things: dict[str, Image], astronaut_image: Image) -> None:
    """Without the close-up pass, the band box alone decides: ONet and its landmarks judge it."""
    assert isinstance(engine.detector, CenterFaceDetector)
    variant = engine.variant.with_overrides(orientation="upright", close_up=False)
    eng = MaskingEngine(variant, BandDetector(engine.detector))
    face = _close_up_of_face(astronaut_image, engine, 0.75)
    kept = _checks("kept")
    result = eng.process([FrameInput("face", 0, face)])[0]
    assert _checks("kept") >= kept + 1
    h, w = face.shape[:2]
    middle = slice(int(h * 0.35), int(h * 0.65)), slice(int(w * 0.35), int(w * 0.65))
    assert similarity(result.image[middle], face[middle]) < 0.9, "the face was left visible"
    for name, picture in round_things.items():
        refused = _checks("refused")
        result = eng.process([FrameInput(name, 0, picture)])[0]
        assert result.faces == [] and np.array_equal(result.image, picture), f"{name} was masked"
        assert _checks("refused") == refused + 1, name


class BrokenCheck:
    def face_probability(self, image: Image, boxes: np.ndarray) -> np.ndarray:
        raise RuntimeError("ONet session lost")


def test_a_large_face_check_that_fails_obscures_the_frame(engine: MaskingEngine, astronaut_image: Image) -> None:
    assert isinstance(engine.detector, CenterFaceDetector)
    variant = engine.variant.with_overrides(orientation="upright", close_up=False)
    eng = MaskingEngine(variant, BandDetector(engine.detector))
    eng._face_check = BrokenCheck()  # type: ignore[assignment]
    face = _close_up_of_face(astronaut_image, engine, 0.75)
    before = metrics.FRAMES_FAIL_CLOSED.labels("detector_error")._value.get()
    result = eng.process([FrameInput("face", 0, face)])[0]
    assert result.fail_closed and result.fail_closed_reason == "detector_error"
    assert similarity(result.image, face) < 0.5
    assert metrics.FRAMES_FAIL_CLOSED.labels("detector_error")._value.get() == before + 1


class SlowCheck:
    """ONet that hangs: longer than the engine's timeout."""

    def __init__(self) -> None:
        self.calls = 0

    def face_probability(self, image: Image, boxes: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(3.0)
        return np.ones(len(boxes), np.float32)


def test_a_large_face_check_that_overruns_the_timeout_obscures_the_frame(engine: MaskingEngine,
                                                                         astronaut_image: Image) -> None:
    assert isinstance(engine.detector, CenterFaceDetector)
    variant = engine.variant.with_overrides(orientation="upright", close_up=False)
    eng = MaskingEngine(variant, BandDetector(engine.detector), detector_timeout_s=1.5)
    slow = SlowCheck()
    eng._face_check = slow  # type: ignore[assignment]
    face = _close_up_of_face(astronaut_image, engine, 0.75)
    result = eng.process([FrameInput("face", 0, face)])[0]
    assert slow.calls == 1
    assert result.fail_closed and result.fail_closed_reason == "detector_timeout"
    assert similarity(result.image, face) < 0.5
    assert not eng.healthy  # until the abandoned check returns
    assert eng._inflight is not None
    eng._inflight.exception(timeout=30)
    assert eng.healthy
    eng.close()
