"""CenterFace face detection: pixel-budget scaling, optional flip and tiles, batched inference, vectorised decoding.

Channel order: CenterFace was trained on RGB (its reference demo calls blobFromImage(..., swapRB=True) on
cv2.imread output); frames in this project are BGR (OpenCV decodes BGR), so the detector swaps them. Feeding BGR
cost a third of the small faces in WIDER FACE crowds.
"""

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
INPUT_CHANNELS = "RGB"  # what the model takes; frames arrive BGR
HARD_MAX_SIDE = 1280  # beyond this a CPU pass costs >100 ms; high-res crowds need tiling instead
SNAP_TOLERANCE = 0.05  # stretch a side up to 5% to a multiple of 32 instead of padding it
# Landmark order is left eye, right eye, nose, left mouth, right mouth: a mirrored face swaps the pairs.
FLIPPED_LANDMARKS = [1, 0, 2, 4, 3]


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


def _snap(side: float) -> int:
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
    return _snap(width * scale), _snap(height * scale)


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
class _View:
    """One detector pass over part of one frame: where it came from and how to map its boxes back."""

    frame_index: int
    pixels: Image  # BGR as decoded, already at detector size
    offset_x: float
    offset_y: float
    scale_x: float  # detector pixels per frame pixel
    scale_y: float
    flipped: bool = False
    tiled: bool = False


def _pad32(value: int) -> int:
    return int(math.ceil(value / 32) * 32)


class CenterFaceDetector:
    """Runs CenterFace on a batch of BGR frames. Thread-compatible, not thread-safe per call."""

    input_channels = INPUT_CHANNELS

    def __init__(self, model: LoadedModel, geometry: DetectorGeometry | None = None) -> None:
        self.model = model
        self.geometry = geometry or DetectorGeometry()
        self.run_options = ort.RunOptions()

    def _views(self, index: int, frame: Image) -> list[_View]:
        """The passes over one frame, still BGR (channels are swapped while the tensor is filled: free there,
        while swapping a full frame first cost 4 ms at 720p)."""
        height, width = frame.shape[:2]
        w, h = detector_size(width, height, self.geometry)
        whole = frame if (w, h) == (width, height) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        views = [_View(index, whole, 0, 0, w / width, h / height, False)]
        if self.geometry.flip:
            views.append(_View(index, np.ascontiguousarray(whole[:, ::-1]), 0, 0, w / width, h / height, True))
        g = self.geometry
        if g.tile and max(width, height) >= g.tile_min_side:
            for x1, y1, x2, y2 in tile_grid(width, height, g.tile, g.tile_overlap):
                crop = frame[y1:y2, x1:x2]
                tw, th = _snap(x2 - x1), _snap(y2 - y1)
                pixels = crop if (tw, th) == (x2 - x1, y2 - y1) else cv2.resize(crop, (tw, th))
                views.append(_View(index, pixels, x1, y1, tw / (x2 - x1), th / (y2 - y1), tiled=True))
        return views

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        timings = timings if timings is not None else BatchTimings()
        if not frames:
            return []
        clock = time.perf_counter()
        pre = inference = post = 0.0
        views = [view for i, frame in enumerate(frames) for view in self._views(i, frame)]
        # Whole frames (and their mirrors) of a batch share one padded tensor; tiles batch by their size.
        groups: dict[tuple[int, int], list[_View]] = {}
        for view in views:
            key = (view.pixels.shape[1], view.pixels.shape[0]) if view.tiled else (0, 0)
            groups.setdefault(key, []).append(view)
        per_frame: list[list[Detections]] = [[] for _ in frames]
        for group in groups.values():
            tensor_w = _pad32(max(v.pixels.shape[1] for v in group))
            tensor_h = _pad32(max(v.pixels.shape[0] for v in group))
            exact = all(v.pixels.shape[:2] == (tensor_h, tensor_w) for v in group)  # no padding to zero
            blob = (np.empty if exact else np.zeros)((len(group), 3, tensor_h, tensor_w), np.float32)
            for i, view in enumerate(group):
                if view.pixels.ndim != 3 or view.pixels.shape[2] != 3:  # the planes below would be junk or unset
                    raise ValueError(f"frames must be BGR (H, W, 3), got shape {view.pixels.shape}")
                h, w = view.pixels.shape[:2]
                # BGR -> RGB as the planes are written (split first: half the cost of one strided copy); raw
                # 0..255 values, no mean or scale.
                for channel, plane in enumerate(reversed(cv2.split(view.pixels))):
                    blob[i, channel, :h, :w] = plane
            now = time.perf_counter()
            pre, clock = pre + now - clock, now
            outputs = self.model.session.run(self.model.output_names, {self.model.input_name: blob},
                                             self.run_options)
            now = time.perf_counter()
            inference, clock = inference + now - clock, now
            heat, scale, offset, lms = _checked(outputs, len(group))
            for i, view in enumerate(group):
                h, w = view.pixels.shape[:2]
                per_frame[view.frame_index].append(
                    _to_frame(decode(heat[i, 0], scale[i], offset[i], lms[i], threshold, w, h), view))
            now = time.perf_counter()
            post, clock = post + now - clock, now
        out = [parts[0] if len(parts) == 1 else merge(parts, threshold) for parts in per_frame]
        timings.preprocess_ms += pre * 1e3
        timings.inference_ms += inference * 1e3
        timings.postprocess_ms += (post + time.perf_counter() - clock) * 1e3
        return out


def _checked(outputs: list[npt.NDArray[np.float32]], batch: int) -> tuple[FloatArray, ...]:
    """The four output maps, or DetectorOutputError: NaN in the heat map would compare false everywhere and read
    as "no faces", so anything non-finite fails the frame closed instead."""
    if len(outputs) != 4:
        raise DetectorOutputError(f"expected 4 outputs, got {len(outputs)}")
    heat, scale, offset, lms = (np.asarray(o) for o in outputs)
    if heat.ndim != 4 or heat.shape[0] != batch or heat.shape[1] != 1:
        raise DetectorOutputError(f"heat map of shape {heat.shape} for a batch of {batch}")
    for name, value in (("heatmap", heat), ("scale", scale), ("offset", offset), ("landmarks", lms)):
        if value.shape[0] != batch or value.shape[-2:] != heat.shape[-2:]:
            raise DetectorOutputError(f"{name} of shape {value.shape} does not match heat map {heat.shape}")
        if not np.isfinite(value).all():
            raise DetectorOutputError(f"non-finite values in the {name} output")
    return heat, scale, offset, lms


def _to_frame(dets: Detections, view: _View) -> Detections:
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


def decode(
    heat: FloatArray,
    scale: FloatArray,
    offset: FloatArray,
    lms: FloatArray,
    threshold: float,
    width: int,
    height: int,
) -> Detections:
    """Turn one view's output maps into boxes in that view's pixels (CenterFace's published decoding);
    `_to_frame` maps them back to the frame."""
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
    return Detections(boxes=boxes[keep_idx], scores=scores[keep_idx], landmarks=landmarks[keep_idx])
