"""Fail closed on every path: markers carry no pixels, per-frame failures become drop records, the engine thread
of mask-api survives an exception. (The broker-refused output is in test_worker_poison.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imask.engine import EngineResult, FrameInput, MaskingEngine
from imask.frames.clock import now_us
from imask.frames.envelope import Rejected, end_of_stream, make_frame, parse_frame
from imask.maskapi.executor import EngineExecutor, EngineFailed
from imask.media import encode_jpeg
from imask.ops.settings import FrameLimits
from imask.pipeline.processor import FrameProcessor, Inbound, ProcessorOptions
from imask.types import Image
from imask.v1 import frames_pb2 as pb

LIMITS = FrameLimits()


def _inbound(frame: pb.Frame, offset: int = 0) -> Inbound:
    return Inbound(frame.camera_id.encode(), frame.SerializeToString(), "raw", 0, offset, now_us())


def _frame(image: Image, camera: str = "cam", seq: int = 0) -> pb.Frame:
    return make_frame(camera, seq, encode_jpeg(image, 85), image.shape[1], image.shape[0], now_us())


def test_marker_with_pixels_is_refused(astronaut_image: Image) -> None:
    marker = end_of_stream("cam", 7)
    marker.data = encode_jpeg(astronaut_image, 85)
    rejected = parse_frame(b"cam", marker.SerializeToString(), LIMITS)
    assert isinstance(rejected, Rejected) and rejected.reason == pb.DROP_REASON_INVALID_FIELDS
    assert "marker carries" in rejected.detail and (rejected.camera_id, rejected.seq) == ("cam", 7)


def test_marker_with_pixels_is_dead_lettered_not_passed_on(engine: MaskingEngine, astronaut_image: Image) -> None:
    marker = end_of_stream("cam", 7)
    marker.data = encode_jpeg(astronaut_image, 85)
    processor = FrameProcessor(engine, ProcessorOptions("w", LIMITS))
    [outcome] = processor.process([_inbound(marker)])
    assert outcome.masked is None and outcome.drop is not None and not outcome.drop.raw


def test_marker_out_is_built_from_ids_only(engine: MaskingEngine) -> None:
    marker = end_of_stream("cam", 3, source_fps=12.5)
    marker.width, marker.height = 640, 480  # fields beyond the ids are not copied
    [outcome] = FrameProcessor(engine, ProcessorOptions("w", LIMITS)).process([_inbound(marker)])
    assert outcome.masked is not None
    out = outcome.masked.frame
    assert out.end_of_stream and (out.camera_id, out.seq, out.source_fps) == ("cam", 3, 12.5)
    assert not out.data and out.width == 0 and out.height == 0


class BrokenEngine:
    """A real engine whose `process` raises on chosen calls (a bug outside its guards)."""

    def __init__(self, inner: MaskingEngine, fail_calls: set[int]) -> None:
        self.inner = inner
        self.fail_calls = fail_calls
        self.calls = 0
        self.variant = inner.variant
        self.execution_provider = inner.execution_provider

    def process(self, frames: list[FrameInput], *args: Any) -> list[EngineResult]:
        call, self.calls = self.calls, self.calls + 1
        if call in self.fail_calls:
            raise RuntimeError("simulated bug")
        return self.inner.process(frames, *args)

    def forget(self, camera_id: str) -> None:
        self.inner.forget(camera_id)


def test_engine_exception_becomes_internal_error_drops(engine: MaskingEngine, astronaut_image: Image) -> None:
    processor = FrameProcessor(BrokenEngine(engine, {0}), ProcessorOptions("w", LIMITS))  # type: ignore[arg-type]
    batch = [_inbound(_frame(astronaut_image, seq=i), i) for i in range(3)]
    outcomes = processor.process(batch)
    assert [o.drop.reason for o in outcomes if o.drop] == [pb.DROP_REASON_INTERNAL_ERROR] * 3
    assert [(o.camera_id, o.seq) for o in outcomes] == [("cam", 0), ("cam", 1), ("cam", 2)]
    # The next batch is masked normally: one poison batch does not stop the processor.
    [ok] = processor.process([_inbound(_frame(astronaut_image, seq=3), 3)])
    assert ok.masked is not None and ok.masked.faces_masked == 1


def test_masked_frame_over_the_message_size_is_dropped(engine: MaskingEngine) -> None:
    noise = np.random.default_rng(1).integers(0, 255, (480, 640, 3), np.uint8)
    options = ProcessorOptions("w", LIMITS, max_message_bytes=60_000)
    [outcome] = FrameProcessor(engine, options).process([_inbound(_frame(noise))])
    assert outcome.drop is not None and outcome.drop.reason == pb.DROP_REASON_OVERSIZE
    assert "broker's message size" in outcome.drop.detail


def test_executor_survives_an_engine_exception(engine: MaskingEngine, astronaut_image: Image) -> None:
    executor = EngineExecutor(BrokenEngine(engine, {0}))  # type: ignore[arg-type]
    spec = engine.variant.mask

    async def two_calls() -> tuple[BaseException | None, EngineResult]:
        first: BaseException | None = None
        try:
            await executor.submit(FrameInput("a", 0, astronaut_image), spec, None, None)
        except EngineFailed as exc:
            first = exc
        result, _ = await asyncio.wait_for(executor.submit(FrameInput("a", 1, astronaut_image), spec, None, None),
                                           timeout=30)
        return first, result

    try:
        failed, result = asyncio.run(two_calls())
    finally:
        executor.close()
    assert isinstance(failed, EngineFailed)
    assert len(result.faces) == 1 and not result.fail_closed


@pytest.mark.parametrize("value", [b"", b"\x00\x01garbage", b"\x12\x03cam\x18\x05\xff"])
def test_any_bytes_end_as_one_outcome(engine: MaskingEngine, value: bytes) -> None:
    [outcome] = FrameProcessor(engine, ProcessorOptions("w", LIMITS)).process(
        [Inbound(b"cam", value, "raw", 0, 0, now_us())])
    assert outcome.drop is not None and outcome.masked is None


@pytest.mark.parametrize("camera", ["a/b", "../etc", "cam era", "", "x" * 129, "caméra", "a\nb", "cam\n",
                                    "x" * 128 + "\n"])
def test_camera_ids_outside_the_one_pattern_are_refused(astronaut_image: Image, camera: str) -> None:
    frame = _frame(astronaut_image, camera=camera)
    rejected = parse_frame(None, frame.SerializeToString(), LIMITS)
    assert isinstance(rejected, Rejected) and rejected.reason == pb.DROP_REASON_INVALID_FIELDS
    assert len(rejected.camera_id) <= 128


@pytest.mark.parametrize("camera", ["cam\n", "x" * 128 + "\n", "cam\r", "cam\t"])
def test_a_trailing_newline_is_not_part_of_a_camera_id(camera: str) -> None:
    """Python's `$` matches before a final newline: every place that takes an id must refuse it (producers, the
    envelope check, cameras files)."""
    from pydantic import ValidationError

    from imask.cameras.config import CameraConfig
    from imask.frames.ids import check_camera_id, is_camera_id

    assert not is_camera_id(camera)
    with pytest.raises(ValueError, match="camera_id"):
        check_camera_id(camera)
    with pytest.raises(ValidationError):
        CameraConfig(camera_id=camera, url="rtsp://cam.example/1")


def test_camera_ids_of_the_pattern_pass(astronaut_image: Image) -> None:
    for camera in ("lobby", "site-3.cam_07", "grpc:client:lobby", "x" * 128):
        assert not isinstance(parse_frame(None, _frame(astronaut_image, camera=camera).SerializeToString(),
                                          LIMITS), Rejected)


def test_corrupt_jpeg_data_is_refused_not_guessed() -> None:
    # Bytes flipped inside the entropy-coded data: OpenCV still returns a picture (with a visible face, in the
    # cases the fuzz suite found); the strict decoder refuses it.
    import cv2
    from fuzzing import face_pool

    from imask.media import ImageError, decode_image

    data = bytearray(face_pool()[2].data)
    rng = np.random.default_rng(139)
    refused = 0
    for _ in range(200):
        mutated = bytearray(data)
        for pos in rng.integers(700, len(data) - 4, 6):
            mutated[pos] = int(rng.integers(0, 256))
        if cv2.imdecode(np.frombuffer(bytes(mutated), np.uint8), cv2.IMREAD_COLOR) is None:
            continue
        try:
            decode_image(bytes(mutated), 4096, 4096)
        except ImageError as exc:
            assert "corrupt JPEG" in str(exc)
            refused += 1
    assert refused >= 100


@pytest.mark.parametrize("orientation", [1, 3, 6])
def test_exif_orientation_refused_in_frames_applied_in_files(orientation: int) -> None:
    import cv2
    from fuzzing import _exif_orientation, face_pool

    from imask.media import ImageError, decode_image, exif_orientation

    wide = face_pool()[1].pixels[:, :120]  # 120x160: a quarter turn changes the size
    data = _exif_orientation(cv2.imencode(".jpg", wide)[1].tobytes(), orientation)
    assert exif_orientation(data) == orientation
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # what viewers show
    shown = decode_image(data, 4096, 4096, exif="apply")
    assert shown.shape == expected.shape and np.abs(shown.astype(int) - expected.astype(int)).mean() < 2
    if orientation == 1:
        assert decode_image(data, 4096, 4096).shape == wide.shape
    else:  # a frame with a rotation tag could show its faces upside down to the detector: refused
        with pytest.raises(ImageError, match="EXIF orientation"):
            decode_image(data, 4096, 4096)


def test_file_with_a_lying_rotation_tag_is_masked_both_ways(engine: MaskingEngine, tmp_path: Path) -> None:
    import cv2
    from fuzzing import _exif_orientation, face_pool

    from imask.evaluation.leakcheck import check_leak
    from imask.filemask import mask_files

    # An upright face tagged "rotate 180": shown upside down, where CenterFace does not find it.
    source = tmp_path / "flipped.jpg"
    source.write_bytes(_exif_orientation(face_pool()[1].data, 3))
    [report] = mask_files(engine, [source], tmp_path / "out", progress=False)
    assert report.output is not None and report.faces >= 1
    shown = cv2.imread(str(source), cv2.IMREAD_COLOR)
    out = cv2.imread(str(report.output), cv2.IMREAD_COLOR)
    assert check_leak(shown, out).reliable_leaks == []
    assert check_leak(np.ascontiguousarray(shown[::-1, ::-1]), np.ascontiguousarray(out[::-1, ::-1])).leaked == []
