"""Image and video helpers: header sniffing (before any decode), JPEG codec, video file reading."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from imask.types import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".gif"}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(ValueError):
    """Bytes that are not an image we accept."""


def sniff_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header alone, so a decompression bomb is refused before decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24:
            raise ImageError("truncated PNG header")
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data[:2] == b"\xff\xd8":
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                raise ImageError("corrupt JPEG: bad marker")
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if marker in _JPEG_SOF:
                if pos + 9 > len(data):
                    break
                height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
                return "jpeg", width, height
            pos += 2 + length
        raise ImageError("corrupt JPEG: no frame header")
    raise ImageError("not a JPEG or PNG image")


def decode_image(data: bytes, max_width: int, max_height: int, exif: str = "refuse") -> Image:
    """Checked decode of untrusted bytes: header sniffed first (no decompression bombs), JPEGs strictly.

    `exif`: what a JPEG's EXIF Orientation other than 1 gets. Frames (workers, mask-api) `refuse` it: cameras
    never send one, and a tag that turns the picture upside down would hide its faces from the detector (which
    finds upright faces). Files (`imask mask`) `apply` it, as photo viewers do, and are masked in both
    orientations (filemask)."""
    fmt, width, height = sniff_size(data)
    if width == 0 or height == 0:
        raise ImageError(f"{fmt} declares an empty image")
    if width > max_width or height > max_height:
        raise ImageError(f"{width}x{height} exceeds the limit {max_width}x{max_height}")
    if fmt == "jpeg" and data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        # libjpeg would happily return a half-grey frame for a truncated file; refuse it instead.
        raise ImageError("truncated JPEG: no end-of-image marker")
    orientation = exif_orientation(data) if fmt == "jpeg" else 1
    if orientation != 1 and exif == "refuse":
        raise ImageError(f"EXIF orientation {orientation}: frames must be sent upright, without a rotation tag")
    image = _decode_jpeg_strict(data) if fmt == "jpeg" else cv2.imdecode(np.frombuffer(data, np.uint8),
                                                                          cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"corrupt {fmt}: decoder refused it")
    if image.shape[1] != width or image.shape[0] != height:
        raise ImageError(f"decoded {image.shape[1]}x{image.shape[0]} differs from header {width}x{height}")
    return orient(image, orientation)


# EXIF orientation -> the transforms that make the stored pixels upright (as OpenCV's imread applies them).
_ORIENT: dict[int, tuple[int | None, int | None]] = {  # (flip code, rotate code), flip first
    2: (1, None), 3: (None, cv2.ROTATE_180), 4: (0, None), 5: (1, cv2.ROTATE_90_COUNTERCLOCKWISE),
    6: (None, cv2.ROTATE_90_CLOCKWISE), 7: (1, cv2.ROTATE_90_CLOCKWISE), 8: (None, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _decode_jpeg_strict(data: bytes) -> Image:
    """libjpeg-turbo with warnings as errors: OpenCV returns a picture for JPEGs whose entropy data is corrupt, and
    the fuzz suite found such pictures whose faces the detector misses while an independent detector still sees
    them (a corrupt input must be refused with a reason, not masked on a guess)."""
    import simplejpeg

    try:
        image: Image = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError as exc:
        raise ImageError(f"corrupt JPEG: {exc}") from None
    return image


def orient(image: Image, orientation: int) -> Image:
    """Stored pixels turned the way EXIF `orientation` says they are shown."""
    flip, rotate = _ORIENT.get(orientation, (None, None))
    if flip is not None:
        image = cv2.flip(image, flip)
    if rotate is not None:
        image = cv2.rotate(image, rotate)
    return np.ascontiguousarray(image)


def unorient(image: Image, orientation: int) -> Image:
    """The inverse of `orient`: shown pixels back to how they are stored."""
    flip, rotate = _ORIENT.get(orientation, (None, None))
    inverse = {cv2.ROTATE_90_CLOCKWISE: cv2.ROTATE_90_COUNTERCLOCKWISE,
               cv2.ROTATE_90_COUNTERCLOCKWISE: cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180: cv2.ROTATE_180}
    if rotate is not None:
        image = cv2.rotate(image, inverse[rotate])
    if flip is not None:
        image = cv2.flip(image, flip)
    return np.ascontiguousarray(image)


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation (1..8) of a JPEG, 1 when absent or unreadable; reads the APP1 segment only."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            tiff = data[pos + 10:pos + 2 + length]
            if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
                return 1
            order = "<" if tiff[:2] == b"II" else ">"
            ifd = struct.unpack(order + "I", tiff[4:8])[0]
            if ifd + 2 > len(tiff):
                return 1
            for i in range(struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]):
                entry = tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
                if len(entry) == 12 and struct.unpack(order + "H", entry[:2])[0] == 0x0112:
                    value = struct.unpack(order + "H", entry[8:10])[0]
                    return value if 1 <= value <= 8 else 1
            return 1
        if marker in (0xDA, 0xD9):  # image data starts: no EXIF before it
            return 1
        pos += 2 + length
    return 1


def read_image(path: str | Path, max_side: int = 65535) -> Image:
    """An image file, JPEG and PNG through the same checked decoder as frames; other formats through OpenCV."""
    data = Path(path).read_bytes()
    if not data:
        raise ImageError(f"{path} is empty")
    if data[:2] == b"\xff\xd8" or data[:8] == b"\x89PNG\r\n\x1a\n":
        return decode_image(data, max_side, max_side, exif="apply")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"cannot read image {path}")
    return image


def encode_jpeg(image: Image, quality: int) -> bytes:
    """Pixels as a baseline 4:2:0 JPEG. 8-bit BGR frames go through simplejpeg (libjpeg-turbo), with its fast
    integer DCT up to quality 90 (it loses accuracy above): ~20% less CPU than OpenCV's encoder at q85, sizes within
    1% (docs/ARCHITECTURE.md). Anything else (grey, BGRA, 16-bit) keeps OpenCV's conversions."""
    import simplejpeg

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ImageError("JPEG encoding failed")
        return buf.tobytes()
    try:
        data: bytes = simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality, colorspace="BGR",
                                             colorsubsampling="420", fastdct=quality <= 90)
    except (ValueError, TypeError) as exc:
        raise ImageError(f"JPEG encoding failed: {exc}") from None
    return data


@dataclass
class VideoInfo:
    fps: float
    width: int
    height: int
    frames: int


def open_video(source: str | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    """A file, a stream URL (rtsp://, http://) or a webcam index ("0")."""
    text = str(source)
    cap = cv2.VideoCapture(int(text)) if text.isdigit() else cv2.VideoCapture(text)
    if not cap.isOpened():
        raise ImageError(f"cannot open video source {source}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    info = VideoInfo(
        fps=fps if 0 < fps < 1000 else 25.0,
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        frames=max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))),
    )
    return cap, info


def iter_video(cap: cv2.VideoCapture) -> Iterator[Image]:
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def decode_any(data: bytes) -> Image:
    """Decode trusted bytes (our own output, benchmarks) without the input limits of decode_image."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError("undecodable image")
    return image
