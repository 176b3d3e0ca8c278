"""Picture range (imask.engine.picture_range): dithered and noise-drowned frames are recognised and brought back
into the detector's range, error-diffused ones read two ways; ordinary pictures are left alone."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image as PilImage

from imask.engine import MaskingEngine
from imask.engine.detectors.base import BatchTimings, Detections, DetectorGeometry
from imask.engine.detectors.centerface.detector import CenterFaceDetector
from imask.engine.picture_range import UNREADABLE, detector_input, measure, second_reading, verdict
from imask.engine.tracker import iou_matrix
from imask.types import Image

SIDE = 176  # the astronaut at this size on a 640x360 frame: a 32 px face, which CenterFace misses once dithered
ORIGIN = (200, 100)


def _grey(image: Image) -> Image:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _one_bit(image: Image) -> Image:
    """Floyd-Steinberg to black and white, as `imask eval`'s dither transform does."""
    bits = np.asarray(PilImage.fromarray(_grey(image)).convert("1"), np.uint8) * 255
    return cv2.cvtColor(bits, cv2.COLOR_GRAY2BGR)


def _bayer(image: Image) -> Image:
    """Ordered dithering with a 4x4 Bayer matrix."""
    matrix = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])
    height, width = image.shape[:2]
    thresholds = np.tile((matrix + 0.5) * 16, (height // 4 + 1, width // 4 + 1))[:height, :width]
    return cv2.cvtColor(((_grey(image) > thresholds) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _jpeg(image: Image, quality: int = 75) -> Image:
    _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert decoded is not None
    return np.asarray(decoded)


def _noisy(image: Image, sigma: float) -> Image:
    noise = np.random.default_rng(0).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene(astronaut_image: Image) -> tuple[Image, tuple[float, float, float, float]]:
    """The astronaut small on a grey 640x360 frame, and the face's box there (x1, y1, x2, y2)."""
    frame = np.full((360, 640, 3), 128, np.uint8)
    x, y = ORIGIN
    frame[y:y + SIDE, x:x + SIDE] = cv2.resize(astronaut_image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    k = SIDE / 512  # the face is at (178, 57)-(270, 177) in the 512x512 picture
    return frame, (x + 178 * k, y + 57 * k, x + 270 * k, y + 177 * k)


def _face_score(engine: MaskingEngine, image: Image, box: tuple[float, float, float, float]) -> float:
    dets = engine.detector.detect([image], 0.02)[0]
    if len(dets) == 0:
        return 0.0
    overlap = iou_matrix(np.array([box], np.float64), dets.boxes.astype(np.float64))[0] >= 0.3
    return float(dets.scores[overlap].max()) if overlap.any() else 0.0


def test_a_dithered_frame_is_smoothed_until_the_detector_finds_the_face_again(
        engine: MaskingEngine, scene: tuple[Image, tuple[float, float, float, float]]) -> None:
    frame, box = scene
    dithered = _one_bit(frame)
    picture, reason = detector_input(dithered)
    assert reason == "dots_pitch1"
    assert picture is not None and picture.shape == dithered.shape and picture.dtype == np.uint8
    assert _face_score(engine, frame, box) > 0.6  # the clean frame: a sure face
    assert _face_score(engine, dithered, box) < 0.3  # dithered: lost, or barely above the threshold
    assert _face_score(engine, picture, box) > 0.6  # brought back


@pytest.mark.parametrize("make", [_one_bit, _bayer, lambda im: _jpeg(_one_bit(im)), lambda im: _jpeg(_bayer(im))],
                         ids=["floyd-steinberg", "bayer", "floyd-steinberg-jpeg", "bayer-jpeg"])
def test_dithers_are_recognised_as_dots(astronaut_image: Image, make: Callable[[Image], Image]) -> None:
    dithered = make(astronaut_image)
    assert verdict(measure(dithered)) == "dots"
    picture, reason = detector_input(dithered)
    assert picture is not None and reason.startswith("dots_pitch")


def test_dots_two_pixels_wide_are_smoothed_at_their_pitch(astronaut_image: Image) -> None:
    small = cv2.resize(astronaut_image, (256, 256), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(_one_bit(small), (512, 512), interpolation=cv2.INTER_NEAREST)
    assert detector_input(coarse)[1] == "dots_pitch2"


def test_ordinary_pictures_are_left_alone(astronaut_image: Image) -> None:
    gradient = np.repeat(np.linspace(0, 255, 640, dtype=np.float32)[None, :], 360, axis=0).astype(np.uint8)
    pictures = {
        "astronaut": astronaut_image,
        "gradient": cv2.cvtColor(gradient, cv2.COLOR_GRAY2BGR),
        "noisy astronaut": _noisy(astronaut_image, 10),  # a grainy camera, not out of range
        "astronaut as jpeg": _jpeg(astronaut_image, 40),
        "black": np.zeros((360, 640, 3), np.uint8),
    }
    for name, picture in pictures.items():
        out, reason = detector_input(picture)
        assert reason == "", name
        assert out is picture, name  # no copy


def test_noise_is_smoothed_and_noise_beyond_repair_is_refused(astronaut_image: Image) -> None:
    noisy, reason = detector_input(_noisy(astronaut_image, 50))
    assert reason == "noise" and noisy is not None
    speckled = astronaut_image.copy()
    where = np.random.default_rng(1).random(speckled.shape[:2])
    speckled[where < 0.15] = 0
    speckled[where > 0.85] = 255
    cleaned, reason = detector_input(speckled)
    assert reason == "impulse_noise" and cleaned is not None
    assert detector_input(_noisy(astronaut_image, 140)) == (None, UNREADABLE)


def test_frames_too_small_to_judge_are_left_alone() -> None:
    tiny = _one_bit(np.random.default_rng(2).integers(0, 256, (8, 16, 3), np.uint8))
    assert measure(tiny) is None
    out, reason = detector_input(tiny)
    assert out is tiny and reason == ""


def test_the_check_and_the_smoothing_are_deterministic(astronaut_image: Image) -> None:
    for make in (_one_bit, _bayer, lambda im: _noisy(im, 50)):
        picture = make(astronaut_image)
        first, second = detector_input(picture), detector_input(picture.copy())
        assert first[1] == second[1]
        assert first[0] is not None and second[0] is not None
        assert np.array_equal(first[0], second[0])
        assert measure(picture) == measure(picture.copy())


def test_the_engine_masks_a_dithered_face_and_obscures_a_picture_it_cannot_read(engine: MaskingEngine,
                                                                                 astronaut_image: Image) -> None:
    from conftest import similarity
    from imask.engine import FrameInput
    from imask.ops import metrics

    restored = metrics.FRAMES_RESTORED.labels("dots_pitch1")
    before = restored._value.get()
    dithered = _one_bit(astronaut_image)
    result = engine.process([FrameInput("dithered", 0, dithered)])[0]
    assert not result.fail_closed and len(result.faces) == 1  # read smoothed; unread, it scored under the threshold
    face = (slice(95, 155), slice(205, 270))
    assert similarity(result.image[face], dithered[face]) < 0.9  # the mask went on the frame itself
    assert restored._value.get() == before + 1
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)  # snow: no picture at all
    obscured = engine.process([FrameInput("snow", 0, noise)])[0]
    assert obscured.fail_closed and obscured.fail_closed_reason == UNREADABLE


def test_only_error_diffused_dots_get_a_second_reading(astronaut_image: Image) -> None:
    dithered = _one_bit(astronaut_image)
    first, reason = detector_input(dithered)
    second = second_reading(dithered, reason)
    assert reason == "dots_pitch1" and first is not None and second is not None
    assert second.shape == dithered.shape and second.dtype == np.uint8
    # Smoothed wider than the first reading: less detail left.
    assert float(np.abs(np.diff(second.astype(np.int16), axis=1)).mean()) < float(
        np.abs(np.diff(first.astype(np.int16), axis=1)).mean())
    for picture in (astronaut_image, _noisy(astronaut_image, 50)):
        assert second_reading(picture, detector_input(picture)[1]) is None
    small = cv2.resize(astronaut_image, (256, 256), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(_one_bit(small), (512, 512), interpolation=cv2.INTER_NEAREST)
    assert second_reading(coarse, detector_input(coarse)[1]) is None


class ReadingsSeen:
    """The real detector, noting every picture it is asked to read and at which pixel budget (`with_geometry` passes,
    the 1.5x one among them, note theirs into the same list)."""

    def __init__(self, inner: CenterFaceDetector, seen: list[tuple[int, Image]] | None = None) -> None:
        self.inner = inner
        self.geometry = inner.geometry
        self.run_options = inner.run_options
        self.seen: list[tuple[int, Image]] = [] if seen is None else seen

    def with_geometry(self, geometry: DetectorGeometry) -> ReadingsSeen:
        return ReadingsSeen(self.inner.with_geometry(geometry), self.seen)

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        self.seen.extend((self.geometry.pixel_budget, frame) for frame in frames)
        return self.inner.detect(frames, threshold, timings)


def test_the_engine_reads_an_error_diffused_frame_three_ways_and_merges_their_faces(
        engine: MaskingEngine, scene: tuple[Image, tuple[float, float, float, float]]) -> None:
    from imask.engine import FrameInput

    assert isinstance(engine.detector, CenterFaceDetector)
    frame, box = scene
    dithered = _one_bit(frame)
    seen = ReadingsSeen(engine.detector)
    variant = engine.variant.with_overrides(orientation="upright", close_up=False)
    eng = MaskingEngine(variant, seen)  # type: ignore[arg-type]
    result = eng.process([FrameInput("dithered", 0, dithered)])[0]
    first, reason = detector_input(dithered)
    second = second_reading(dithered, reason)
    assert first is not None and second is not None
    budget = engine.detector.geometry.pixel_budget
    assert [b for b, _ in seen.seen] == [budget, budget, round(budget * 1.5 * 1.5)]
    assert np.array_equal(seen.seen[0][1], first) and np.array_equal(seen.seen[1][1], second)
    assert np.array_equal(seen.seen[2][1], first)
    assert any(iou_matrix(np.array([box]), np.array([f.box])).max() >= 0.3 for f in result.faces)
    seen.seen.clear()
    eng.process([FrameInput("clean", 0, frame)])
    assert [b for b, _ in seen.seen] == [budget] and seen.seen[0][1] is frame
