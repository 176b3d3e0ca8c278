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
    frames: int = 0
    duplicates: int = 0
    last_write: float = field(default_factory=time.monotonic)

    @property
    def partial(self) -> Path:
        return self.path.with_suffix(".partial.mp4")

    def write(self, seq: int, image: Image) -> bool:
        if seq <= self.last_seq:
            self.duplicates += 1
            return False
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)
        self.last_seq = seq
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
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_name(camera_id) if first_seq == 0 else f"{safe_name(camera_id)}_from{first_seq}"
    path = out_dir / f"{stem}.mp4"
    size = (image.shape[1] // 2 * 2, image.shape[0] // 2 * 2)  # mpeg4 wants even dimensions
    partial = path.with_suffix(".partial.mp4")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"cannot open video writer for {partial}")
    return CameraRecording(camera_id, path, fps, size, writer)
