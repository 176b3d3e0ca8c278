"""The masking engine on real faces: recall, persistence, fail closed, batching."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import near_uniform, similarity
from imask.engine import FrameInput, MaskingEngine, default_variant
from imask.engine.detectors.base import BatchTimings, Detections, DetectorGeometry, ModelError
from imask.engine.detectors.centerface.detector import CenterFaceDetector
from imask.engine.detectors.centerface.model import load_centerface, packaged_centerface_path
from imask.engine.masks import scaled_boxes
from imask.ops import metrics
from imask.types import Image


def test_astronaut_face_is_found_and_masked(engine: MaskingEngine, astronaut_image: Image) -> None:
    result = engine.process([FrameInput("astro", 0, astronaut_image)])[0]
    assert not result.fail_closed
    assert len(result.faces) == 1
    x1, y1, x2, y2 = result.faces[0].box
    # The face is around (215..290, 70..170) in skimage's astronaut.
    assert 170 < (x1 + x2) / 2 < 290 and 60 < (y1 + y2) / 2 < 160
    assert len(result.faces[0].landmarks) == 5
    face = (slice(int(y1), int(y2)), slice(int(x1), int(x2)))
    assert similarity(result.image[face], astronaut_image[face]) < 0.9
    # Away from the face the picture is untouched.
    assert np.array_equal(result.image[400:, :], astronaut_image[400:, :])


def test_recall_on_labelled_photos(engine: MaskingEngine, data_dir: Path) -> None:
    truth = json.loads((data_dir / "photos_gt" / "dlib_faces_gt.json").read_text())
    covered = total = 0
    for name, info in truth.items():
        image = cv2.imread(str(data_dir / "photos_gt" / name))
        result = engine.process([FrameInput(name, 0, image)])[0]
        boxes = np.array([f.box for f in result.faces], np.float32).reshape(-1, 4)
        regions = scaled_boxes(boxes, engine.variant.mask.scale, image.shape[1], image.shape[0])
        for face in info["faces"]:
            x, y, w, h = face["box"]
            total += 1
            cx, cy = x + w / 2, y + h / 2
            centre_inside = any(rx1 <= cx <= rx2 and ry1 <= cy <= ry2 for rx1, ry1, rx2, ry2 in regions)
            covered += centre_inside or any(_iou((x, y, x + w, y + h), r) >= 0.3 for r in regions)
    assert total == 43
    assert covered / total >= 0.95, f"recall {covered}/{total}"


def _iou(a: tuple[float, ...], b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


class DroppingDetector:
    """The real detector, with its detections thrown away on chosen frames (to force misses)."""

    def __init__(self, inner: CenterFaceDetector, drop_calls: set[int]) -> None:
        self.inner = inner
        self.drop_calls = drop_calls
        self.calls = 0
        self.run_options = inner.run_options

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        out = self.inner.detect(frames, threshold, timings)
        call = self.calls
        self.calls += 1
        return [Detections() for _ in out] if call in self.drop_calls else out


def test_face_stays_masked_through_missed_detections(engine: MaskingEngine, astronaut_image: Image) -> None:
    assert isinstance(engine.detector, CenterFaceDetector)
    dropping = DroppingDetector(engine.detector, drop_calls={3, 4, 5})
    eng = MaskingEngine(engine.variant.with_overrides(orientation="upright"), dropping)  # counts detector calls
    face = (slice(90, 150), slice(200, 280))
    for seq in range(8):
        shifted = np.roll(astronaut_image, seq * 2, axis=1)  # the face moves a little every frame
        result = eng.process([FrameInput("cam", seq, shifted)])[0]
        assert len(result.faces) >= 1, f"frame {seq}: face not masked"
        if seq in (3, 4, 5):
            assert all(f.held for f in result.faces)
        assert similarity(result.image[face], shifted[face]) < 0.9, f"frame {seq}: face visible"
    # Past the hold limit the track is gone (nothing is masked forever on stale evidence).
    eng2 = MaskingEngine(engine.variant.with_overrides(orientation="upright"),
                         DroppingDetector(engine.detector, drop_calls=set(range(1, 20))))
    counts = [len(eng2.process([FrameInput("c", s, astronaut_image)])[0].faces) for s in range(10)]
    assert counts[0] == 1 and counts[1:6] == [1] * 5 and counts[7:] == [0, 0, 0]


class FailingDetector:
    def __init__(self, mode: str, inner: CenterFaceDetector | None = None) -> None:
        self.mode = mode
        self.inner = inner

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        if self.mode == "error":
            raise RuntimeError("simulated CUDA failure")
        return [Detections()]  # wrong count for a batch of 2


@pytest.mark.parametrize("mode", ["error", "count"])
def test_detector_failure_fails_closed(engine: MaskingEngine, astronaut_image: Image, mode: str) -> None:
    reason = "detector_error"
    before = metrics.FRAMES_FAIL_CLOSED.labels(reason)._value.get()
    eng = MaskingEngine(engine.variant, FailingDetector(mode))
    frames = [FrameInput("cam", 0, astronaut_image), FrameInput("cam2", 0, astronaut_image)]
    results = eng.process(frames)
    assert len(results) == 2
    for result in results:
        assert result.fail_closed and result.fail_closed_reason == reason
        assert near_uniform(result.image)
        assert not np.array_equal(result.image, astronaut_image)
    assert metrics.FRAMES_FAIL_CLOSED.labels(reason)._value.get() == before + 2


def test_a_frame_that_is_not_bgr_fails_closed(engine: MaskingEngine, astronaut_image: Image) -> None:
    """A grey (H, W) frame from a library caller must not reach the model as one real plane and two of junk."""
    grey = cv2.cvtColor(astronaut_image, cv2.COLOR_BGR2GRAY)
    result = engine.process([FrameInput("grey-cam", 0, grey)])[0]
    assert result.fail_closed and result.fail_closed_reason == "detector_error"
    assert near_uniform(result.image) and result.image.shape == grey.shape


def test_detector_timeout_fails_closed_then_recovers(astronaut_image: Image) -> None:
    model = load_centerface(provider="cpu")
    # A real timeout: CenterFace on a 1280x736 input takes far longer than 1 ms.
    detector = CenterFaceDetector(model, DetectorGeometry(pixel_budget=1280 * 736))
    eng = MaskingEngine(default_variant(), detector, detector_timeout_s=0.001)
    big = cv2.resize(astronaut_image, (1280, 720))
    before = metrics.FRAMES_FAIL_CLOSED.labels("detector_timeout")._value.get()
    result = eng.process([FrameInput("cam", 0, big)])[0]
    assert result.fail_closed and result.fail_closed_reason == "detector_timeout"
    assert near_uniform(result.image) and similarity(result.image, big) < 0.1
    assert metrics.FRAMES_FAIL_CLOSED.labels("detector_timeout")._value.get() == before + 1
    # Once the abandoned run ends the model is healthy again and a sane timeout masks normally.
    assert eng._inflight is not None
    eng._inflight.exception(timeout=30)
    assert eng.healthy
    eng.detector_timeout_s = 30
    ok = eng.process([FrameInput("cam", 1, big)])[0]
    assert not ok.fail_closed and len(ok.faces) == 1
    eng.close()


def test_batch_matches_single_frames(engine: MaskingEngine, astronaut_image: Image, data_dir: Path) -> None:
    images = [astronaut_image, cv2.imread(str(data_dir / "photos" / "two_people.jpg")),
              cv2.imread(str(data_dir / "photos" / "facenet_multiface.jpg"))]
    detector = engine.detector
    singles = [detector.detect([im], 0.2)[0] for im in images]
    batch = detector.detect(images, 0.2)
    for one, many in zip(singles, batch, strict=True):
        assert len(one) == len(many)
        # Padding to a shared tensor size moves boxes by at most a couple of pixels.
        assert np.allclose(np.sort(one.boxes, axis=0), np.sort(many.boxes, axis=0), atol=3)


def test_model_sha256_is_enforced(tmp_path: Path) -> None:
    tampered = tmp_path / "centerface.onnx"
    tampered.write_bytes(packaged_centerface_path().read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_centerface(tampered)


def test_downscaled_detection_maps_boxes_back(engine: MaskingEngine, astronaut_image: Image) -> None:
    small = engine.process([FrameInput("a", 0, astronaut_image)])[0].faces[0].box
    big_image = cv2.resize(astronaut_image, (1920, 1920))
    big = engine.process([FrameInput("b", 0, big_image)])[0].faces[0].box
    # Different detector scales give slightly different boxes; mapped back they must be the same face.
    assert _iou(tuple(np.array(big) / 3.75), np.array(small)) > 0.7


def test_flop_count_matches_the_published_cost() -> None:
    from imask.engine.detectors.centerface.model import centerface_gflops

    assert abs(centerface_gflops(640, 384) - 2.96) < 0.01
    assert abs(centerface_gflops(320, 192) - 0.74) < 0.01


class CountingDetector:
    def __init__(self, inner: CenterFaceDetector) -> None:
        self.inner = inner
        self.frames = 0
        self.run_options = inner.run_options

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        self.frames += len(frames)
        return self.inner.detect(frames, threshold, timings)


def test_moving_face_stays_covered_between_detections(engine: MaskingEngine, astronaut_image: Image) -> None:
    # detect_every=3: the detector sees frames 0, 3, 6, ...; in between, tracks move by their velocity and grow
    # with their uncertainty. The face moves 9 px a frame and must be masked on every frame.
    assert isinstance(engine.detector, CenterFaceDetector)
    counting = CountingDetector(engine.detector)
    eng = MaskingEngine(engine.variant.with_overrides(detect_every=3, orientation="upright"), counting)
    canvas = np.full((512, 900, 3), 120, np.uint8)
    for seq in range(15):
        frame = canvas.copy()
        x = 20 + seq * 9
        frame[:, x:x + 512] = astronaut_image
        result = eng.process([FrameInput("walker", seq, frame)])[0]
        face = (slice(95, 150), slice(x + 205, x + 275))  # inside the astronaut's face
        assert result.detected == (seq % 3 == 0), seq
        assert result.faces, f"frame {seq}: nothing masked"
        assert similarity(result.image[face], frame[face]) < 0.9, f"frame {seq}: face visible"
    assert counting.frames == 5
    eng.close()


def test_scene_cut_triggers_detection_at_once(engine: MaskingEngine, astronaut_image: Image) -> None:
    assert isinstance(engine.detector, CenterFaceDetector)
    counting = CountingDetector(engine.detector)
    eng = MaskingEngine(engine.variant.with_overrides(detect_every=10, orientation="upright"), counting)
    other = np.ascontiguousarray(np.flipud(astronaut_image))  # a different picture: a cut
    flags = [eng.process([FrameInput("cut", s, img)])[0].detected
             for s, img in enumerate([astronaut_image, astronaut_image, other, other])]
    assert flags == [True, False, True, False]
    eng.close()


class StuckDetector:
    """The real detector behind a gate: a call waits until the test opens it (a wedged model, deterministically:
    ONNX Runtime's terminate would end a real long run too early to probe)."""

    def __init__(self, inner: CenterFaceDetector) -> None:
        self.inner = inner
        self.gate = threading.Event()

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        self.gate.wait(30)
        return self.inner.detect(frames, threshold, timings)


def test_wedged_detector_fails_readiness_then_liveness(engine: MaskingEngine, astronaut_image: Image,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error
    import urllib.request

    from imask.ops import runtime as runtime_module
    from imask.ops.runtime import ServiceRuntime
    from imask.ops.settings import RecorderSettings

    monkeypatch.setattr(runtime_module, "WEDGED_AFTER_S", 0.0)  # production: 60 s
    assert isinstance(engine.detector, CenterFaceDetector)
    stuck = StuckDetector(engine.detector)
    eng = MaskingEngine(default_variant(), stuck, detector_timeout_s=0.05)
    runtime = ServiceRuntime("probe", RecorderSettings(ops_port=0)).start()
    runtime.watch_engine(eng)
    runtime.ready.set()

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{runtime.details['ops_port']}{path}", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert (status("/readyz"), status("/healthz")) == (200, 200)
        gauge = metrics.MODEL_HEALTHY.labels("default")
        assert eng.process([FrameInput("w", 0, astronaut_image)])[0].fail_closed
        assert gauge._value.get() == 0
        # Out of rotation while the abandoned run occupies the detector; wedged past the bound: not alive.
        assert (status("/readyz"), status("/healthz")) == (503, 503)
        assert eng.wedged(0.0) and not eng.wedged(3600)
        stuck.gate.set()
        assert eng._inflight is not None
        eng._inflight.exception(timeout=30)
        assert (status("/readyz"), status("/healthz"), gauge._value.get()) == (200, 200, 1)
    finally:
        stuck.gate.set()
        runtime.close()
        eng.close()


def test_detect_every_k_plans_a_batch_of_one_camera_in_order(engine: MaskingEngine, astronaut_image: Image) -> None:
    assert isinstance(engine.detector, CenterFaceDetector)
    eng = MaskingEngine(engine.variant.with_overrides(detect_every=3, orientation="upright"),
                        CountingDetector(engine.detector))
    batch = [FrameInput("batched", s, astronaut_image) for s in range(7)]
    assert [r.detected for r in eng.process(batch)] == [True, False, False, True, False, False, True]
    assert all(r.faces for r in eng.process([FrameInput("batched", 7 + s, astronaut_image) for s in range(3)]))
    eng.close()


def test_detector_backends_are_chosen_by_name() -> None:
    from imask.engine.detectors import FAMILIES, build_detector

    assert "centerface" in FAMILIES
    built = build_detector(default_variant().detector_request, "cpu")
    assert isinstance(built.detector, CenterFaceDetector) and built.execution_provider == "CPUExecutionProvider"
    assert built.detector.input_channels == "RGB"
    with pytest.raises(ValueError, match="unknown detector 'yunet'"):
        unknown = default_variant().with_overrides(detector="yunet", close_up=False, second_look=False)
        build_detector(unknown.detector_request, "cpu")
