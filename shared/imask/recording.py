"""Writing masked frames into one playable MP4 per camera (used by the recorder service)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from imask.types import Image

log = logging.getLogger(__name__)


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
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)
        self.last_seq = seq
        self.last_capture_us = max(self.last_capture_us, capture_us)
        self.frames += 1
        self.last_write = time.monotonic()
        return True

    def close(self) -> Path:
        self.writer.release()
        self.partial.replace(self.path)
        log.info("recording closed", extra={"camera": self.camera_id, "path": str(self.path), "frames": self.frames,
                                            "duplicates_skipped": self.duplicates})
        return self.path


def open_recording(out_dir: Path, camera_id: str, first_seq: int, fps: float, image: np.ndarray) -> CameraRecording:
    """A new file for a camera's stream from `first_seq`. A finished file of the same name (an earlier stream of
    the camera: its ingest restarted and counts from 0 again) is never overwritten: the new one gets `-2`, `-3`...
    A leftover .partial of the same name (a recorder that crashed before closing it, now redoing those frames from
    the uncommitted offset) is overwritten."""
    out_dir.mkdir(parents=True, exist_ok=True)
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
        raise OSError(f"cannot open video writer for {partial}")
    return CameraRecording(camera_id, path, fps, size, writer)


def recording_of(stem: str, camera_ids: set[str]) -> bool:
    """Whether a recording's file stem (`cam`, `cam_from120`, `cam-2`, `cam_from120-2`) is one of these cameras'."""
    return any(re.fullmatch(re.escape(safe_name(c)) + r"(_from\d+)?(-\d+)?", stem) for c in camera_ids)


def committable(position: int, partition: int, recordings: list[CameraRecording]) -> int:
    """The offset the recorder may commit on a partition: past what it consumed, but never past the first frame of
    a file still open there (a crash loses an open file; its frames must be read again)."""
    held = [r.first_offset for r in recordings if r.partition == partition and r.first_offset >= 0]
    return min([position, *held])
