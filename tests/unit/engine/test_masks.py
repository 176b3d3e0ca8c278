"""Masks (imask.engine.masks): every style and shape obscures the face, the scale, the guard that catches an
untouched region, and crowd-sized masking from one shared blur."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import near_uniform, similarity
from imask.engine.masks import (
    MaskShape,
    MaskSpec,
    MaskStyle,
    apply_masks,
    coverage_map,
    masked_regions_changed,
    obscure_frame,
)
from imask.types import Image


@pytest.mark.parametrize("style", list(MaskStyle))
@pytest.mark.parametrize("shape", list(MaskShape))
def test_every_style_obscures_the_face(astronaut_image: Image, style: MaskStyle, shape: MaskShape) -> None:
    out = astronaut_image.copy()
    box = np.array([[205, 75, 290, 175]], np.float32)
    regions = apply_masks(out, box, MaskSpec(style, shape, 1.0))
    face = (slice(95, 155), slice(225, 270))  # well inside the ellipse
    assert similarity(out[face], astronaut_image[face]) < 0.6
    assert masked_regions_changed(astronaut_image, out, regions)
    outside = (slice(300, 512), slice(0, 512))
    assert np.array_equal(out[outside], astronaut_image[outside])
    x1, y1, _x2, _y2 = regions[0]
    corner_changed = not np.array_equal(out[y1:y1 + 3, x1:x1 + 3], astronaut_image[y1:y1 + 3, x1:x1 + 3])
    assert corner_changed == (shape is MaskShape.BOX)


def test_mask_scale_grows_the_region(astronaut_image: Image) -> None:
    box = np.array([[200, 100, 300, 200]], np.float32)
    small = apply_masks(astronaut_image.copy(), box, MaskSpec(scale=1.0))[0]
    large = apply_masks(astronaut_image.copy(), box, MaskSpec(scale=1.5))[0]
    assert tuple(small) == (200, 100, 300, 200)
    assert tuple(large) == (175, 75, 325, 225)
    with pytest.raises(ValueError):
        MaskSpec(scale=10)


def test_guard_catches_an_untouched_face(astronaut_image: Image) -> None:
    regions = np.array([[205, 75, 290, 175]], np.int32)
    assert not masked_regions_changed(astronaut_image, astronaut_image.copy(), regions)
    assert near_uniform(obscure_frame(astronaut_image))


def _crowd(image: Image, faces: int = 12, side: int = 64) -> Image:
    """A grid of the astronaut's face, shrunk, on grey: a synthetic crowd."""
    face = cv2.resize(image[40:200, 160:320], (side, side), interpolation=cv2.INTER_AREA)
    canvas = np.full((480, 640, 3), 110, np.uint8)
    for i in range(faces):
        y, x = 40 + (i // 6) * (side + 40), 20 + (i % 6) * (side + 40)
        canvas[y:y + side, x:x + side] = face
    return canvas


# --- crowd-sized masking ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", list(MaskShape))
def test_many_small_faces_are_all_obscured_from_one_shared_blur(astronaut_image: Image, shape: MaskShape) -> None:
    crowd = _crowd(astronaut_image, faces=12, side=48)
    boxes = np.array([[20 + (i % 6) * 88 + 8, 40 + (i // 6) * 88 + 8, 20 + (i % 6) * 88 + 40,
                       40 + (i // 6) * 88 + 40] for i in range(12)], np.float32)
    out = crowd.copy()
    regions = apply_masks(out, boxes, MaskSpec(shape=shape, scale=1.5))
    assert masked_regions_changed(crowd, out, regions)
    covered = coverage_map(crowd.shape[0], crowd.shape[1], boxes, MaskSpec(shape=shape, scale=1.5))
    for x1, y1, x2, y2 in regions:
        inside = covered[y1:y2, x1:x2]
        before = crowd[y1:y2, x1:x2][inside].astype(np.int16)
        after = out[y1:y2, x1:x2][inside].astype(np.int16)
        assert np.abs(before - after).mean() > 6
        assert float(after.std()) < 0.5 * float(before.std())  # detail gone, not just shifted
    assert np.array_equal(out[~covered], crowd[~covered])  # nothing outside the masks moves


def test_crowd_with_larger_faces_masks_each_size_class_fully(astronaut_image: Image) -> None:
    """Regions of 129-256 px in a crowd take the coarser blur: every pixel of their ellipse, none outside it, and
    no more detail left in them than in the small ones."""
    face = cv2.resize(astronaut_image[40:200, 160:320], (160, 160), interpolation=cv2.INTER_AREA)
    crowd = np.full((720, 1280, 3), 110, np.uint8)
    small = [[40 + i * 100, 40, 40 + i * 100 + 40, 80] for i in range(10)]
    for x1, y1, _, _ in small:
        crowd[y1:y1 + 40, x1:x1 + 40] = cv2.resize(face, (40, 40), interpolation=cv2.INTER_AREA)
    # 160 px boxes: 240 px regions at scale 1.5; the second at the frame's corner (clipped, padded area)
    large = [[200, 300, 360, 460], [1120, 560, 1280, 720]]
    for x1, y1, _, _ in large:
        crowd[y1:y1 + 160, x1:x1 + 160] = face
    boxes = np.array(small + large, np.float32)
    spec = MaskSpec(scale=1.5)
    out = crowd.copy()
    regions = apply_masks(out, boxes, spec)
    assert masked_regions_changed(crowd, out, regions)
    covered = coverage_map(crowd.shape[0], crowd.shape[1], boxes, spec)
    assert np.array_equal(out[~covered], crowd[~covered])
    for x1, y1, x2, y2 in regions[-2:]:
        assert max(x2 - x1, y2 - y1) > 128  # the coarser class
        inside = covered[y1:y2, x1:x2]
        before = crowd[y1:y2, x1:x2][inside].astype(np.float64)
        after = out[y1:y2, x1:x2][inside].astype(np.float64)
        assert float(after.std()) < 0.25 * float(before.std())
        # no edge survives: the strongest local gradient left is a fraction of the face's
        grad_before = np.abs(np.diff(crowd[y1:y2, x1:x2].astype(np.int16), axis=1))[inside[:, 1:]].max()
        grad_after = np.abs(np.diff(out[y1:y2, x1:x2].astype(np.int16), axis=1))[inside[:, 1:] & inside[:, :-1]].max()
        assert grad_after < 0.2 * grad_before


def test_mask_guard_finds_one_untouched_region_among_hundreds(astronaut_image: Image) -> None:
    crowd = _crowd(astronaut_image, faces=12, side=48)
    boxes = np.array([[x, y, x + 20, y + 20] for y in range(0, 400, 25) for x in range(0, 600, 25)], np.float32)
    out = crowd.copy()
    regions = apply_masks(out, boxes, MaskSpec(scale=1.0))
    assert len(regions) > 300 and masked_regions_changed(crowd, out, regions)
    x1, y1, x2, y2 = regions[0]
    out[y1:y2, x1:x2] = crowd[y1:y2, x1:x2]  # a bug that left one face as it was
    textured = int(crowd[y1:y2, x1:x2].max()) - int(crowd[y1:y2, x1:x2].min()) > 8
    assert masked_regions_changed(crowd, out, regions) is not textured
