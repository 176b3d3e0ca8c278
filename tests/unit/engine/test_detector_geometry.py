"""What the detector is fed: channel order, sizes (small frames enlarged), tiles, untrustworthy outputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from imask.engine import FrameInput, MaskingEngine, default_variant
from imask.engine.detectors.base import DetectorGeometry, DetectorOutputError
from imask.engine.detectors.centerface.detector import CenterFaceDetector
from imask.engine.detectors.centerface.model import LoadedModel
from imask.engine.detectors.geometry import detector_size, tile_grid
from imask.types import Image


class RecordingSession:
    """The real ONNX Runtime session; remembers what it was fed and can corrupt what it returns."""

    def __init__(self, inner: Any, corrupt: float | None = None) -> None:
        self.inner = inner
        self.corrupt = corrupt
        self.inputs: list[np.ndarray] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray], options: Any = None) -> list[np.ndarray]:
        self.inputs.append(next(iter(feeds.values())).copy())
        outputs = self.inner.run(names, feeds, options)
        if self.corrupt is not None:
            outputs[0] = outputs[0].copy()
            outputs[0][0, 0, 0, 0] = self.corrupt
        return list(outputs)


def _recording(engine: MaskingEngine, corrupt: float | None = None,
               geometry: DetectorGeometry | None = None) -> tuple[CenterFaceDetector, RecordingSession]:
    assert isinstance(engine.detector, CenterFaceDetector)
    model = engine.detector.model
    session = RecordingSession(model.session, corrupt)
    recorded = LoadedModel(session, model.input_name, model.output_names, model.execution_provider,  # type: ignore[arg-type]
                           model.sha256)
    return CenterFaceDetector(recorded, geometry or engine.detector.geometry), session


def test_detector_is_fed_rgb(engine: MaskingEngine) -> None:
    # CenterFace was trained on RGB; frames are BGR. A pure-red BGR frame must reach the model in channel 0.
    red_bgr = np.zeros((352, 640, 3), np.uint8)
    red_bgr[..., 2] = 255
    detector, session = _recording(engine)
    detector.detect([red_bgr], 0.5)
    blob = session.inputs[0]
    assert blob.shape == (1, 3, 352, 640)
    assert blob[0, 0].mean() == 255 and blob[0, 1].max() == 0 and blob[0, 2].max() == 0
    assert detector.input_channels == "RGB"


def test_rgb_finds_the_face_with_more_confidence_than_bgr(engine: MaskingEngine, astronaut_image: Image) -> None:
    rgb_score = engine.detector.detect([astronaut_image], 0.05)[0].scores.max()
    swapped = engine.detector.detect([np.ascontiguousarray(astronaut_image[:, :, ::-1])], 0.05)[0]
    assert rgb_score > (swapped.scores.max() if len(swapped) else 0.0)


@pytest.mark.parametrize(("size", "expected"), [
    ((416, 416), (480, 480)),    # small frames are enlarged to the pixel budget (640x360)
    ((200, 150), (384, 288)),    # ... by at most 2x
    ((1280, 720), (640, 352)),   # 720p shrinks to 640x360, snapped to 352 rows
    ((1920, 1080), (960, 544)),  # large frames keep at least half their size (max_downscale 2)
    ((3840, 2160), (1280, 704)),  # never beyond 1280 px a side: tiles handle the rest
])
def test_detector_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert detector_size(*size, DetectorGeometry()) == expected


def test_small_frames_are_enlarged_before_detection(engine: MaskingEngine) -> None:
    detector, session = _recording(engine)
    detector.detect([np.zeros((416, 416, 3), np.uint8)], 0.5)
    assert session.inputs[0].shape[2:] == (480, 480)


def test_enlarging_finds_small_faces(engine: MaskingEngine, data_dir: Path) -> None:
    # WIDER FACE crowds squashed to 416x416: enlarged to 480x480 the detector finds more of the < 32 px faces than
    # shrunk to fit 640x384 (384x384) as before.
    truth = json.loads((data_dir / "wider_dev" / "gt.json").read_text())
    shrunk = CenterFaceDetector(engine.detector.model, replace(engine.detector.geometry, pixel_budget=384 * 384,
                                                               max_upscale=1.0))
    found = {"enlarged": 0, "shrunk": 0}
    for name in sorted(truth)[:30]:
        image = cv2.imread(str(data_dir / "wider_dev" / name))
        small = [f["box"] for f in truth[name]["faces"] if not f["invalid"] and 16 <= max(f["box"][2:]) < 32]
        for key, detector in (("enlarged", engine.detector), ("shrunk", shrunk)):
            boxes = detector.detect([image], 0.2)[0].boxes
            found[key] += sum(bool(((boxes[:, 0] <= x + w / 2) & (x + w / 2 <= boxes[:, 2]) & (boxes[:, 1] <= y + h / 2)
                                    & (y + h / 2 <= boxes[:, 3])).any()) for x, y, w, h in small)
    assert found["enlarged"] > 1.05 * found["shrunk"], found


def test_tile_grid_covers_the_frame_with_overlap() -> None:
    tiles = tile_grid(3840, 2160, 640, 0.25)
    covered = np.zeros((2160, 3840), bool)
    for x1, y1, x2, y2 in tiles:
        assert (x2 - x1, y2 - y1) == (640, 640)
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    # Any 160 px square (a quarter tile) lies whole inside some tile.
    for x in range(0, 3840 - 160, 97):
        for y in range(0, 2160 - 160, 89):
            assert any(x1 <= x and x + 160 <= x2 and y1 <= y and y + 160 <= y2 for x1, y1, x2, y2 in tiles)
    assert tile_grid(500, 300, 640, 0.25) == [(0, 0, 500, 300)]


def test_tiles_find_every_small_face_of_a_4k_frame(engine: MaskingEngine, astronaut_image: Image) -> None:
    face = cv2.resize(astronaut_image[60:180, 190:300], (24, 26), interpolation=cv2.INTER_AREA)
    frame = np.full((2160, 3840, 3), 100, np.uint8)
    spots = [(200 + (i % 8) * 460, 150 + (i // 8) * 500) for i in range(32)]
    for x, y in spots:
        frame[y:y + 26, x:x + 24] = face
    tiled = MaskingEngine(replace(default_variant(), tile=640), CenterFaceDetector(
        engine.detector.model, replace(engine.detector.geometry, tile=640)), detector_timeout_s=None)
    whole_only = engine.process([FrameInput("4k-whole", 0, frame)])[0]
    result = tiled.process([FrameInput("4k", 0, frame)])[0]
    tiled.close()

    def covered(faces: list[Any]) -> int:
        return sum(any(f.box[0] <= x + 12 <= f.box[2] and f.box[1] <= y + 13 <= f.box[3] for f in faces)
                   for x, y in spots)

    assert covered(result.faces) == len(spots)
    assert covered(whole_only.faces) < len(spots) // 2  # shrunk to 1280 px the 24 px faces are 8 px: lost


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_detector_output_is_an_error(engine: MaskingEngine, bad: float) -> None:
    detector, _ = _recording(engine, corrupt=bad)
    with pytest.raises(DetectorOutputError, match="non-finite"):
        detector.detect([np.zeros((360, 640, 3), np.uint8)], 0.2)


def test_non_finite_output_fails_the_frame_closed(engine: MaskingEngine, astronaut_image: Image) -> None:
    detector, _ = _recording(engine, corrupt=float("nan"))
    eng = MaskingEngine(engine.variant, detector)
    result = eng.process([FrameInput("nan", 0, astronaut_image)])[0]
    eng.close()
    assert result.fail_closed and result.fail_closed_reason == "detector_error"
    assert np.all(result.image == result.image.flat[0])  # nothing of the input survives


def test_the_sd_variant_reads_576p_at_its_own_size() -> None:
    """576p surveillance heads are 7-15 px: the default shrinks such frames to 0.72x, the sd variant does not."""
    from imask.engine.variants import get_variant

    assert detector_size(768, 576, get_variant("sd").geometry) == (768, 576)
    assert detector_size(768, 576, get_variant("default").geometry)[0] < 600
    assert get_variant("sd").context_threshold == 0.1  # at 0.03: 228 masks a frame on textures
