"""Opening camera sources with explicit timeouts, and the reconnect backoff.

Facts measured on this machine with OpenCV's FFmpeg backend (see docs/ARCHITECTURE.md, live cameras):
- OPENCV_FFMPEG_CAPTURE_OPTIONS is read at each open; any value without `rtsp_transport;tcp` silently switches
  RTSP to UDP, so TCP is always written into it. Lowering analyzeduration/probesize cuts opening from ~1.1 s to
  ~0.2-0.5 s.
- The open/read timeouts are passed per capture (CAP_PROP_OPEN_TIMEOUT_MSEC / CAP_PROP_READ_TIMEOUT_MSEC).
  Against a frozen server a read returns after the read timeout, at first still with buffered frames, then
  False; after a failed read the capture is dead (each further read blocks a full timeout): release and reopen.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import cv2

from imask.cameras.config import CameraConfig
from imask.media import VideoInfo

# FFmpeg's and OpenCV's own stderr chatter ("Connection refused" per retry) is replaced by our JSON logs.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
_FFMPEG_OPTIONS = "rtsp_transport;tcp|analyzeduration;500000|probesize;500000"
_env_lock = threading.Lock()


class SourceError(RuntimeError):
    """A source that could not be opened; the message is what an operator needs to see."""


def _ensure_capture_options() -> None:
    with _env_lock:
        current = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "")
        if "rtsp_transport" not in current:
            # An operator's own options are kept, but never without TCP (UDP loses frames on real networks).
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "|".join(x for x in (current, _FFMPEG_OPTIONS) if x)


def open_source(config: CameraConfig) -> tuple[cv2.VideoCapture, VideoInfo]:
    url = config.url
    if url.isascii() and url.isdigit():  # a webcam index ("²".isdigit() is True too)
        cap = cv2.VideoCapture(int(url))
    elif config.is_stream:
        _ensure_capture_options()
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(config.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(config.read_timeout_s * 1000)])
    else:
        if not Path(url).is_file():
            raise SourceError(f"no such file: {url}")
        cap = cv2.VideoCapture(url)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open {config.redacted_url} "
                          "(unreachable, refused, wrong path or not a video)")
    if config.is_stream and cap.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0:
        # Opened, but probing timed out before the first picture: reads would fail. Measured against a server
        # still starting its encoder (the first client of a mount).
        cap.release()
        raise SourceError(f"{config.redacted_url} answered but sent no video within {config.open_timeout_s} s")
    fps = cap.get(cv2.CAP_PROP_FPS)
    info = VideoInfo(fps=fps if 0 < fps < 1000 else 25.0, width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     frames=max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))))
    return cap, info


class Backoff:
    """Capped exponential backoff with jitter (half to full step): cameras behind one dead switch do not retry
    in step."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2 ** self.attempt)
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
