"""Decoding pictures (imask.media): formats and sizes sniffed; bad, oversized, corrupt or rotated inputs refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from imask.media import ImageError, decode_image, encode_jpeg, sniff_size
from imask.types import Image


def test_sniff_and_decode(astronaut_image: Image) -> None:
    jpeg = encode_jpeg(astronaut_image, 90)
    assert sniff_size(jpeg) == ("jpeg", 512, 512)
    _ok, png = cv2.imencode(".png", astronaut_image)
    assert sniff_size(png.tobytes()) == ("png", 512, 512)
    assert decode_image(jpeg, 2000, 2000).shape == (512, 512, 3)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x00" * 100, "not a JPEG or PNG"),
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:2] + bytes(np.random.default_rng(1).integers(0, 255, 300, dtype=np.uint8)), "corrupt"),
    (lambda b: b"", "not a JPEG"),
])
def test_bad_images_are_refused(astronaut_image: Image, mutate: object, message: str) -> None:
    data = mutate(encode_jpeg(astronaut_image, 90))  # type: ignore[operator]
    with pytest.raises(ImageError, match=message):
        decode_image(data, 2000, 2000)


def test_dimension_bomb_refused_before_decoding() -> None:
    huge = np.zeros((3000, 100, 3), np.uint8)
    with pytest.raises(ImageError, match="exceeds"):
        decode_image(encode_jpeg(huge, 50), 2000, 2000)


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
