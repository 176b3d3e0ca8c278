"""Writing masked frames into one playable MP4 per camera (used by the recorder, `recording.recorder`).

A file that cannot be written completely (disk full, I/O error) raises `RecordingError` instead of being kept
broken: OpenCV's writer only *returns* False when FFmpeg fails to write a frame, and an MP4 whose index (written at
close) did not fit is unplayable as a whole, so every frame of it is lost, not only the ones after the failure. A
failed recording is never renamed to its final name and its partial is deleted (giving the space back); the
caller must not move offsets past its first frame (`recorder.committable` holds them there while it is open).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from imask.ops import metrics
from imask.types import Image

log = logging.getLogger(__name__)


class RecordingError(OSError):
    """A recording could not be opened, written or closed completely (disk full, I/O error): its frames are not
    on disk and must be read again."""


def _statvfs(path: Path) -> os.statvfs_result:
    """The filesystem holding `path` (its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.statvfs(path)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    stat = _statvfs(path)
    return stat.f_bavail * stat.f_frsize


def space_back(path: Path, want_bytes: int) -> bool:
    """Enough free space to resume after a failed write: `want_bytes`, or a quarter of a smaller filesystem."""
    stat = _statvfs(path)
    return stat.f_bavail * stat.f_frsize >= min(want_bytes, stat.f_blocks * stat.f_frsize // 4)


def _failure(kind: str, message: str, path: Path) -> RecordingError:
    metrics.RECORDING_ERRORS.labels(kind).inc()
    try:
        free = free_bytes(path)
    except OSError:
        free = -1
    log.error("recording failed", extra={"path": str(path), "kind": kind, "free_bytes": free, "error": message})
    return RecordingError(f"{message} ({path}; {free} bytes free)")


def safe_name(camera_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", camera_id)[:100] or "camera"


@dataclass
class CameraRecording:
    """One MP4 being written. Written under a .partial name and renamed when closed, so readers never see a
    half-written file; frames arriving again (at-least-once delivery) or late are skipped by sequence."""

    camera_id: str
    path: Path
    fps: float
    size: tuple[int, int]
    writer: cv2.VideoWriter
    last_seq: int = -1
    last_capture_us: int = 0
    frames: int = 0
    duplicates: int = 0
    last_write: float = field(default_factory=time.monotonic)
    opened: float = field(default_factory=time.monotonic)
    partition: int = -1
    first_offset: int = -1  # the input offset of its first frame: committed offsets stay below it until closed
    failed: bool = False

    @property
    def partial(self) -> Path:
        return self.path.with_suffix(".partial.mp4")

    def restarted(self, seq: int, capture_us: int) -> bool:
        """A frame that goes back in seq but forward in capture time belongs to a new stream of the camera (its
        ingest restarted without an end marker); a redelivered duplicate goes back in both."""
        return seq <= self.last_seq and capture_us > self.last_capture_us > 0

    def write(self, seq: int, image: Image, capture_us: int = 0) -> bool:
        if seq <= self.last_seq:
            self.duplicates += 1
            return False
        if self.failed:
            raise RecordingError(f"{self.partial} already failed; it is being read again")
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        if self.writer.write(image) is False:  # FFmpeg could not write (the disk is full, mostly)
            self.discard()
            raise _failure("write", f"frame {seq} of {self.camera_id} could not be written", self.partial)
        self.last_seq = seq
        self.last_capture_us = max(self.last_capture_us, capture_us)
        self.frames += 1
        self.last_write = time.monotonic()
        return True

    def close(self) -> Path:
        """Finish the file and give it its final name, once it holds every frame written to it; else discard it
        and raise `RecordingError` (its frames must be read again)."""
        if self.failed:
            raise RecordingError(f"{self.partial} failed earlier; nothing to close")
        self.writer.release()
        held = _frames_in(self.partial)
        if held != self.frames:  # the index did not fit (disk full at close) or frames went missing
            self.discard()
            raise _failure("close", f"{self.camera_id}: {held} of {self.frames} frames readable after closing",
                           self.partial)
        try:
            self.partial.replace(self.path)
        except OSError as exc:
            self.discard()
            raise _failure("close", f"could not rename to {self.path.name}: {exc}", self.partial) from exc
        log.info("recording closed", extra={"camera": self.camera_id, "path": str(self.path), "frames": self.frames,
                                            "duplicates_skipped": self.duplicates})
        return self.path

    def discard(self) -> None:
        """Drop a file that cannot be finished: release the writer and delete the partial (its space is needed)."""
        self.failed = True
        with contextlib.suppress(cv2.error):
            self.writer.release()
        self.partial.unlink(missing_ok=True)


def _frames_in(path: Path) -> int:
    """Frames a finished MP4 says it holds (its index); -1 when it cannot be opened (no index: unplayable)."""
    if not path.is_file() or path.stat().st_size == 0:
        return -1
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
    finally:
        cap.release()


def open_recording(out_dir: Path, camera_id: str, first_seq: int, fps: float, image: np.ndarray) -> CameraRecording:
    """A new file for a camera's stream from `first_seq`. A finished file of the same name (an earlier stream of
    the camera: its ingest restarted and counts from 0 again) is never overwritten: the new one gets `-2`, `-3`...
    A leftover .partial of the same name (a recorder that crashed before closing it, now redoing those frames from
    the uncommitted offset) is overwritten."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _failure("open", f"cannot create {out_dir}: {exc}", out_dir) from exc
    base = safe_name(camera_id) if first_seq == 0 else f"{safe_name(camera_id)}_from{first_seq}"
    stem, n = base, 1
    while (out_dir / f"{stem}.mp4").exists():
        n += 1
        stem = f"{base}-{n}"
    path = out_dir / f"{stem}.mp4"
    size = (image.shape[1] // 2 * 2, image.shape[0] // 2 * 2)  # mpeg4 wants even dimensions
    partial = path.with_suffix(".partial.mp4")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        partial.unlink(missing_ok=True)
        raise _failure("open", f"cannot open a video writer for {camera_id}", partial)
    return CameraRecording(camera_id, path, fps, size, writer)


def recording_of(stem: str, camera_ids: set[str]) -> bool:
    """Whether a recording's file stem (`cam`, `cam_from120`, `cam-2`, `cam_from120-2`) is one of these cameras'."""
    return any(re.fullmatch(re.escape(safe_name(c)) + r"(_from\d+)?(-\d+)?", stem) for c in camera_ids)

