"""The raw-frame envelope check (imask.frames.envelope): what is refused, with which drop reason."""

from __future__ import annotations

import numpy as np
import pytest

from imask.frames.envelope import Rejected, make_frame, parse_frame
from imask.media import encode_jpeg
from imask.ops.settings import (
    FrameLimits,
)
from imask.v1 import frames_pb2 as pb

LIMITS = FrameLimits(max_frame_bytes=2_000_000, max_width=2000, max_height=2000)


def _frame(**changes: object) -> pb.Frame:
    frame = make_frame("cam-1", 7, encode_jpeg(np.zeros((8, 8, 3), np.uint8), 80), 8, 8, 1)
    for key, value in changes.items():
        setattr(frame, key, value)
    return frame


@pytest.mark.parametrize("key, value, reason", [
    (b"cam-1", b"\xff\xff\xff garbage", pb.DROP_REASON_UNDECODABLE_ENVELOPE),
    (b"cam-1", _frame().SerializeToString()[:20], pb.DROP_REASON_UNDECODABLE_ENVELOPE),
    (b"cam-1", _frame(schema_version=9).SerializeToString(), pb.DROP_REASON_SCHEMA_VERSION),
    (b"other", _frame().SerializeToString(), pb.DROP_REASON_INVALID_FIELDS),
    (b"cam-1", _frame(encoding=pb.ENCODING_UNSPECIFIED).SerializeToString(), pb.DROP_REASON_INVALID_FIELDS),
    (b"cam-1", _frame(width=5000).SerializeToString(), pb.DROP_REASON_OVERSIZE),
    (b"cam-1", _frame(data=b"x" * 2_100_000).SerializeToString(), pb.DROP_REASON_OVERSIZE),
    (b"cam-1", None, pb.DROP_REASON_UNDECODABLE_ENVELOPE),
])
def test_envelope_rejections(key: bytes, value: bytes | None, reason: int) -> None:
    parsed = parse_frame(key, value, LIMITS)
    assert isinstance(parsed, Rejected), parsed
    assert parsed.reason == reason and parsed.detail


def test_valid_envelope_passes() -> None:
    parsed = parse_frame(b"cam-1", _frame().SerializeToString(), LIMITS)
    assert isinstance(parsed, pb.Frame) and parsed.seq == 7
