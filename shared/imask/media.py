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


def decode_image(data: bytes, max_width: int, max_height: int) -> Image:
    fmt, width, height = sniff_size(data)
    if width == 0 or height == 0:
        raise ImageError(f"{fmt} declares an empty image")
    if width > max_width or height > max_height:
        raise ImageError(f"{width}x{height} exceeds the limit {max_width}x{max_height}")
    if fmt == "jpeg" and data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        # libjpeg would happily return a half-grey frame for a truncated file; refuse it instead.
        raise ImageError("truncated JPEG: no end-of-image marker")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"corrupt {fmt}: decoder refused it")
    if image.shape[1] != width or image.shape[0] != height:
        raise ImageError(f"decoded {image.shape[1]}x{image.shape[0]} differs from header {width}x{height}")
    return image


def encode_jpeg(image: Image, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()


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


def read_image(path: str | Path) -> Image:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"cannot read image {path}")
    return image


def decode_any(data: bytes) -> Image:
    """Decode trusted bytes (our own output, benchmarks) without the input limits of decode_image."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError("undecodable image")
    return image
