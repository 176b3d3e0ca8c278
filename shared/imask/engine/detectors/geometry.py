"""Frame geometry every family uses: sizing a frame to a pixel budget, tiling it, and mapping each pass's boxes
back to the frame (flip and tiles merged by NMS)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from imask.engine.detectors.base import Detections, DetectorGeometry
from imask.types import Image

NMS_IOU = 0.3  # merging passes over one frame (flip, tiles)
HARD_MAX_SIDE = 1280  # beyond this a CPU pass costs >100 ms; high-res crowds need tiling instead
SNAP_TOLERANCE = 0.05  # stretch a side up to 5% to a multiple of 32 instead of padding it
# Landmark order is left eye, right eye, nose, left mouth, right mouth: a mirrored face swaps the pairs.
FLIPPED_LANDMARKS = [1, 0, 2, 4, 3]


def snap(side: float) -> int:
    nearest = max(32, round(side / 32) * 32)
    return nearest if abs(nearest - side) <= SNAP_TOLERANCE * side else max(1, round(side))


def detector_size(width: int, height: int, geometry: DetectorGeometry) -> tuple[int, int]:
    """Resized (width, height) of a whole frame for the detector (see DetectorGeometry).

    Sides within 5% of a multiple of 32 are stretched to it: 720p at a 640x360 budget becomes 640x352 instead of
    640x360 padded to 384, 8% less work for a 2% stretch.
    """
    scale = min(math.sqrt(geometry.pixel_budget / (width * height)), geometry.max_upscale)
    scale = min(scale, HARD_MAX_SIDE / max(width, height)) if scale > 1 else scale
    if geometry.max_downscale > 0 and scale < 1:
        cap = min(HARD_MAX_SIDE / max(width, height), 1.0)
        scale = max(scale, min(1.0 / geometry.max_downscale, cap))
    return snap(width * scale), snap(height * scale)


def tile_grid(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles (x1, y1, x2, y2) that cover the frame, each about `tile` px on a side (the last row and
    column are shifted inward, never shrunk). Neighbours overlap by `overlap` of a tile, so a face up to that size
    lies whole inside at least one tile."""

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        step = max(1, int(tile * (1 - overlap)))
        count = math.ceil((length - tile) / step) + 1
        return [min(i * step, length - tile) for i in range(count)]

    tw, th = min(tile, width), min(tile, height)
    return [(x, y, x + tw, y + th) for y in starts(height) for x in starts(width)]


@dataclass
class View:
    """One detector pass over part of one frame: where it came from and how to map its boxes back."""

    frame_index: int
    pixels: Image  # BGR as decoded, already at detector size
    offset_x: float
    offset_y: float
    scale_x: float  # detector pixels per frame pixel
    scale_y: float
    flipped: bool = False
    tiled: bool = False


def to_frame(dets: Detections, view: View) -> Detections:
    """Map a view's detections (its own pixels) back to its frame."""
    boxes = dets.boxes.copy()
    lms = dets.landmarks.copy()
    if view.flipped:
        w = view.pixels.shape[1]
        boxes[:, [0, 2]] = w - dets.boxes[:, [2, 0]]
        lms[:, :, 0] = w - lms[:, :, 0]
        lms = lms[:, FLIPPED_LANDMARKS]
    scale = np.array([view.scale_x, view.scale_y], np.float32)
    offset = np.array([view.offset_x, view.offset_y], np.float32)
    return Detections(boxes=(boxes / np.tile(scale, 2) + np.tile(offset, 2)).astype(np.float32),
                      scores=dets.scores, landmarks=(lms / scale + offset).astype(np.float32))


def concat(dets: Detections, more: Detections | None) -> Detections:
    """Two sets of detections as one, without suppression (where only their scores are weighed)."""
    if more is None or len(more) == 0:
        return dets
    return Detections(boxes=np.concatenate([dets.boxes, more.boxes]), scores=np.concatenate([dets.scores, more.scores]),
                      landmarks=np.concatenate([dets.landmarks, more.landmarks]))


def merge(parts: list[Detections], threshold: float) -> Detections:
    """Several passes over one frame (flip, tiles) as one set of detections: NMS over their union."""
    boxes = np.concatenate([p.boxes for p in parts])
    if boxes.shape[0] == 0:
        return Detections()
    scores = np.concatenate([p.scores for p in parts])
    landmarks = np.concatenate([p.landmarks for p in parts])
    keep = np.asarray(cv2.dnn.NMSBoxes(
        np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist(), scores.tolist(),
        threshold, NMS_IOU), dtype=np.int64).reshape(-1)
    return Detections(boxes=boxes[keep], scores=scores[keep], landmarks=landmarks[keep])
