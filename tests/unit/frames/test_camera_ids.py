"""Camera ids follow one pattern everywhere (imask.frames.ids): the envelope check, producers, cameras files."""

from __future__ import annotations

import pytest

from imask.frames.clock import now_us
from imask.frames.envelope import Rejected, make_frame, parse_frame
from imask.media import encode_jpeg
from imask.ops.settings import FrameLimits
from imask.types import Image
from imask.v1 import frames_pb2 as pb

LIMITS = FrameLimits()


def _frame(image: Image, camera: str = "cam", seq: int = 0) -> pb.Frame:
    return make_frame(camera, seq, encode_jpeg(image, 85), image.shape[1], image.shape[0], now_us())


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
