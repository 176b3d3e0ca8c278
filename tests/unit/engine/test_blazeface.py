"""The second detector family, BlazeFace (MediaPipe's full- and short-range models on LiteRT): anchors, decoding,
channel order, fail closed, batching, and faces found where CenterFace finds them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import similarity
from imask.engine import FrameInput, MaskingEngine
from imask.engine.detectors import FAMILIES, build_detector, packaged_model_file
from imask.engine.detectors.base import Detections, DetectorGeometry, DetectorOutputError, ModelError
from imask.engine.detectors.blazeface import (
    FULL_RANGE,
    SHORT_RANGE,
    BlazeFaceDetector,
    BlazeFaceModel,
    letterbox_tensor,
    load_blazeface,
    packaged_blazeface_path,
    ssd_anchors,
    weighted_nms,
)
from imask.engine.detectors.centerface.detector import CenterFaceDetector
from imask.engine.tracker import iou_matrix
from imask.engine.variants import get_variant
from imask.ops import metrics
from imask.types import Image

MISSING = [name for name in ("ai_edge_litert", "mediapipe") if importlib.util.find_spec(name) is None]
needs_model = pytest.mark.skipif(
    bool(MISSING), reason=f"BlazeFace needs {MISSING}: the 'detectors' extra (LiteRT) and mediapipe==0.10.14 "
    "installed with --no-deps (its model files); `make venv` installs both")


@pytest.fixture(scope="module")
def full() -> BlazeFaceDetector:
    if MISSING:
        pytest.skip(f"BlazeFace needs {MISSING} (make venv installs them)")
    detector = build_detector(get_variant("blazeface").detector_request, "cpu").detector
    assert isinstance(detector, BlazeFaceDetector)
    return detector


@pytest.fixture(scope="module")
def centerface() -> CenterFaceDetector:
    detector = build_detector(get_variant("default").detector_request, "cpu").detector
    assert isinstance(detector, CenterFaceDetector)
    return detector


@pytest.fixture(scope="module")
def photos(astronaut_image: Image, data_dir: Path) -> dict[str, Image]:
    images = {"astronaut": astronaut_image}
    for name in ("two_people.jpg", "facenet_multiface.jpg"):
        image = cv2.imread(str(data_dir / "photos" / name))
        assert image is not None, name
        images[name] = image
    return images


def test_anchors_follow_mediapipe_graphs() -> None:
    # face_detection_full_range.pbtxt: 192x192, one layer of stride 4, no interpolated anchor: num_boxes 2304.
    full = ssd_anchors(FULL_RANGE)
    assert full.shape == (2304, 2)
    assert np.allclose(full[0], [0.5 / 48, 0.5 / 48]) and np.allclose(full[1], [1.5 / 48, 0.5 / 48])
    assert np.allclose(full[48], [0.5 / 48, 1.5 / 48]) and np.allclose(full[-1], [47.5 / 48, 47.5 / 48])
    # face_detection_short_range.pbtxt: 128x128, strides 8, 16, 16, 16 with interpolated anchors: 896.
    short = ssd_anchors(SHORT_RANGE)
    assert short.shape == (896, 2)
    assert np.allclose(short[0], short[1]) and np.allclose(short[0], [0.5 / 16, 0.5 / 16])  # 2 per 16x16 cell
    assert np.allclose(short[2], [1.5 / 16, 0.5 / 16])
    assert np.allclose(short[512:518], [0.5 / 8, 0.5 / 8]) and np.allclose(short[518], [1.5 / 8, 0.5 / 8])
    assert np.allclose(short[-1], [7.5 / 8, 7.5 / 8])


def test_weighted_nms_merges_overlaps_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    points = np.zeros((3, 6, 2), np.float32)
    points[1] += 4
    out_boxes, out_scores, out_points = weighted_nms(boxes, scores, points)
    assert out_scores.tolist() == pytest.approx([0.9, 0.8])
    assert out_boxes[0] == pytest.approx([0.25, 0.25, 10.25, 10.25])  # (0.9 * 0 + 0.3 * 1) / 1.2
    assert out_points[0, 0] == pytest.approx([1.0, 1.0])
    assert out_boxes[1] == pytest.approx([50, 50, 60, 60])


def test_tensor_is_rgb_in_minus_one_to_one_letterboxed() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :] = (255, 0, 0)  # pure blue, as OpenCV decodes it (BGR)
    tensor, box = letterbox_tensor(frame, 192)
    assert tensor.shape == (1, 192, 192, 3) and tensor.dtype == np.float32
    assert (box.scale_x, box.scale_y, box.pad_x, box.pad_y) == (0.96, 0.96, 0, 48)
    inside = tensor[0, 48:144]
    assert np.all(inside[..., 2] == 1.0) and np.all(inside[..., :2] == -1.0)  # blue is the last plane: RGB
    assert np.all(tensor[0, :48] == -1.0) and np.all(tensor[0, 144:] == -1.0)  # black bars


@needs_model
def test_channel_order_is_pinned(full: BlazeFaceDetector, photos: dict[str, Image]) -> None:
    """The detector takes BGR frames and feeds the model RGB: handing it frames already swapped (so the model sees
    BGR) costs the group photo's six faces a third of their score (mean 0.82 -> 0.53 measured)."""
    assert full.input_channels == "RGB"
    group = photos["facenet_multiface.jpg"]
    right = full.detect([group], 0.3)[0]
    wrong = full.detect([np.ascontiguousarray(group[..., ::-1])], 0.3)[0]
    assert len(right) >= 6
    assert float(np.sort(right.scores)[-6:].mean()) > float(np.sort(wrong.scores)[-6:].mean()) + 0.1


@needs_model
def test_faces_found_where_centerface_finds_them(full: BlazeFaceDetector, centerface: CenterFaceDetector,
                                                 photos: dict[str, Image]) -> None:
    for name, image in photos.items():
        reference = centerface.detect([image], 0.5)[0]
        found = full.detect([image], 0.5)[0]
        assert len(reference) >= 1, name
        assert len(found) == len(reference), f"{name}: {len(found)} BlazeFace faces, CenterFace {len(reference)}"
        overlap = iou_matrix(reference.boxes.astype(np.float64), found.boxes.astype(np.float64))
        assert (overlap.max(axis=1) > 0.5).all(), f"{name}: IoU {overlap.max(axis=1)}"
        assert found.landmarks.shape == (len(found), 5, 2)
    # Landmarks in CenterFace's order: the image-left eye first, the nose between the eyes, below them.
    face = full.detect([photos["astronaut"]], 0.5)[0].landmarks[0]
    assert face[0, 0] < face[2, 0] < face[1, 0] and face[2, 1] > face[0, 1]


@needs_model
def test_boxes_map_back_to_frame_pixels(full: BlazeFaceDetector, astronaut_image: Image) -> None:
    base = full.detect([astronaut_image], 0.5)[0].boxes
    canvas = np.full((600, 1400, 3), 90, np.uint8)
    canvas[40:552, 700:1212] = astronaut_image  # letterboxed differently, offset in the frame
    moved = full.detect([canvas], 0.5)[0].boxes
    assert len(moved) == 1
    # 2.7x smaller in the model's input than the picture alone: a slightly different box, the same face.
    assert iou_matrix(base.astype(np.float64) + np.array([700, 40, 700, 40]), moved.astype(np.float64))[0, 0] > 0.7


@needs_model
def test_batch_equals_one_by_one(full: BlazeFaceDetector, photos: dict[str, Image]) -> None:
    images = list(photos.values())
    tiled = build_detector(get_variant("blazeface-tiled").detector_request, "cpu").detector
    for detector in (full, tiled):
        batch = detector.detect(images, 0.3)
        for image, many in zip(images, batch, strict=True):
            one = detector.detect([image], 0.3)[0]
            assert np.array_equal(one.boxes, many.boxes) and np.array_equal(one.scores, many.scores)


@needs_model
def test_tiles_find_a_small_face_the_whole_frame_pass_misses(full: BlazeFaceDetector,
                                                            astronaut_image: Image) -> None:
    small = cv2.resize(astronaut_image, (205, 205), interpolation=cv2.INTER_AREA)  # the face ~40 px wide
    frame = np.full((720, 1280, 3), 100, np.uint8)
    frame[300:505, 600:805] = small
    face = np.array([[600 + 205 * 180 / 512, 300 + 205 * 60 / 512, 600 + 205 * 275 / 512, 300 + 205 * 175 / 512]])
    tiled = build_detector(get_variant("blazeface-tiled").detector_request, "cpu").detector

    def hit(dets: Detections) -> bool:
        return bool(len(dets)) and float(iou_matrix(face, dets.boxes.astype(np.float64)).max()) > 0.3

    assert not hit(full.detect([frame], 0.5)[0])
    assert hit(tiled.detect([frame], 0.5)[0])


class _Broken:
    """A model whose outputs cannot be trusted."""

    def __init__(self, inner: BlazeFaceModel, mode: str) -> None:
        self.spec, self.sha256, self.execution_provider = inner.spec, inner.sha256, inner.execution_provider
        self.inner = inner
        self.mode = mode

    def run(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regressors, scores = self.inner.run(tensor)
        if self.mode == "nan":
            scores = scores.copy()
            scores[0, 7, 0] = np.nan
        elif self.mode == "inf":
            regressors = regressors.copy()
            regressors[0, 3, 2] = np.inf
        else:
            regressors = regressors[:, :100]
        return regressors, scores


@needs_model
@pytest.mark.parametrize("mode", ["nan", "inf", "shape"])
def test_untrustworthy_output_fails_closed(full: BlazeFaceDetector, astronaut_image: Image, mode: str) -> None:
    broken = BlazeFaceDetector(_Broken(full.model, mode), full.geometry)  # type: ignore[arg-type]
    with pytest.raises(DetectorOutputError):
        broken.detect([astronaut_image], 0.5)
    before = metrics.FRAMES_FAIL_CLOSED.labels("detector_error")._value.get()
    engine = MaskingEngine(get_variant("blazeface"), broken, "LiteRT-CPU")
    result = engine.process([FrameInput("cam", 0, astronaut_image)])[0]
    engine.close()
    assert result.fail_closed and result.fail_closed_reason == "detector_error"
    assert similarity(result.image, astronaut_image) < 0.1
    assert metrics.FRAMES_FAIL_CLOSED.labels("detector_error")._value.get() == before + 1


@needs_model
def test_engine_masks_the_face_with_blazeface(astronaut_image: Image) -> None:
    engine = MaskingEngine.load(get_variant("blazeface"), provider="cpu")
    assert engine.execution_provider == "LiteRT-CPU" and engine.warm_up()
    result = engine.process([FrameInput("astro", 0, astronaut_image)])[0]
    engine.close()
    assert not result.fail_closed and len(result.faces) == 1
    x1, y1, x2, y2 = (int(v) for v in result.faces[0].box)
    face = (slice(y1, y2), slice(x1, x2))
    assert similarity(result.image[face], astronaut_image[face]) < 0.9
    assert np.array_equal(result.image[450:], astronaut_image[450:])


@needs_model
def test_model_files_are_verified_and_fixed_in_size(tmp_path: Path) -> None:
    assert "blazeface" in FAMILIES
    assert packaged_model_file(get_variant("blazeface").detector_request) == packaged_blazeface_path(FULL_RANGE)
    short = get_variant("blazeface").with_overrides(model_sha256=SHORT_RANGE.sha256, input_width=128,
                                                   input_height=128)
    assert packaged_model_file(short.detector_request).name == "face_detection_short_range.tflite"
    assert isinstance(build_detector(short.detector_request, "cpu").detector, BlazeFaceDetector)
    tampered = tmp_path / "model.tflite"
    tampered.write_bytes(packaged_blazeface_path(FULL_RANGE).read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_blazeface(FULL_RANGE, tampered)
    with pytest.raises(ModelError, match="no BlazeFace model has sha256"):
        build_detector(get_variant("blazeface").with_overrides(model_sha256="0" * 64).detector_request, "cpu")
    with pytest.raises(ValueError, match="takes 192x192"):
        wrong_size = get_variant("blazeface").with_overrides(input_width=640, input_height=360)
        build_detector(wrong_size.detector_request, "cpu")
    with pytest.raises(ModelError, match="CPU interpreter only"):
        build_detector(get_variant("blazeface").detector_request, "cuda")
    # A registry copy of the file (model_path) loads the same model.
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(packaged_blazeface_path(FULL_RANGE).read_bytes())
    built = build_detector(get_variant("blazeface").with_overrides(model_path=str(copy)).detector_request, "cpu")
    assert built.model_sha256 == FULL_RANGE.sha256


def test_tiles_apply_to_frames_larger_than_one_tile() -> None:
    geometry = DetectorGeometry(tile=256)

    class _Stub:
        spec = FULL_RANGE

    detector = BlazeFaceDetector(_Stub(), geometry)  # type: ignore[arg-type]
    assert len(detector._views(0, np.zeros((200, 250, 3), np.uint8))) == 1
    assert len(detector._views(0, np.zeros((416, 416, 3), np.uint8))) == 1 + 4
    assert len(detector._views(0, np.zeros((360, 640, 3), np.uint8))) == 1 + 6


@needs_model
def test_timeout_fails_closed_and_the_detector_recovers(astronaut_image: Image) -> None:
    """LiteRT cannot stop a running invoke: a timed-out run is abandoned, the engine reports itself unhealthy
    (frames fail closed) until the run ends, then masks again."""
    variant = get_variant("blazeface-tiled")
    engine = MaskingEngine(variant, build_detector(variant.detector_request, "cpu").detector, "LiteRT-CPU",
                           detector_timeout_s=0.0005)
    big = cv2.resize(astronaut_image, (1920, 1080))  # 1 + 60 passes: far longer than 0.5 ms
    result = engine.process([FrameInput("cam", 0, big)])[0]
    assert result.fail_closed and result.fail_closed_reason == "detector_timeout"
    assert engine._inflight is not None
    engine._inflight.result(timeout=60)
    assert engine.healthy
    engine.detector_timeout_s = 60
    ok = engine.process([FrameInput("cam", 1, big)])[0]
    engine.close()
    assert not ok.fail_closed and len(ok.faces) >= 1
