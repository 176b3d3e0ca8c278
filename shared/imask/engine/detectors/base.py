"""What every detector family shares: its output, its timings, how frames are sized for it, the protocol the
engine calls, and the checks on the model files it loads. No family's code lives here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from imask.types import Image

FloatArray = npt.NDArray[np.float32]


class ModelError(RuntimeError):
    """The model file is missing, altered or cannot be loaded."""


class DetectorOutputError(RuntimeError):
    """The model returned something that cannot be trusted (NaN/Inf, wrong shapes): the frame fails closed."""


@dataclass
class Detections:
    """Faces in original-frame pixel coordinates: boxes (N,4) x1,y1,x2,y2; scores (N,); landmarks (N,5,2)."""

    boxes: FloatArray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: FloatArray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: FloatArray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def take(self, rows: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Detections:
        """The detections at `rows` (a mask or indices), boxes, scores and landmarks alike."""
        return Detections(boxes=self.boxes[rows], scores=self.scores[rows], landmarks=self.landmarks[rows])


@dataclass
class BatchTimings:
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0


@dataclass(frozen=True)
class DetectorGeometry:
    """How frames are sized for the detector.

    `pixel_budget` (input width x height of the variant) is what one pass may cost: every frame is scaled, keeping
    aspect, to about that many pixels: large frames shrink, small ones are enlarged (at most `max_upscale`), so a
    416x416 crowd photo is not shrunk to 384x384 and its 20 px faces stay findable. `max_downscale` keeps large
    frames at no less than 1/max_downscale of their size (up to HARD_MAX_SIDE). With `tile` set, frames larger
    than `tile_min_side` are also cut into overlapping tiles of about `tile` pixels on the longer side at native
    resolution (small faces in 1080p/4K crowds), merged with the whole-frame pass by NMS.
    """

    pixel_budget: int = 640 * 360
    max_upscale: float = 2.0
    max_downscale: float = 2.0
    flip: bool = False
    tile: int = 0
    tile_overlap: float = 0.25
    tile_min_side: int = 1600

    def __post_init__(self) -> None:
        if self.pixel_budget < 32 * 32:
            raise ValueError("detector input must be at least 32x32 pixels")
        if not 1.0 <= self.max_upscale <= 4.0:
            raise ValueError(f"max_upscale must be within 1..4, got {self.max_upscale}")
        if self.tile and not 128 <= self.tile <= 2048:
            raise ValueError(f"tile must be 0 (off) or 128..2048 pixels, got {self.tile}")
        if not 0.0 <= self.tile_overlap < 0.5:
            raise ValueError(f"tile_overlap must be within 0..0.5, got {self.tile_overlap}")




class FaceDetector(Protocol):
    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[
        Detections]: ...


@dataclass(frozen=True)
class DetectorRequest:
    """What a family needs to build a detector: which family, which model file (by sha256, optionally a local copy
    such as the registry's download), the precision and the pixel budget. Variants make one; detectors never see a
    variant, so the engine's variants depend on the families and not the other way round."""

    variant: str  # the variant's name, for messages
    family: str
    model_sha256: str
    model_path: str = ""
    precision: str = "fp32"
    input_width: int = 640
    input_height: int = 360
    geometry: DetectorGeometry = field(default_factory=lambda: DetectorGeometry())


@dataclass(frozen=True)
class BuiltDetector:
    detector: FaceDetector
    execution_provider: str
    model_sha256: str


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, expected_sha256: str | None) -> tuple[bytes, str]:
    """The model file's bytes and sha256; ModelError when unreadable or not the expected file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model {path}: {exc}") from exc
    digest = sha256_of(raw)
    if expected_sha256 and digest != expected_sha256:
        raise ModelError(f"model {path} has sha256 {digest}, expected {expected_sha256}; refusing to load it")
    return raw, digest
