"""Evaluate one engine on datasets: recall by size and attribute, leaks, over-masking, cost, threshold curve.

A labelled face counts as masked when (the criterion of ../shared/data/README.md) the mean absolute pixel
difference inside its box, original vs masked, is at least 6 (JPEG re-encoding alone moves it at most 2.5) and
the independent referee (YuNet) no longer finds a face there (IoU >= 0.3 at score >= 0.7). YuNet only judges:
it never decides what the engine masks.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from imask.engine import EngineResult, FrameInput, MaskingEngine
from imask.engine.masks import coverage_map
from imask.engine.tracker import iou_matrix
from imask.evaluation.datasets import Dataset, Face, iter_images
from imask.evaluation.leakcheck import check_leak, yunet_faces
from imask.media import iter_video, open_video
from imask.types import Image

MIN_MEAN_DIFF = 6.0
REFEREE_IOU = 0.3
REFEREE_SCORE = 0.7
OVERMASK_LIMIT = 0.01  # a picture with no face may have at most 1% of its area masked
# YuNet checks every frame of a clip: a sampling stride that shares a factor with a variant's detect_every (2 with
# every 4th) would only ever look at some positions between detections.
CLIP_LEAK_EVERY = 1
CURVE_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
CONTEXT_THRESHOLDS = (0.02, 0.03, 0.05, 0.07, 0.1)  # the crowd rule's threshold (engine/context.py)
SIZE_BUCKETS = ("<32", "32-63", ">=64")
SUMMARY_PERCENTILES = (50, 90, 95)
FACE_MARGIN = 0.6  # over-masking in labelled pictures: what is masked beyond each face box grown this much a side

Progress = Callable[[str], None]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class Tally:
    """masked / total counts under named keys."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, key: str, masked: bool) -> None:
        self.counts[key][0] += int(masked)
        self.counts[key][1] += 1

    def report(self, key: str) -> dict[str, Any]:
        masked, total = self.counts.get(key, [0, 0])
        return {"recall": _ratio(masked, total), "masked": masked, "faces": total}


def _box_diff(original: Image, masked: Image, face: Face) -> float:
    x, y, w, h = face.box
    x1, y1 = max(0, round(x)), max(0, round(y))
    x2, y2 = min(original.shape[1], round(x + w)), min(original.shape[0], round(y + h))
    if x2 <= x1 or y2 <= y1:
        return 0.0
    a = original[y1:y2, x1:x2].astype(np.int16)
    b = masked[y1:y2, x1:x2].astype(np.int16)
    return float(np.abs(a - b).mean())


def _xyxy(faces: list[Face]) -> np.ndarray:
    return np.array([[f.box[0], f.box[1], f.box[0] + f.box[2], f.box[1] + f.box[3]] for f in faces],
                    np.float64).reshape(-1, 4)


def faces_masked(original: Image, masked: Image, faces: list[Face], referee: bool = True) -> list[bool]:
    """Per face, whether it counts as masked (see the module doc); without the referee, the pixel test alone."""
    changed = [_box_diff(original, masked, f) >= MIN_MEAN_DIFF for f in faces]
    if not referee or not faces:
        return changed
    _, boxes = yunet_faces(masked, REFEREE_SCORE)
    if len(boxes) == 0:
        return changed
    hits = iou_matrix(_xyxy(faces), boxes) >= REFEREE_IOU
    refound = [bool(row.any()) for row in hits]
    return [c and not r for c, r in zip(changed, refound, strict=True)]


def _coverage(result: EngineResult, image: Image, engine: MaskingEngine) -> np.ndarray:
    """The pixels the result obscured (all of them when it failed closed)."""
    if result.fail_closed:
        return np.ones(image.shape[:2], bool)
    boxes = np.array([f.box for f in result.faces], np.float32).reshape(-1, 4)
    return coverage_map(image.shape[0], image.shape[1], boxes, engine.variant.mask)


def _area(result: EngineResult, image: Image, engine: MaskingEngine) -> float:
    return float(_coverage(result, image, engine).mean())


def outside_faces(covered: np.ndarray, faces: list[Face]) -> float:
    """The share of the picture obscured outside every labelled face box grown by FACE_MARGIN on each side (room
    for a mask's scale): what the masks took from the scene besides faces (bodies, signs, objects)."""
    free = np.ones_like(covered)
    height, width = covered.shape
    for face in faces:
        x, y, w, h = face.box
        x1, y1 = max(0, int(x - FACE_MARGIN * w)), max(0, int(y - FACE_MARGIN * h))
        x2, y2 = min(width, int(np.ceil(x + w + FACE_MARGIN * w))), min(height, int(np.ceil(y + h + FACE_MARGIN * h)))
        free[y1:y2, x1:x2] = False
    return float((covered & free).mean())


def _mask(engine: MaskingEngine, camera: str, seq: int, image: Image, threshold: float | None = None) -> tuple[
        EngineResult, float]:
    """One frame through the engine: its result and the CPU milliseconds it cost (all threads)."""
    t0 = time.process_time()
    result = engine.process([FrameInput(camera, seq, image)], threshold=threshold)[0]
    return result, (time.process_time() - t0) * 1e3


def evaluate_labelled(engine: MaskingEngine, dataset: Dataset, thresholds: tuple[float, ...],
                      progress: Progress) -> dict[str, Any]:
    tally = Tally()
    leak_faces = leaks = confident_leaks = fail_closed = 0
    cpu_ms: list[float] = []
    areas: list[float] = []
    outside: list[float] = []
    masks = labelled = 0
    for sample, image in iter_images(dataset):
        camera = f"eval:{dataset.name}:{sample.name}"
        result, cost = _mask(engine, camera, 0, image)
        engine.forget(camera)
        cpu_ms.append(cost)
        covered = _coverage(result, image, engine)
        areas.append(float(covered.mean()))
        outside.append(outside_faces(covered, sample.faces or []))
        masks += len(result.faces)
        labelled += len(sample.faces or [])
        fail_closed += int(result.fail_closed)
        valid = [f for f in sample.faces or [] if f.valid]
        for face, ok in zip(valid, faces_masked(image, result.image, valid), strict=True):
            tally.add("all", ok)
            tally.add(face.size_bucket, ok)
            for name, value in face.attributes.items():
                tally.add(f"attr:{name}={value}", ok)
        leak = check_leak(image, result.image)
        leak_faces += len(leak.original_confidences)
        leaks += len(leak.leaked)
        confident_leaks += len(leak.reliable_leaks)
    progress(f"{dataset.name}: recall {tally.report('all')['recall']}")
    attributes: dict[str, dict[str, Any]] = defaultdict(dict)
    for key in sorted(tally.counts):
        if key.startswith("attr:"):
            name, value = key[5:].split("=", 1)
            attributes[name][value] = tally.report(key)
    return {
        "recall": {**tally.report("all"), "by_size": {b: tally.report(b) for b in SIZE_BUCKETS},
                   "by_attribute": dict(attributes)},
        "leaks": _leaks(leak_faces, leaks, confident_leaks),
        "masks_per_image": round(masks / max(1, len(dataset.samples)), 2),
        "masks_per_labelled_face": round(masks / max(1, labelled), 2),
        "masked_area_fraction": _summary(areas),
        "masked_outside_faces": _summary(outside),
        "fail_closed": fail_closed,
        "cpu_ms_per_frame": _summary(cpu_ms),
        "threshold_curve": [_curve_point(engine, dataset, t) for t in thresholds],
        "context_curve": _context_curve(engine, dataset) if thresholds else [],
    }


def _curve_point(engine: MaskingEngine, dataset: Dataset, threshold: float) -> dict[str, Any]:
    """Recall (pixel test alone: the referee is too slow to run per threshold) and over-masking at a threshold."""
    masked = total = masks = 0
    areas = []
    for sample, image in iter_images(dataset):
        camera = f"curve:{dataset.name}:{sample.name}"
        result, _ = _mask(engine, camera, 0, image, threshold)
        engine.forget(camera)
        masks += len(result.faces)
        areas.append(_area(result, image, engine))
        valid = [f for f in sample.faces or [] if f.valid]
        hits = faces_masked(image, result.image, valid, referee=False)
        masked += sum(hits)
        total += len(hits)
    return {"threshold": threshold, "recall_pixel_test": _ratio(masked, total),
            "masks_per_image": round(masks / max(1, len(dataset.samples)), 2),
            "masked_area_fraction_mean": round(float(np.mean(areas)), 4) if areas else None,
            "masked_area_fraction_max": round(float(np.max(areas)), 4) if areas else None,
            "images_over_1pct": sum(a > OVERMASK_LIMIT for a in areas)}


def _context_curve(engine: MaskingEngine, dataset: Dataset) -> list[dict[str, Any]]:
    """Recall and over-masking against the crowd rule's threshold (the variant's own threshold otherwise): what
    the rule buys in crowds, and what it costs there. Empty when the variant has the rule off."""
    if not engine.variant.context.enabled:
        return []
    points = []
    for value in CONTEXT_THRESHOLDS:
        probe = MaskingEngine(engine.variant.with_overrides(context_threshold=value), engine.detector,
                              engine.execution_provider)
        try:
            point = _curve_point(probe, dataset, engine.variant.threshold)
        finally:
            probe.close()
        points.append({"context_threshold": value, **{k: v for k, v in point.items() if k != "threshold"}})
    return points


def evaluate_negatives(engine: MaskingEngine, dataset: Dataset, thresholds: tuple[float, ...],
                       progress: Progress) -> dict[str, Any]:
    pictures: list[dict[str, Any]] = []
    cpu_ms: list[float] = []
    for sample, image in iter_images(dataset):
        camera = f"eval:{dataset.name}:{sample.name}"
        result, cost = _mask(engine, camera, 0, image)
        engine.forget(camera)
        cpu_ms.append(cost)
        pictures.append({"name": sample.name, "masks": len(result.faces),
                         "masked_area_fraction": round(_area(result, image, engine), 4)})
    over = [p["name"] for p in pictures if p["masked_area_fraction"] > OVERMASK_LIMIT]
    progress(f"{dataset.name}: {len(over)} of {len(pictures)} pictures over 1% masked")
    return {
        "false_masks": {"pictures": len(pictures), "with_any_mask": sum(p["masks"] > 0 for p in pictures),
                        "masks": sum(p["masks"] for p in pictures), "over_1pct": over,
                        "max_masked_area_fraction": max((p["masked_area_fraction"] for p in pictures), default=0.0),
                        "per_picture": pictures},
        "cpu_ms_per_frame": _summary(cpu_ms),
        "threshold_curve": [_curve_point(engine, dataset, t) for t in thresholds],
    }


def evaluate_clips(engine: MaskingEngine, dataset: Dataset, progress: Progress) -> dict[str, Any]:
    """Every frame of every clip through the engine in order (tracks matter), every CLIP_LEAK_EVERY-th checked by
    YuNet (frames under its working size enlarged to it, for the small heads of low-resolution footage)."""
    faces = leaks = confident = confident_faces = frames = fail_closed = 0
    cpu_ms: list[float] = []
    areas: list[float] = []
    examples: list[str] = []
    for clip in dataset.clips:
        cap, _ = open_video(clip)
        camera = f"eval:{clip.name}"
        try:
            for seq, frame in enumerate(iter_video(cap)):
                result, cost = _mask(engine, camera, seq, frame)
                frames += 1
                cpu_ms.append(cost)
                fail_closed += int(result.fail_closed)
                if seq % CLIP_LEAK_EVERY:
                    continue
                areas.append(_area(result, frame, engine))
                check = check_leak(frame, result.image, enlarge=True)
                faces += len(check.original_confidences)
                confident_faces += check.reliable_faces
                leaks += len(check.leaked)
                confident += len(check.reliable_leaks)
                examples += [f"{clip.name}#{seq} {a:.2f}->{b:.2f}" for a, b, _ in check.reliable_leaks][:3]
        finally:
            cap.release()
            engine.forget(camera)
    progress(f"{dataset.name}: {leaks} of {faces} referee faces re-found, {confident} confidently")
    return {"clips": len(dataset.clips), "frames": frames, "fail_closed": fail_closed,
            "leaks": {**_leaks(faces, leaks, confident), "confident_faces": confident_faces,
                      "confident_examples": examples[:10]},
            "masked_area_fraction": _summary(areas), "cpu_ms_per_frame": _summary(cpu_ms)}


def _leaks(faces: int, refound: int, confident: int) -> dict[str, Any]:
    return {"referee_faces": faces, "refound": refound, "rate": _ratio(refound, faces), "confident_refound": confident}


def _summary(values: list[float]) -> dict[str, float | None]:
    """mean, p50, p90, p95 and max; every key None for no values."""
    if not values:
        return {"mean": None, **{f"p{q}": None for q in SUMMARY_PERCENTILES}, "max": None}
    arr = np.asarray(values, np.float64)
    return {"mean": round(float(arr.mean()), 4),
            **{f"p{q}": round(float(np.percentile(arr, q)), 4) for q in SUMMARY_PERCENTILES},
            "max": round(float(arr.max()), 4)}


def evaluate(engine: MaskingEngine, dataset: Dataset, thresholds: tuple[float, ...] = CURVE_THRESHOLDS,
             progress: Progress = lambda _: None) -> dict[str, Any]:
    header = {"name": dataset.name, "kind": dataset.kind, "source": dataset.source, "digest": dataset.digest,
              "files": len(dataset.samples) or len(dataset.clips)}
    if dataset.kind == "labelled":
        return {**header, **evaluate_labelled(engine, dataset, thresholds, progress)}
    if dataset.kind == "negatives":
        return {**header, **evaluate_negatives(engine, dataset, thresholds, progress)}
    return {**header, **evaluate_clips(engine, dataset, progress)}
