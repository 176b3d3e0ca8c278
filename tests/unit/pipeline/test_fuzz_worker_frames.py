"""Fuzzing the worker's frame processing with hypothesis (inputs, strategies and the shared property:
tests/fuzzing.py): no crash, no hang, exactly one outcome per input, and no output carries the input's face."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fuzzing import (
    CAMERAS,
    EXAMPLES,
    FUZZ,
    Encoded,
    Tally,
    _decoded,
    assert_no_face_out,
    image_bytes,
)
from hypothesis import given, note
from hypothesis import strategies as st

from imask.engine import MaskingEngine
from imask.frames.clock import now_us
from imask.ops.settings import FrameLimits
from imask.pipeline.processor import FrameProcessor, Inbound, ProcessorOptions
from imask.v1 import frames_pb2 as pb


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[bytes | None, bytes, Encoded, bool]:
    """Most envelopes are well formed (only their image bytes vary) so most inputs reach the engine; the rest break
    one thing: the schema, the id, the key, the encoding, the declared size, the marker flag, the protobuf."""
    data, enc, intact = draw(image_bytes())
    height, width = enc.pixels.shape[:2]
    broken = draw(st.sampled_from(["none"] * 6 + ["schema", "camera", "key", "encoding", "size", "marker",
                                                  "protobuf"]))
    camera = draw(st.text(max_size=140)) if broken == "camera" else draw(st.sampled_from(CAMERAS))
    frame = pb.Frame(
        schema_version=draw(st.integers(0, 5)) if broken == "schema" else 1, camera_id=camera,
        seq=draw(st.integers(0, 2**63 - 1)), capture_ts_us=draw(st.integers(0, 2**62)), ingest_ts_us=now_us(),
        encoding=draw(st.integers(0, 9)) if broken == "encoding" else draw(st.sampled_from(
            [pb.ENCODING_JPEG, pb.ENCODING_PNG])),
        width=draw(st.integers(0, 9000)) if broken == "size" else width,
        height=draw(st.integers(0, 9000)) if broken == "size" else height,
        data=data, end_of_stream=broken == "marker", trace_id=draw(st.text(max_size=40)))
    value = bytearray(frame.SerializeToString())
    if broken == "protobuf":
        for _ in range(draw(st.integers(1, 8))):
            value[draw(st.integers(0, len(value) - 1))] = draw(st.integers(0, 255))
    key = draw(st.binary(max_size=40)) if broken == "key" else draw(st.sampled_from([None, camera.encode()]))
    return key, bytes(value), enc, intact and broken in ("none", "key", "marker", "encoding")


@pytest.fixture(scope="module")
def worker_tally() -> Iterator[Tally]:
    tally = Tally("worker")
    yield tally
    tally.write()


def test_fuzz_worker_frames(engine: MaskingEngine, worker_tally: Tally) -> None:
    processor = FrameProcessor(engine, ProcessorOptions("fuzz", FrameLimits()))

    @FUZZ
    @given(envelopes())
    def one(case: tuple[bytes | None, bytes, Encoded, bool]) -> None:
        key, value, enc, intact = case
        note(f"picture {enc.name}, intact {intact}")
        outcomes = processor.process([Inbound(key, value, "raw", 0, 0, now_us())])
        assert len(outcomes) == 1
        outcome = outcomes[0]
        assert (outcome.masked is None) != (outcome.drop is None)
        if outcome.drop is not None:
            assert outcome.drop.reason != pb.DROP_REASON_UNSPECIFIED and outcome.drop.detail
            assert not outcome.drop.raw  # no raw bytes in drop records by default
            worker_tally.record(pb.DropReason.Name(outcome.drop.reason))
            return
        assert outcome.masked is not None
        out_frame = outcome.masked.frame
        if out_frame.end_of_stream:
            assert not out_frame.data, "an end-of-stream marker carried pixels out"
            worker_tally.record("end_of_stream")
            return
        worker_tally.record("fail_closed" if outcome.masked.fail_closed else "masked")
        inbound = pb.Frame.FromString(value)
        assert_no_face_out(worker_tally, _decoded(inbound.data), _decoded(out_frame.data),
                           enc.face if intact else None, outcome.masked.fail_closed)

    one()
    assert sum(worker_tally.outcomes.values()) >= EXAMPLES * 0.9  # hypothesis ran what it was asked to
