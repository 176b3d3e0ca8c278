"""End-of-stream markers carry no pixels: one that does is refused by the envelope check."""

from __future__ import annotations

from imask.frames.envelope import Rejected, end_of_stream, parse_frame
from imask.media import encode_jpeg
from imask.ops.settings import FrameLimits
from imask.types import Image
from imask.v1 import frames_pb2 as pb

LIMITS = FrameLimits()


def test_marker_with_pixels_is_refused(astronaut_image: Image) -> None:
    marker = end_of_stream("cam", 7)
    marker.data = encode_jpeg(astronaut_image, 85)
    rejected = parse_frame(b"cam", marker.SerializeToString(), LIMITS)
    assert isinstance(rejected, Rejected) and rejected.reason == pb.DROP_REASON_INVALID_FIELDS
    assert "marker carries" in rejected.detail and (rejected.camera_id, rejected.seq) == ("cam", 7)
