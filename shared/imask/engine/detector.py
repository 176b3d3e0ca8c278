"""CenterFace face detection: letterbox-free downscaling, batched inference, vectorised decoding."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from imask.engine.model import LoadedModel
from imask.types import Image

FloatArray = npt.NDArray[np.float32]

NMS_IOU = 0.3
STRIDE = 4  # CenterFace outputs one cell per 4x4 input pixels


@dataclass
class Detections:
    """Faces in original-frame pixel coordinates: boxes (N,4) x1,y1,x2,y2; scores (N,); landmarks (N,5,2)."""

    boxes: FloatArray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: FloatArray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: FloatArray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class BatchTimings:
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0


HARD_MAX_SIDE = 1280  # beyond this a CPU frame costs >100 ms; high-res crowds need tiling instead


SNAP_TOLERANCE = 0.05  # stretch a side up to 5% to a multiple of 32 instead of padding it


def detector_geometry(width: int, height: int, max_width: int, max_height: int,
                      max_downscale: float = 0.0) -> tuple[int, int]:
    """Resized (width, height) of a frame for the detector.

    Fits the frame into the detector box keeping aspect, never upscaling. With `max_downscale` set, large frames
    are shrunk by at most that factor (up to 1280 px): CenterFace stops finding faces under ~10 px at its input,
    so a 1080p crowd shrunk 3x to 640x360 loses its 24 px faces. Sides within 5% of a multiple of 32 are
    stretched to it: 720p becomes 640x352 instead of 640x360 padded to 384, 8% less work for a 2% stretch.
    """
    scale = min(max_width / width, max_height / height, 1.0)
    if max_downscale > 0:
        cap = min(HARD_MAX_SIDE / max(width, height), 1.0)
        scale = max(scale, min(1.0 / max_downscale, cap))

    def snap(side: float) -> int:
        nearest = max(32, round(side / 32) * 32)
        return nearest if abs(nearest - side) <= SNAP_TOLERANCE * side else max(1, round(side))

    return snap(width * scale), snap(height * scale)


def _pad32(value: int) -> int:
    return int(math.ceil(value / 32) * 32)


class CenterFaceDetector:
    """Runs CenterFace on a batch of BGR frames. Thread-compatible, not thread-safe per call."""

    def __init__(self, model: LoadedModel, max_width: int = 640, max_height: int = 384,
                 max_downscale: float = 0.0) -> None:
        if max_width < 32 or max_height < 32:
            raise ValueError("detector input must be at least 32x32")
        self.model = model
        self.max_width = max_width
        self.max_height = max_height
        self.max_downscale = max_downscale
        self.run_options = ort.RunOptions()

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        timings = timings if timings is not None else BatchTimings()
        if not frames:
            return []
        t0 = time.perf_counter()
        geometry = [detector_geometry(f.shape[1], f.shape[0], self.max_width, self.max_height, self.max_downscale)
                    for f in frames]
        tensor_w = _pad32(max(g[0] for g in geometry))
        tensor_h = _pad32(max(g[1] for g in geometry))
        blob = np.zeros((len(frames), 3, tensor_h, tensor_w), np.float32)
        for i, (frame, (w, h)) in enumerate(zip(frames, geometry, strict=True)):
            resized = frame if (w, h) == (frame.shape[1], frame.shape[0]) else cv2.resize(
                frame, (w, h), interpolation=cv2.INTER_LINEAR
            )
            # The model takes raw BGR values as float, no mean or scale.
            blob[i, :, :h, :w] = resized.transpose(2, 0, 1)
        t1 = time.perf_counter()
        heat, scale, offset, lms = self.model.session.run(
            self.model.output_names, {self.model.input_name: blob}, self.run_options
        )
        t2 = time.perf_counter()
        out = [
            decode(heat[i, 0], scale[i], offset[i], lms[i], threshold, w, h, w / frame.shape[1], h / frame.shape[0])
            for i, ((w, h), frame) in enumerate(zip(geometry, frames, strict=True))
        ]
        t3 = time.perf_counter()
        timings.preprocess_ms += (t1 - t0) * 1e3
        timings.inference_ms += (t2 - t1) * 1e3
        timings.postprocess_ms += (t3 - t2) * 1e3
        return out


def decode(
    heat: FloatArray,
    scale: FloatArray,
    offset: FloatArray,
    lms: FloatArray,
    threshold: float,
    width: int,
    height: int,
    scale_x: float,
    scale_y: float,
) -> Detections:
    """Turn one frame's output maps into boxes in original pixels (CenterFace's published decoding)."""
    rows, cols = np.nonzero(heat > threshold)
    if rows.size == 0:
        return Detections()
    scores = heat[rows, cols].astype(np.float32)
    box_h = np.exp(scale[0, rows, cols]) * STRIDE
    box_w = np.exp(scale[1, rows, cols]) * STRIDE
    x1 = np.clip((cols + offset[1, rows, cols] + 0.5) * STRIDE - box_w / 2, 0, width)
    y1 = np.clip((rows + offset[0, rows, cols] + 0.5) * STRIDE - box_h / 2, 0, height)
    x2 = np.minimum(x1 + box_w, width)
    y2 = np.minimum(y1 + box_h, height)
    lm_x = lms[1::2, rows, cols].T * box_w[:, None] + x1[:, None]
    lm_y = lms[0::2, rows, cols].T * box_h[:, None] + y1[:, None]
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    keep = cv2.dnn.NMSBoxes(
        np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).tolist(), scores.tolist(), threshold, NMS_IOU
    )
    keep_idx = np.asarray(keep, dtype=np.int64).reshape(-1)
    landmarks = np.stack([lm_x, lm_y], axis=2).astype(np.float32)
    to_frame = np.array([scale_x, scale_y], np.float32)
    return Detections(
        boxes=(boxes[keep_idx] / np.tile(to_frame, 2)).astype(np.float32),
        scores=scores[keep_idx],
        landmarks=(landmarks[keep_idx] / to_frame).astype(np.float32),
    )
