"""Second look (imask.engine.second_look): a faint candidate in a crowd is kept only when a second CenterFace pass
at 1.5x and MTCNN's ONet together vouch for it and its landmarks are in face order; boxes only the 1.5x pass found are
added the same way; kept and added ones are masked at a smaller scale."""

from __future__ import annotations

import importlib.resources

import cv2
import numpy as np
import pytest

from conftest import textured
from imask.engine import MaskingEngine
from imask.engine.detectors.base import Detections, DetectorGeometry
from imask.engine.detectors.centerface.detector import CenterFaceDetector
from imask.engine.detectors.geometry import detector_size
from imask.engine.detectors.onet import FaceCheck
from imask.engine.masks import scaled_boxes
from imask.engine.second_look import (
    FAINT_MASK_SCALE,
    KEEP_LOGIT,
    LOOK_EVERY,
    PROPOSE_LOGIT,
    RESCAN_FACTOR,
    RESCAN_FLOOR,
    SecondLook,
    candidates,
    landmarks_in_face_order,
    mask_boxes,
    plan_look,
    remembered,
    rescan_geometry,
    rescan_scores,
    second_look,
    vouched,
)
from imask.engine.tracker import iou_matrix
from imask.types import Image

# Landmarks of an upright face in a unit box: left eye, right eye, nose, left and right mouth corner.
FACE_ORDER = np.array([[0.33, 0.38], [0.72, 0.38], [0.52, 0.56], [0.38, 0.76], [0.68, 0.76]], np.float32)
CANDIDATE_SCORE = 0.45
THRESHOLD = 0.5  # the band under test: what a large box needs (the crowd rule's small boxes use 0.2)


def _dets(boxes: list[list[float]], scores: list[float], unit_landmarks: np.ndarray | None = None) -> Detections:
    b = np.array(boxes, np.float32).reshape(-1, 4)
    unit = FACE_ORDER if unit_landmarks is None else unit_landmarks
    size = (b[:, 2:] - b[:, :2])[:, None, :]
    landmarks = (b[:, None, :2] + unit[None] * size).astype(np.float32)
    return Detections(boxes=b, scores=np.array(scores, np.float32), landmarks=landmarks)


def _with_score(dets: Detections, index: int, score: float) -> Detections:
    return Detections(boxes=dets.boxes[index:index + 1], scores=np.array([score], np.float32),
                      landmarks=dets.landmarks[index:index + 1])


@pytest.fixture(scope="module")
def face_check() -> FaceCheck:
    return FaceCheck.load()


def _look(dets: Detections, required: float, threshold: float, rescan: Detections, check: FaceCheck | float,
          image: Image | None = None, upright: bool = True) -> SecondLook:
    """plan_look, ONet's verdict (a real FaceCheck on `image`, or one probability for every box), second_look."""
    plan = plan_look(dets, required, threshold, rescan)
    if isinstance(check, FaceCheck):
        assert image is not None
        probability = check.face_probability(image, plan.to_check)
    else:
        probability = np.full(len(plan.to_check), check, np.float32)
    return second_look(dets, plan, probability, upright)


@pytest.fixture(scope="module")
def rescan(engine: MaskingEngine) -> CenterFaceDetector:
    """The second pass as the engine builds it: the main detector's model, rescan_geometry's sizing."""
    assert isinstance(engine.detector, CenterFaceDetector)
    return CenterFaceDetector(engine.detector.model, rescan_geometry(engine.detector.geometry))


def _skimage_picture(name: str) -> Image:
    """A picture that ships in scikit-image's wheel, as BGR (gray ones become 3 channels)."""
    data = (importlib.resources.files("skimage") / "data" / name).read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


# --- the decision on real pixels -----------------------------------------------------------------------------------

def test_a_face_candidate_is_kept(engine: MaskingEngine, rescan: CenterFaceDetector, face_check: FaceCheck,
                                  astronaut_image: Image) -> None:
    found = engine.detector.detect([astronaut_image], 0.3)[0]
    assert len(found) >= 1
    face = _with_score(found, int(np.argmax(found.scores)), CANDIDATE_SCORE)
    look = _look(face, 0.03, THRESHOLD, rescan.detect([astronaut_image], RESCAN_FLOOR)[0], face_check,
                 astronaut_image)
    assert look.candidates.tolist() == [True]
    assert look.keep.tolist() == [True]
    assert look.mask_scale.tolist() == [FAINT_MASK_SCALE]


def test_coins_are_refused(engine: MaskingEngine, rescan: CenterFaceDetector, face_check: FaceCheck) -> None:
    """CenterFace fires faintly on scikit-image's coins; a coin raised to a face-like score is still refused: neither
    the 1.5x pass nor ONet vouches for it, and the 1.5x pass adds nothing."""
    coins = _skimage_picture("coins.png")
    found = engine.detector.detect([coins], 0.03)[0]
    assert len(found) >= 1
    second = rescan.detect([coins], RESCAN_FLOOR)[0]
    for index in range(len(found)):
        look = _look(_with_score(found, index, CANDIDATE_SCORE), 0.03, THRESHOLD, second, face_check, coins)
        assert look.added == 0
        assert look.candidates.tolist() == [True]
        assert look.keep.tolist() == [False]
        assert np.isnan(look.mask_scale).all()


def test_a_drawn_ball_is_refused_even_with_face_ordered_landmarks(rescan: CenterFaceDetector,
                                                                  face_check: FaceCheck) -> None:
    frame = np.full((360, 640, 3), 200, np.uint8)
    cv2.circle(frame, (320, 180), 40, (40, 80, 200), -1)
    cv2.circle(frame, (306, 166), 10, (180, 200, 255), -1)  # a highlight
    ball = _dets([[280, 140, 360, 220]], [CANDIDATE_SCORE])
    assert landmarks_in_face_order(ball).tolist() == [True]
    look = _look(ball, 0.03, THRESHOLD, rescan.detect([frame], RESCAN_FLOOR)[0], face_check, frame)
    assert look.refused.tolist() == [True] and look.added == 0


def test_onet_tells_faces_from_things(engine: MaskingEngine, face_check: FaceCheck, astronaut_image: Image) -> None:
    """The face check alone: the astronaut's face (the detector's box) against coins, a ball and flat grey."""
    face = engine.detector.detect([astronaut_image], 0.3)[0]
    best = face.boxes[int(np.argmax(face.scores))][None]
    assert face_check.face_probability(astronaut_image, best)[0] > 0.9
    coins = _skimage_picture("coins.png")
    things = np.array([[10, 10, 60, 60], [100, 100, 160, 160], [200, 50, 280, 130]], np.float32)
    assert (face_check.face_probability(coins, things) < 0.5).all()
    assert (face_check.face_probability(np.full((200, 300, 3), 127, np.uint8), things[:2]) < 0.1).all()
    assert face_check.face_probability(coins, np.zeros((0, 4), np.float32)).shape == (0,)


# --- landmark order on synthetic boxes ------------------------------------------------------------------------------

def test_landmarks_in_face_order_accepts_an_upright_face() -> None:
    assert landmarks_in_face_order(_dets([[10, 10, 50, 60], [100, 20, 112, 36]], [0.1, 0.1])).tolist() == [True, True]


@pytest.mark.parametrize("name, unit", [
    ("eyes swapped left/right", FACE_ORDER[[1, 0, 2, 3, 4]]),
    ("mouth corners swapped", FACE_ORDER[[0, 1, 2, 4, 3]]),
    ("upside down", np.column_stack([FACE_ORDER[:, 0], 1 - FACE_ORDER[:, 1]])),
    ("nose above the eyes", np.vstack([FACE_ORDER[:2], [[0.52, 0.2]], FACE_ORDER[3:]])),
    ("nose below the mouth", np.vstack([FACE_ORDER[:2], [[0.52, 0.9]], FACE_ORDER[3:]])),
    ("a mouth corner above an eye", np.vstack([FACE_ORDER[:3], [[0.38, 0.3]], FACE_ORDER[4:]])),
    ("a point far outside the box", np.vstack([FACE_ORDER[:4], [[1.5, 0.76]]])),
])
def test_landmarks_out_of_face_order_are_refused(name: str, unit: np.ndarray) -> None:
    dets = _dets([[10, 10, 50, 60]], [0.1], unit.astype(np.float32))
    assert landmarks_in_face_order(dets).tolist() == [False], name


def test_landmarks_may_lie_just_outside_the_box() -> None:
    unit = FACE_ORDER.copy()
    unit[3, 0] = -0.05  # a mouth corner 5% of the width left of the box (a turned face)
    assert landmarks_in_face_order(_dets([[10, 10, 50, 60]], [0.1], unit)).tolist() == [True]
    unit[3, 0] = -0.2
    assert landmarks_in_face_order(_dets([[10, 10, 50, 60]], [0.1], unit)).tolist() == [False]


def test_landmark_order_of_no_boxes_is_empty() -> None:
    assert landmarks_in_face_order(Detections()).shape == (0,)


# --- candidates, confirmation, the verdict --------------------------------------------------------------------------

def test_candidates_are_the_band_between_the_new_track_score_and_the_threshold() -> None:
    dets = _dets([[0, 0, 10, 10]] * 5, [0.02, 0.03, 0.1, 0.2, 0.6])
    assert candidates(dets, 0.03, 0.2).tolist() == [False, True, True, False, False]
    # Per-box requirements: a large box needs 0.5 and so is never a candidate under 0.2.
    required = np.array([0.03, 0.03, 0.5, 0.03, 0.5], np.float32)
    assert candidates(dets, required, 0.2).tolist() == [False, True, False, False, False]


def test_rescan_scores_take_the_best_overlapping_box() -> None:
    mine = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 220, 20]], np.float32)
    second = _dets([[1, 1, 11, 11], [0, 0, 10, 10], [104, 104, 114, 114], [200, 0, 220, 20]], [0.5, 0.2, 0.5, 0.04])
    # IoU 0.68 and 1.0 (the best score wins), 0.22 (< 0.3), a perfect overlap.
    assert rescan_scores(mine, second).tolist() == pytest.approx([0.5, 0.0, 0.04])
    assert rescan_scores(mine, second, min_iou=0.2).tolist() == pytest.approx([0.5, 0.5, 0.04])
    assert rescan_scores(mine, Detections()).tolist() == [0, 0, 0]
    assert rescan_scores(np.zeros((0, 4), np.float32), second).shape == (0,)


def test_rescan_scores_are_the_full_iou_grid_answer() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        def boxes(n: int) -> np.ndarray:
            xy = rng.uniform(0, 400, (n, 2))
            wh = rng.uniform(4, 80, (n, 2)) * np.array([1.0, rng.uniform(0.5, 2.0)])
            return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)

        mine, other = boxes(int(rng.integers(0, 300))), boxes(int(rng.integers(0, 300)))
        scores = rng.uniform(0.01, 0.3, len(other)).astype(np.float32)
        second = Detections(boxes=other, scores=scores, landmarks=np.zeros((len(other), 5, 2), np.float32))
        for min_iou in (0.1, 0.3, 0.6):
            grid = iou_matrix(mine.astype(np.float64), other.astype(np.float64))
            expected = (np.where(grid >= min_iou, scores[None, :], 0).max(axis=1) if grid.size
                        else np.zeros(len(mine)))
            np.testing.assert_allclose(rescan_scores(mine, second, min_iou), expected, rtol=1e-6)


def test_the_two_opinions_weigh_together() -> None:
    """A strong 1.5x score carries a candidate ONet doubts; a faint one needs ONet sure; neither alone at the edge."""
    rescan_score = np.array([0.3, 0.03, 0.03, 0.06, 0.06], np.float32)
    probability = np.array([0.0, 0.999, 0.2, 0.5, 0.001], np.float32)
    assert vouched(rescan_score, probability, KEEP_LOGIT).tolist() == [True, True, False, True, False]
    # Proposals have no main-pass box at all: they need more.
    assert vouched(np.array([0.03], np.float32), np.array([0.5], np.float32), KEEP_LOGIT).tolist() == [True]
    assert vouched(np.array([0.03], np.float32), np.array([0.5], np.float32), PROPOSE_LOGIT).tolist() == [False]
    assert vouched(np.array([0.2], np.float32), np.array([0.5], np.float32), PROPOSE_LOGIT).tolist() == [True]


def test_plan_asks_onet_about_seen_candidates_and_new_boxes_only() -> None:
    dets = _dets([[0, 0, 20, 20], [50, 0, 70, 20], [100, 0, 120, 20]], [0.9, 0.1, 0.1])
    second = _dets([[51, 1, 71, 21], [300, 0, 320, 20], [1, 1, 21, 21], [400, 0, 420, 20]],
                   [0.3, 0.2, 0.9, RESCAN_FLOOR / 2])
    plan = plan_look(dets, 0.03, 0.2, second)
    assert plan.candidates.tolist() == [False, True, True]
    assert plan.checked.tolist() == [False, True, False]  # the third has no 1.5x box: refused unasked
    assert plan.proposals.boxes.tolist() == [[300, 0, 320, 20]]  # overlaps nothing; the last is under the floor
    assert plan.to_check.tolist() == [[50, 0, 70, 20], [300, 0, 320, 20]]


def test_second_look_leaves_everything_but_candidates_alone_and_adds_vouched_boxes() -> None:
    dets = _dets([[0, 0, 20, 20], [50, 0, 70, 20], [100, 0, 120, 20], [150, 0, 170, 20]], [0.9, 0.1, 0.1, 0.01])
    second = _dets([[51, 1, 71, 21], [300, 0, 320, 20]], [0.3, 0.3])  # confirms the second box, proposes one more
    look = _look(dets, 0.03, 0.2, second, 0.5)
    assert look.candidates.tolist() == [False, True, True, False, False]
    assert look.keep.tolist() == [True, True, False, True, True]  # below the floor is the tracker's business
    assert look.refused.tolist() == [False, False, True, False, False]
    assert look.added == 1 and look.detections.boxes[-1].tolist() == [300, 0, 320, 20]
    assert look.required[-1] == 0  # an added box starts a track
    assert np.isnan(look.mask_scale[[0, 2, 3]]).all() and (look.mask_scale[[1, 4]] == FAINT_MASK_SCALE).all()
    nothing = _look(dets, 0.03, 0.2, Detections(), 0.99)
    assert nothing.keep.tolist() == [True, False, False, True] and nothing.added == 0
    doubted = _look(dets, 0.03, 0.2, _dets([[300, 0, 320, 20]], [0.06]), 0.001)
    assert doubted.added == 0


def test_candidates_with_garbled_landmarks_are_refused_even_when_vouched_for() -> None:
    upside_down = np.column_stack([FACE_ORDER[:, 0], 1 - FACE_ORDER[:, 1]]).astype(np.float32)
    dets = _dets([[50, 0, 70, 20]], [0.1], upside_down)
    assert _look(dets, 0.03, 0.2, _dets([[50, 0, 70, 20]], [0.9]), 0.9).refused.tolist() == [True]
    proposed = _look(Detections(), 0.03, 0.2, _dets([[50, 0, 70, 20]], [0.9], upside_down), 0.9)
    assert proposed.added == 0
    # A camera detected turned has its faces' landmarks turned in frame pixels: the two opinions alone decide.
    assert _look(dets, 0.03, 0.2, _dets([[50, 0, 70, 20]], [0.9]), 0.9, upright=False).keep.tolist() == [True]


def test_between_looks_candidates_take_the_verdict_of_the_box_they_overlap_and_new_ones_are_kept() -> None:
    first = _dets([[0, 0, 20, 20], [50, 0, 70, 20], [100, 0, 120, 20]], [0.9, 0.1, 0.1])
    look = _look(first, 0.03, 0.2, _dets([[51, 1, 71, 21], [300, 0, 320, 20]], [0.3, 0.3]), 0.5)
    memory = look.memory()  # judged: the two candidates (kept, refused) and the added box
    assert memory.boxes.tolist() == [[50, 0, 70, 20], [100, 0, 120, 20], [300, 0, 320, 20]]
    assert memory.keep.tolist() == [True, False, True] and memory.age == 0
    moved = _dets([[0, 0, 20, 20], [52, 0, 72, 20], [101, 1, 121, 21], [302, 0, 322, 20], [200, 0, 220, 20]],
                  [0.9, 0.1, 0.1, 0.1, 0.1])
    later = remembered(moved, 0.03, 0.2, memory)
    assert later.candidates.tolist() == [False, True, True, True, True]
    assert later.keep.tolist() == [True, True, False, True, True]  # the last overlaps nothing judged: kept
    assert later.added == 0 and len(later.detections) == 5
    assert np.isnan(later.mask_scale[[0, 2]]).all() and (later.mask_scale[[1, 3, 4]] == FAINT_MASK_SCALE).all()
    ages = [memory]
    while not ages[-1].due:
        ages.append(ages[-1].older())
    assert len(ages) == LOOK_EVERY  # the look, LOOK_EVERY - 1 frames reusing it, then a new look is due


def test_mask_boxes_masks_faint_boxes_at_their_own_scale() -> None:
    boxes = np.array([[100, 100, 140, 150], [200, 50, 230, 90]], np.float32)
    scale = np.array([FAINT_MASK_SCALE, np.nan], np.float32)
    shrunk = mask_boxes(boxes, scale, 1.5)
    np.testing.assert_allclose((shrunk[:, :2] + shrunk[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)
    np.testing.assert_array_equal(shrunk[1], boxes[1])
    masked = scaled_boxes(shrunk, 1.5, 640, 360)
    wanted = scaled_boxes(boxes, FAINT_MASK_SCALE, 640, 360)
    assert np.abs(masked[0] - wanted[0]).max() <= 1
    np.testing.assert_array_equal(masked[1], scaled_boxes(boxes[1:], 1.5, 640, 360)[0])


@pytest.mark.parametrize("width, height", [(416, 416), (1280, 720), (500, 375)])
def test_the_second_pass_reads_frames_at_one_and_a_half_times_the_scale(width: int, height: int) -> None:
    main = DetectorGeometry(pixel_budget=640 * 360, max_upscale=2.0, max_downscale=2.0, flip=True, tile=640)
    second = rescan_geometry(main)
    assert not second.flip and second.tile == 0
    w0, _ = detector_size(width, height, main)
    w1, _ = detector_size(width, height, second)
    assert w1 / w0 == pytest.approx(RESCAN_FACTOR, rel=0.06)  # sides snap to multiples of 32 within 5%


def test_the_second_pass_of_1080p_stops_at_the_detectors_cap() -> None:
    main = DetectorGeometry(pixel_budget=640 * 360, max_upscale=2.0, max_downscale=2.0)
    assert detector_size(1920, 1080, main)[0] == 960
    assert detector_size(1920, 1080, rescan_geometry(main))[0] == 1280


class _Fixed:
    """A detector returning the same boxes for any frame; re-read at another geometry, it returns `rescan`'s."""

    def __init__(self, dets: Detections, rescan: Detections | None = None) -> None:
        self.dets, self.rescan = dets, rescan if rescan is not None else dets
        self.geometry = DetectorGeometry()

    def detect(self, frames: list[Image], threshold: float, timings: object = None) -> list[Detections]:
        keep = self.dets.scores >= threshold
        return [Detections(self.dets.boxes[keep], self.dets.scores[keep], self.dets.landmarks[keep]) for _ in frames]

    def with_geometry(self, geometry: DetectorGeometry) -> _Fixed:
        return _Fixed(self.rescan)


def _plain(seed: int) -> Image:
    """A picture the detector reads as it is (the grain smoothed: textured() is read as noise, brought back into
    range, and such frames keep their candidates without a second look)."""
    from imask.engine.picture_range import detector_input

    frame = cv2.GaussianBlur(textured(400, 640, seed=seed), (5, 5), 0)
    assert detector_input(frame)[1] == ""
    return frame


def test_a_frame_brought_back_into_range_keeps_its_candidates() -> None:
    from imask.engine import FrameInput
    from imask.engine.picture_range import detector_input
    from imask.engine.variants import get_variant

    noisy = textured(400, 640, seed=3)
    assert detector_input(noisy)[1] == "noise"
    variant = get_variant("default").with_overrides(orientation="upright", close_up=False)
    engine = MaskingEngine(variant, _Fixed(_crowd_with_a_faint_box(), rescan=_dets([], [])))
    try:
        result = engine.process([FrameInput("cam", 0, noisy)])[0]
    finally:
        engine.close()
    assert len(result.faces) == 7  # the faint box kept: neither opinion reads such a picture


def _crowd_with_a_faint_box() -> Detections:
    """Six sure small faces and one faint box (0.05) at the end, all with face-ordered landmarks."""
    boxes = [[40.0 + 90 * k, 50.0, 80.0 + 90 * k, 100.0] for k in range(6)] + [[300.0, 250.0, 340.0, 300.0]]
    return _dets(boxes, [0.9] * 6 + [0.05])


def test_the_engine_masks_a_confirmed_faint_box_at_its_own_size_and_counts_a_refused_one() -> None:
    from imask.engine import FrameInput
    from imask.engine.variants import get_variant
    from imask.ops import metrics

    frame = _plain(seed=3)
    crowd = _crowd_with_a_faint_box()
    variant = get_variant("default").with_overrides(orientation="upright", close_up=False)
    refused_before = metrics.SECOND_LOOK_REFUSED._value.get()
    refusing = MaskingEngine(variant, _Fixed(crowd, rescan=_dets([], [])))
    surer = Detections(crowd.boxes, np.where(crowd.scores < 0.1, 0.3, crowd.scores).astype(np.float32),
                       crowd.landmarks)  # the faint box, seen larger, scores 0.3: enough whatever ONet says
    added_before = metrics.SECOND_LOOK_ADDED._value.get()
    new = _dets([[500.0, 250.0, 540.0, 300.0]], [0.5])  # and a box the main pass does not have
    surer = Detections(np.concatenate([surer.boxes, new.boxes]), np.concatenate([surer.scores, new.scores]),
                       np.concatenate([surer.landmarks, new.landmarks]))
    confirming = MaskingEngine(variant, _Fixed(crowd, rescan=surer))
    plain = MaskingEngine(variant.with_overrides(second_look=False), _Fixed(crowd))
    try:
        refused = refusing.process([FrameInput("a", 0, frame)])[0]
        kept = confirming.process([FrameInput("b", 0, frame)])[0]
        before = plain.process([FrameInput("c", 0, frame)])[0]
    finally:
        for eng in (refusing, confirming, plain):
            eng.close()
    assert len(before.faces) == 7 and len(kept.faces) == 8 and len(refused.faces) == 6
    assert metrics.SECOND_LOOK_REFUSED._value.get() == refused_before + 1
    assert metrics.SECOND_LOOK_ADDED._value.get() == added_before + 1
    added = next(f for f in kept.faces if f.box[0] >= 500)
    assert added.box[2] - added.box[0] < 40  # masked at its own size too
    faint = next(f for f in kept.faces if f.box[1] >= 240)
    assert faint.box[2] - faint.box[0] < 40  # shrunk so the mask's scale covers the box itself
    assert np.array_equal(refused.image[250:300, 300:340], frame[250:300, 300:340])  # the refused box is not masked


def test_a_cameras_crowd_frames_get_the_full_look_every_few_frames() -> None:
    from imask.engine import FrameInput
    from imask.engine.variants import get_variant
    from imask.ops import metrics

    frame = _plain(seed=5)
    crowd = _crowd_with_a_faint_box()
    variant = get_variant("default").with_overrides(orientation="upright", close_up=False)
    engine = MaskingEngine(variant, _Fixed(crowd, rescan=_dets([], [])))
    passes = metrics.SECOND_LOOK_PASSES._value.get()
    try:
        results = [engine.process([FrameInput("cam", seq, frame)])[0] for seq in range(2 * LOOK_EVERY + 1)]
        other = engine.process([FrameInput("other", 0, frame)])[0]
    finally:
        engine.close()
    assert metrics.SECOND_LOOK_PASSES._value.get() - passes == 3 + 1  # frames 0, 5 and 10; the other camera's first
    # The faint box was refused at the first look and stays refused in between: never masked.
    assert all(np.array_equal(r.image[250:300, 300:340], frame[250:300, 300:340]) for r in [*results, other])


def test_a_family_without_a_second_look_refuses_it() -> None:
    from imask.engine.variants import get_variant

    with pytest.raises(ValueError, match="no second look"):
        get_variant("blazeface").with_overrides(second_look=True)
