"""The worker's frame processing fails closed on every path: markers carry no pixels, per-frame failures become
drop records, any bytes end as one outcome. (The broker-refused output is in
tests/integration/test_worker_poison.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import BrokenEngine, textured
from imask.engine import MaskingEngine
from imask.frames.clock import now_us
from imask.frames.envelope import end_of_stream, make_frame
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
    noise = textured(480, 640, seed=1)
    options = ProcessorOptions("w", LIMITS, max_message_bytes=60_000)
    [outcome] = FrameProcessor(engine, options).process([_inbound(_frame(noise))])
    assert outcome.drop is not None and outcome.drop.reason == pb.DROP_REASON_OVERSIZE
    assert "broker's message size" in outcome.drop.detail


@pytest.mark.parametrize("value", [b"", b"\x00\x01garbage", b"\x12\x03cam\x18\x05\xff"])
def test_any_bytes_end_as_one_outcome(engine: MaskingEngine, value: bytes) -> None:
    [outcome] = FrameProcessor(engine, ProcessorOptions("w", LIMITS)).process(
        [Inbound(b"cam", value, "raw", 0, 0, now_us())])
    assert outcome.drop is not None and outcome.masked is None


def test_a_configured_rotation_reaches_the_engine_and_frames_meta(engine: MaskingEngine,
                                                                   astronaut_image: Image) -> None:
    upside_down = np.ascontiguousarray(astronaut_image[::-1, ::-1])
    frame = make_frame("ceiling", 0, encode_jpeg(upside_down, 90), 512, 512, now_us(), rotation=180)
    [outcome] = FrameProcessor(engine, ProcessorOptions("w", LIMITS)).process([_inbound(frame)])
    assert outcome.meta is not None and outcome.masked is not None
    assert outcome.meta.orientation == 180 and outcome.masked.faces_masked == 1
    (face,) = outcome.meta.detections
    assert face.score > 0.85  # found upright (upside down it scores 0.7)
    assert 512 - 270 - 5 < face.x1 < 512 - 178 + 5 and 512 - 177 - 5 < face.y1 < 512 - 57 + 5  # where it is


@pytest.mark.parametrize("rotation", [45, 360, 1])
def test_a_rotation_that_is_not_a_quarter_turn_is_dead_lettered(engine: MaskingEngine, astronaut_image: Image,
                                                                rotation: int) -> None:
    frame = make_frame("cam", 0, encode_jpeg(astronaut_image, 90), 512, 512, now_us(), rotation=rotation)
    [outcome] = FrameProcessor(engine, ProcessorOptions("w", LIMITS)).process([_inbound(frame)])
    assert outcome.drop is not None and outcome.drop.reason == pb.DROP_REASON_INVALID_FIELDS
    assert "rotation" in outcome.drop.detail
