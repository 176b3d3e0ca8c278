"""Sample media: the shared clips beside the repo when present, else a clip synthesised from a face photo that
ships inside scikit-image (so a fresh clone without ../shared/data still runs end to end)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from imask.devstack.settings import REPO_ROOT
from imask.types import Image

SHARED_DATA = Path(os.environ.get("IMASK_TEST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

DEFAULT_CLIPS = {
    "hamilton": "video/short_hamilton_clip.mp4",
    "crowd1080": "video/facenet_pytorch_crowd_1080p.mp4",
    "megamind": "video/Megamind.avi",
    "asl": "video/intel_ccby4/asl_gestures/{first}",
}


def shared_data() -> Path | None:
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def default_sources() -> dict[str, Path]:
    root = shared_data()
    if root is None:
        return {}
    out = {}
    for camera, rel in DEFAULT_CLIPS.items():
        if "{first}" in rel:
            folder = root / Path(rel).parent
            clips = sorted(folder.glob("*.mkv")) if folder.is_dir() else []
            if clips:
                out[camera] = clips[0]
        elif (root / rel).is_file():
            out[camera] = root / rel
    return out


def astronaut() -> Image:
    """A real face photo bundled in scikit-image's wheel, as BGR."""
    from skimage import data

    rgb = data.astronaut()  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def synthetic_clip(path: Path, frames: int = 60, fps: float = 15.0, size: tuple[int, int] = (640, 360)) -> Path:
    """A clip of the astronaut photo panning and zooming slowly: one real face that moves."""
    base = astronaut()
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"cannot write {path}")
    try:
        for i in range(frames):
            zoom = 0.75 + 0.2 * np.sin(i / frames * np.pi)
            scaled = cv2.resize(base, None, fx=zoom, fy=zoom)
            canvas = np.full((height, width, 3), 40, np.uint8)
            # Pan horizontally: the photo's left edge at x0 (may be off-canvas on either side).
            x0 = int((width - scaled.shape[1]) / 2 + 120 * np.sin(i / frames * 2 * np.pi))
            left = max(0, x0)
            crop = scaled[:height, max(0, -x0): max(0, -x0) + width - left]
            canvas[: crop.shape[0], left: left + crop.shape[1]] = crop
            writer.write(canvas)
    finally:
        writer.release()
    return path
