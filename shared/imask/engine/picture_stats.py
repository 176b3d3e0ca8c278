"""What a picture says about its camera: brightness, contrast, sharpness, clipped shares and scene change. These
are the signals that tell a camera that was covered, defocused, moved or blinded (the features stream windows them,
the drift monitor compares them with a reference). Computed on a strided grey sample of about 320x180 pixels, the
scale the detector reads a 720p frame at, so a frame is not decoded or resized a second time."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from imask.types import Image

# Grey levels at or beyond which a pixel counts as near-black (lens covered, lights off) or near-white (blinded).
DARK_LEVEL = 16
BRIGHT_LEVEL = 239
SAMPLE_WIDTH, SAMPLE_HEIGHT = 320, 180
# A detected frame's weight in its camera's baseline thumbnail: a time constant of 3,000 detected frames (2 minutes
# at 25 fps, 8 at 6), slow enough that a moved camera's offset outlasts the drift monitor's persistence (3 windows
# of 10 s) and fast enough to follow daylight.
BASELINE_RATE = 1 / 3000


@dataclass(frozen=True, slots=True)
class PictureStats:
    luma_mean: float
    luma_std: float
    sharpness: float  # variance of the 4-neighbour Laplacian of the sample
    dark_fraction: float
    bright_fraction: float
    scene_change: float  # mean absolute difference of 32x18 thumbnails against the previous one (0: none)
    scene_offset: float = 0.0  # the same against the camera's baseline, each less its mean (see baseline_offset)


def grey_sample(image: Image) -> Image:
    """Every n-th pixel of every n-th row, in grey: at least SAMPLE_WIDTH x SAMPLE_HEIGHT of them. Nearest-neighbour
    resize picks them (0.06 ms at 720p; a strided numpy copy takes 0.4)."""
    height, width = image.shape[:2]
    step = max(1, min(width // SAMPLE_WIDTH, height // SAMPLE_HEIGHT))
    sample = image if step == 1 else cv2.resize(image, (width // step, height // step),
                                                 interpolation=cv2.INTER_NEAREST)
    return sample if sample.ndim == 2 else cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY)


def thumbnail(grey: Image) -> Image:
    """32x18 grey: enough to tell a scene cut from motion."""
    return cv2.resize(grey, (32, 18), interpolation=cv2.INTER_AREA)


def thumbnail_change(thumb: Image, previous: Image | None) -> float:
    """Mean absolute difference of two grey thumbnails, 0..255; 0 when there is no previous one."""
    if previous is None or previous.shape != thumb.shape:
        return 0.0
    return float(cv2.absdiff(thumb, previous).mean())


def baseline_offset(thumb: Image, baseline: npt.NDArray[np.float32] | None) -> tuple[float, npt.NDArray[np.float32]]:
    """How far a thumbnail is from its camera's baseline (mean absolute difference, each less its own mean, so a
    light switched on moves it little and a camera turned to another view a lot), and the baseline moved towards it
    by BASELINE_RATE. A camera's first thumbnail starts its baseline (offset 0)."""
    current = thumb.astype(np.float32)
    current -= current.mean()
    if baseline is None or baseline.shape != current.shape:
        return 0.0, current
    offset = float(np.abs(current - baseline).mean())
    baseline += BASELINE_RATE * (current - baseline)
    return offset, baseline


def picture_stats(grey: Image, scene_change: float = 0.0, scene_offset: float = 0.0) -> PictureStats:
    """The statistics of one grey sample (see grey_sample)."""
    mean, std = cv2.meanStdDev(grey)
    # The Laplacian's spread is sharpness's usual measure: blur and a cover both flatten it.
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S, ksize=1))
    pixels = float(grey.size) or 1.0
    return PictureStats(
        luma_mean=float(mean[0, 0]), luma_std=float(std[0, 0]), sharpness=float(lap_std[0, 0]) ** 2,
        dark_fraction=np.count_nonzero(grey <= DARK_LEVEL) / pixels,
        bright_fraction=np.count_nonzero(grey >= BRIGHT_LEVEL) / pixels,
        scene_change=scene_change, scene_offset=scene_offset)
