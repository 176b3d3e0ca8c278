"""Pictures the face detector cannot read as they are, and the picture to run it on instead.

CenterFace reads natural pictures. A picture dithered to black and white (a printed page photographed, a thermal or
fax-like source; error diffusion or ordered dithering, JPEG-compressed or not) or drowned in noise is out of its
range: on WIDER crowds dithered to 1 bit the default engine masks 0.31 of the faces (0.957 as they are). Such
pictures have their energy at the highest frequencies, where natural ones have little. In a row, a natural
picture's neighbours differ less than pixels twice as far apart (ratio of the mean absolute differences 0.5-0.91 at
every pitch from 1 to 4 px, on every picture, clip frame and face-free texture measured); dots differ more at their
pitch (1.09 and up), white noise about as much (0.85-1.0). The check measures that on SAMPLE_ROWS rows of the green
channel: 0.04 ms on a 720p frame, 0.05 ms on 1080p. The remedy is a Gaussian blur sized to the dot pitch, or a
median first for salt and pepper; the detector reads the result, the original frame is what gets masked, and boxes
keep their coordinates (same size). Smoothing costs 1.6 ms on a grey 720p frame (one channel), 3 ms in colour,
4 ms with the median.

Measured with the default engine reading `detector_input`'s picture, faces counted as `imask eval` does (box changed
by 6 and YuNet no longer finds it), on wider_dev's 103 crowds: dithered to 1 bit (`@dither`) 0.309 -> 0.857; the
same as JPEG q75 0.302 -> 0.837; Bayer 8x8 0.177 -> 0.757; colour (per channel) 0.883 -> 0.911; 1-bit dots 2 px wide
0.005 -> 0.54; a 45 degree halftone screen 0.003 -> 0.56; salt and pepper on 30% of pixels 0.038 -> 0.912; Gaussian
noise sigma 50 0.834 -> 0.865, sigma 80 0.389 -> 0.692. The default engine reads 0.873 of `@dither` smoothed once,
under the crowds merely turned grey (0.899); three readings (smoothed at sigma 1, at sigma 2, and the first again at
1.5x the scale) with their faces merged mask 0.903 (SECOND_READING_SIGMA). No trigger on wider_dev, photos_gt,
photos, the 22 face-free pictures (text, page and chessboard included) or any frame of the sample clips
(2,235); forced on wider_dev, the pitch-1 blur would cost 0.957 -> 0.907. Noise beyond what a blur brings back is
refused (UNREADABLE: the engine fails the frame closed).

A cost: smoothed dots can wake the crowd rule (engine/context.py) on textures. Of the 22 face-free pictures each
dithered three ways (error diffusion, Bayer + JPEG, halftone), 2 of 66 had over 1% masked (a brick wall 38%, the
motorcycle 17%); a crowd floor of 0.15 on restored frames clears them for 0.857 -> 0.812 on `@dither`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from imask.types import Image

SAMPLE_ROWS = 32  # rows measured, spread over the frame: the whole width of each, for differences at every lag
LAGS = (1, 2, 3, 4, 6, 8)  # pitch p is judged by the difference at lag p against lag 2p
PITCHES = (1, 2, 3, 4)
MIN_WIDTH = 4 * LAGS[-1]  # narrower pictures are not judged
# Dots: at their pitch, neighbours differ more than pixels twice as far apart. Natural pictures stay under 0.91 at
# every pitch; scikit-image's page of text reaches 1.06 at pitch 2 (its strokes; a trigger there only blurs the page,
# and the blurred page masks nothing); 1-bit error diffusion measures 1.09-2.9, JPEG-compressed or not, Bayer 1.5-15.
DOTS_RATIO = 1.08
DOTS_MIN_DIFF = 8.0  # mean absolute difference at the pitch (0-255): fainter dots are left to the detector
# Blur per pitch, the best measured on WIDER crowds: 1-bit error diffusion reads 0.857 at sigma 1 (0.8: 0.83,
# 1.5: 0.83, 2: 0.75); 2 px dots 0.52 at 2 (1.5: 0.33, 2.5: 0.45); halftone screens (pitch 3-4) 0.53-0.64 at 2-2.5.
DOT_SIGMA = {1: 1.0, 2: 2.0, 3: 2.25, 4: 2.5}
# Error-diffused dots (pitch 1) are read a second time, smoothed at this sigma, and the faces of the readings merged
# (second_reading); the engine also reads the first smoothing at 1.5x the scale where its variant has that pass (the
# second look's). Each reading finds some faces the others miss. On wider_dev@dither (default engine): one reading at
# sigma 1 masks 0.873 of faces; with a second at 1.25 / 1.5 / 2.0, 0.880 / 0.889 / 0.892; with the second at 2.0 and
# the 1.5x one, 0.903. The price is more masks where the readings' faint crowd boxes add up (masked outside faces p50
# / p90 9.2% / 19.8% with one reading, 12.9% / 24.5% with two, 16.0% / 27.3% with three; 6.8, 7.3, 9.2 masks a face)
# and two more detector passes on such frames only. A dithered crowd is rare and its faces are what is at stake.
SECOND_READING_SIGMA = {"dots_pitch1": 2.0}
# White noise: neighbours nearly as different as pixels 2 apart, and strongly so (natural pictures: ratio under
# 0.8 wherever the mean neighbour difference is over 15; sensor noise in a dark frame is far weaker).
NOISE_RATIO = 0.85
NOISE_MIN_DIFF = 24.0
NOISE_HEAVY_DIFF = 60.0  # sigma about 70: a wider blur reads more (sigma 80: 0.51 at 1, 0.62 at 1.5)
NOISE_SIGMA = 1.0
NOISE_HEAVY_SIGMA = 1.5
# About sigma 110 (half the crowds at 110 refused, 4 of 103 at 95): blurred, crowds read 0.3 of their faces there, so
# the frame fails closed.
NOISE_UNREADABLE = 85.0
# Salt and pepper wants a median: a spike (a pixel 65+ above or below both neighbours) is then black or white in 0.8+
# of cases, against 0.38 at most for Gaussian noise, even clipped at sigma 110.
SPIKE_STEP = 65
IMPULSE_SHARE = 0.6

UNREADABLE = "picture_out_of_range"


@dataclass(frozen=True, slots=True)
class RangeStats:
    """What the check measured on the sampled rows (0-255 scale)."""

    diffs: tuple[float, ...]  # mean absolute difference between pixels LAGS[i] apart in a row
    impulse: float = 0.0  # share of spikes exactly black or white; measured only on noise (see `noisy`)

    def diff(self, lag: int) -> float:
        return self.diffs[LAGS.index(lag)]

    def ratio(self, pitch: int) -> float:
        """Difference at lag `pitch` over lag 2 * `pitch`: high when dots of that pitch dominate."""
        return self.diff(pitch) / max(self.diff(2 * pitch), 1e-6)

    @property
    def dotted(self) -> bool:
        """Dots of some pitch dominate the picture's detail."""
        pitch = self.pitch
        return self.ratio(pitch) >= DOTS_RATIO and self.diff(pitch) >= DOTS_MIN_DIFF

    @property
    def noisy(self) -> bool:
        """Neighbours nearly as different as pixels 2 apart, and strongly: white noise, not picture detail."""
        return self.ratio(1) >= NOISE_RATIO and self.diff(1) >= NOISE_MIN_DIFF

    @property
    def pitch(self) -> int:
        """The pitch whose dots dominate most (meaningful only when `dotted`)."""
        return max(PITCHES, key=self.ratio)


def measure(image: Image) -> RangeStats | None:
    """The range statistics of a frame (BGR, or grey HxW), from SAMPLE_ROWS rows of its green channel; None for
    frames too small to judge."""
    height, width = image.shape[:2]
    if width < MIN_WIDTH or height < 1:
        return None
    step = max(1, height // (SAMPLE_ROWS + 1))
    rows = image[step // 2::step][:SAMPLE_ROWS]
    # One channel: a grey dither has three equal ones, a colour dither dithers each; a contiguous uint8 copy lets
    # OpenCV's L1 norm do the lag differences (12x faster than numpy's int16 arithmetic).
    sample = np.ascontiguousarray(rows[:, :, 1] if rows.ndim == 3 else rows)
    count = sample.shape[0]
    diffs = tuple(float(cv2.norm(sample[:, lag:], sample[:, :-lag], cv2.NORM_L1)) / (count * (width - lag))
                  for lag in LAGS)
    stats = RangeStats(diffs=diffs)
    if stats.noisy and not stats.dotted:  # only noise needs the costlier spike count
        return RangeStats(diffs=diffs, impulse=_impulse_share(sample))
    return stats


def _impulse_share(sample: np.ndarray) -> float:
    values = sample.astype(np.int16)
    centre = values[:, 1:-1]
    left, right = centre - values[:, :-2], centre - values[:, 2:]
    spikes = ((left >= SPIKE_STEP) & (right >= SPIKE_STEP)) | ((left <= -SPIKE_STEP) & (right <= -SPIKE_STEP))
    count = int(np.count_nonzero(spikes))
    extreme = int(np.count_nonzero(spikes & ((centre == 0) | (centre == 255))))
    return extreme / count if count else 0.0


def verdict(stats: RangeStats | None) -> str:
    """Why the detector cannot read the frame as it is: "" (it can), "dots", "noise", "impulse_noise", or
    UNREADABLE (noise beyond what smoothing brings back)."""
    if stats is None:
        return ""
    if stats.dotted:
        return "dots"
    if stats.noisy:
        if stats.impulse >= IMPULSE_SHARE:
            return "impulse_noise"
        return UNREADABLE if stats.diff(1) >= NOISE_UNREADABLE else "noise"
    return ""


def _grey(image: Image) -> bool:
    """Whether the sampled rows have three equal channels: then one channel is smoothed, twice as cheap. A coloured
    detail between the sampled rows would be read grey, which the detector still reads (0.899 vs 0.957 on crowds)."""
    if image.ndim != 3:
        return True
    step = max(1, image.shape[0] // (SAMPLE_ROWS + 1))
    rows = image[step // 2::step][:SAMPLE_ROWS]
    return bool(np.array_equal(rows[:, :, 0], rows[:, :, 1]) and np.array_equal(rows[:, :, 1], rows[:, :, 2]))


def _blur(image: Image, sigma: float, median: bool = False) -> Image:
    grey = _grey(image)
    plane = (image[:, :, 1] if image.ndim == 3 else image) if grey else image
    if median:
        plane = cv2.medianBlur(np.ascontiguousarray(plane), 3)
    plane = cv2.GaussianBlur(plane, (0, 0), sigma)
    return cv2.cvtColor(plane, cv2.COLOR_GRAY2BGR) if grey or plane.ndim == 2 else plane


def bring_into_range(image: Image, stats: RangeStats, kind: str) -> tuple[Image | None, str]:
    """The picture to run the detector on for a frame judged `kind` by `verdict`, and the reason: the same size
    BGR uint8 picture smoothed ("dots_pitch1"... "dots_pitch4", "noise", "impulse_noise"); (image, "") for ""
    (nothing to do); (None, UNREADABLE) when it cannot be brought back."""
    if kind == "dots":
        pitch = stats.pitch
        return _blur(image, DOT_SIGMA[pitch]), f"dots_pitch{pitch}"
    if kind == "impulse_noise":
        return _blur(image, NOISE_SIGMA, median=True), kind
    if kind == "noise":
        heavy = stats.diff(1) >= NOISE_HEAVY_DIFF
        return _blur(image, NOISE_HEAVY_SIGMA if heavy else NOISE_SIGMA), kind
    if kind == UNREADABLE:
        return None, UNREADABLE
    return image, ""


def second_reading(image: Image, reason: str) -> Image | None:
    """For a frame brought back into range for `reason` that one smoothing reads only in part: the frame smoothed
    the second way (the detector reads both and merges their faces); None for every other frame."""
    sigma = SECOND_READING_SIGMA.get(reason)
    return None if sigma is None else _blur(image, sigma)


def detector_input(image: Image) -> tuple[Image | None, str]:
    """What the detector should read for this frame: (image, "") for a frame in range (the same object, no copy);
    (smoothed, reason) for one brought back into range; (None, UNREADABLE) for one that cannot be, to fail closed.
    The frame itself is still what gets masked, with the boxes found on the returned picture."""
    stats = measure(image)
    if stats is None:
        return image, ""
    return bring_into_range(image, stats, verdict(stats))
