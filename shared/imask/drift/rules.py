"""What one window says against its camera's reference: a drift check per feature, the four tamper rules, and the
camera's own before/after comparison when it changed variant. Each check is one (kind, feature, test) with a score
and whether this window breaches; persistence over windows is `hysteresis`'s business.

Thresholds (`Thresholds`) come with their reasons:
- per-window scalars (faces per frame, luminance, contrast-normalised sharpness, latency p95, fail-closed and
  held-track rates) against the reference windows: mean +- 3 sigma (NannyML's default), sigma floored so a very
  steady reference does not alarm on noise (luminance: 12% of the mean, so halving it is 4 sigma);
- histograms (detection scores, face sizes): Evidently's choice by reference size (KS at p < 0.05 up to 1000
  detections, normed Wasserstein at 0.1 above), and, since a window's detections are clustered (the same faces in
  every frame), the statistic must also exceed the reference windows' own spread (leave-one-out mean + 3 sigma);
  the KS p-value is computed with frames, not faces, as the sample size. PSI is reported beside them;
- tamper rules against the camera's picture reference (see each function).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from imask.drift import statistics as st
from imask.drift.window import FACE_SIZE_LOG2, SCORE_CENTRES, Reference, Window

DRIFT, COVERED, DEFOCUSED, MOVED, BLINDED, REGRESSION = ("drift", "tamper_covered", "tamper_defocused",
                                                         "tamper_moved", "tamper_blinded", "variant_regression")
TAMPER_KINDS = (COVERED, DEFOCUSED, MOVED, BLINDED)
# Each tamper rule's `feature` label (its own series of imask_drift_score/breach and its events' labels).
TAMPER_FEATURE = {COVERED: "covered", DEFOCUSED: "defocused", MOVED: "moved", BLINDED: "blinded"}


@dataclass(frozen=True)
class Thresholds:
    sigmas: float = 3.0
    luma_rel_floor: float = 0.12
    faces_rel_floor: float = 0.25
    faces_abs_floor: float = 0.3
    sharpness_log_floor: float = 0.5  # log units of contrast-normalised sharpness (x1.65)
    latency_rel_floor: float = 0.5
    rate_abs_floor: float = 0.05
    min_detections: int = 20  # a histogram test needs this many detections in the window
    covered_luma: float = 40.0  # grey level: a covered lens is this dark and ...
    covered_ratio: float = 0.35  # ... below this share of its reference luminance
    covered_flat: float = 0.35  # contrast (luma_std) below this share of the reference, or mostly near-black
    covered_dark: float = 0.8
    defocus_ratio: float = 0.25  # contrast-normalised sharpness below this share of the reference's lowest
    blinded_bright: float = 0.5  # share of near-white pixels
    blinded_ref_max: float = 0.2  # ... where the reference had at most this
    moved_sigmas: float = 4.0  # the picture unlike every reference window by this many of its own spreads
    # ... or its thumbnail far from the camera's baseline (PictureStats.scene_offset, grey levels): beyond this and
    # beyond moved_offset_ratio times the most any reference window showed (people walking through a view).
    moved_offset: float = 10.0
    moved_offset_ratio: float = 2.0
    regression_tolerance: float = 0.3  # faces per frame or score mass fall by more than this share
    regression_min_faces: float = 0.2  # before the switch: at least this many faces per frame to judge


@dataclass(frozen=True)
class Check:
    kind: str
    feature: str
    test: str
    score: float
    breached: bool
    detail: str


class ReferenceModel:
    """The numbers a reference gives every later window, computed once."""

    def __init__(self, reference: Reference) -> None:
        self.reference = reference

    @cached_property
    def picture(self) -> list[Window]:
        return [w for w in self.reference.windows if w.has_picture]

    def scalar(self, name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return self.reference.values(name)

    @cached_property
    def log_sharpness(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.log1p(np.asarray([w.sharpness_norm for w in self.picture], dtype=np.float64))

    def pooled(self, hist: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return self.reference.pooled(hist)

    def loo_threshold(self, hist: str, test: st.Test, positions: Sequence[float], floor: float) -> float:
        """mean + 3 sigma of each reference window's statistic against the others pooled (the reference's own
        window-to-window spread), at least `floor`."""
        return self._loo(hist, test, tuple(positions), floor)

    def _loo(self, hist: str, test: st.Test, positions: tuple[float, ...], floor: float) -> float:
        key = (hist, test)
        cache: dict[tuple[str, str], float] = self.__dict__.setdefault("_loo_cache", {})
        if key not in cache:
            total = self.pooled(hist)
            stats = []
            for w in self.reference.windows:
                own = np.asarray(getattr(w, hist), dtype=np.float64)
                if own.sum() <= 0 or (total - own).sum() <= 0:
                    continue
                r = st.run_test(test, total - own, own, positions)
                stats.append(r.statistic)
            cache[key] = max(floor, float(np.mean(stats) + 3 * np.std(stats, ddof=1))) if len(stats) > 2 \
                else floor
        return cache[key]

    @cached_property
    def picture_space(self) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.float64]]]:
        """Reference pictures as points (contrast over luminance, log of contrast-normalised sharpness, dark and
        bright shares: a picture only darker or brighter stays put, that is luminance drift) and the scale of each
        axis (its spread over the reference, floored)."""
        points = np.asarray([_picture_point(w) for w in self.picture], dtype=np.float64).reshape(-1, 4)
        floors = np.asarray([0.04, 0.3, 0.05, 0.05])
        spread = points.std(axis=0, ddof=1) if len(points) > 1 else np.zeros(4)
        return points, np.maximum(spread, floors)

    @cached_property
    def moved_threshold(self) -> float:
        """How unlike its nearest other reference window a reference window is, at most (mean + 3 sigma)."""
        points, scale = self.picture_space
        if len(points) < 3:
            return 0.0
        nearest = []
        for i in range(len(points)):
            others = np.delete(points, i, axis=0)
            nearest.append(float(np.min(np.linalg.norm((others - points[i]) / scale, axis=1))))
        return float(np.mean(nearest) + 3 * np.std(nearest, ddof=1))


def _picture_point(w: Window) -> tuple[float, float, float, float]:
    return (w.luma_std / max(w.luma_mean, 1.0), math.log1p(w.sharpness_norm), w.dark_fraction, w.bright_fraction)


# ------------------------------------------------------------------------------------------------ drift checks


def scalar_checks(model: ReferenceModel, w: Window, th: Thresholds, picture: bool) -> list[Check]:
    """mean +- k sigma checks of the per-window values. `picture`: the picture statistics too (the reference has
    them and so does the window)."""
    specs: list[tuple[str, float, float]] = [("faces_mean", th.faces_rel_floor, th.faces_abs_floor),
                                             ("latency_p95_ms", th.latency_rel_floor, 0.0),
                                             ("fail_closed_rate", 0.0, th.rate_abs_floor),
                                             ("held_track_rate", 0.0, th.rate_abs_floor)]
    out = []
    for name, rel, floor in specs:
        r = st.zscore(model.scalar(name), w.value(name), rel, floor, th.sigmas)
        out.append(Check(DRIFT, name, r.test, r.statistic, r.drift,
                         f"{name} {w.value(name):.3g} against {float(np.mean(model.scalar(name))):.3g} in the "
                         f"reference ({r.statistic:+.1f} sigma)"))
    if picture and model.picture and w.has_picture:
        ref = np.asarray([x.luma_mean for x in model.picture])
        r = st.zscore(ref, w.luma_mean, th.luma_rel_floor, 2.0, th.sigmas)
        out.append(Check(DRIFT, "luma_mean", r.test, r.statistic, r.drift,
                         f"luminance {w.luma_mean:.0f} against {ref.mean():.0f} ({r.statistic:+.1f} sigma)"))
        value = math.log1p(w.sharpness_norm)
        r = st.zscore(model.log_sharpness, value, 0.0, th.sharpness_log_floor, th.sigmas)
        ratio = math.expm1(value) / max(math.expm1(float(np.mean(model.log_sharpness))), 1e-9)
        out.append(Check(DRIFT, "sharpness", r.test, r.statistic, r.drift,
                         f"contrast-normalised sharpness x{ratio:.2f} of the reference ({r.statistic:+.1f} sigma)"))
    return out


def histogram_checks(model: ReferenceModel, w: Window, th: Thresholds) -> list[Check]:
    out = []
    for hist, positions in (("score_hist", SCORE_CENTRES), ("face_size_hist", FACE_SIZE_LOG2)):
        ref = model.pooled(hist)
        cur = np.asarray(getattr(w, hist), dtype=np.float64)
        if cur.sum() < th.min_detections or ref.sum() < th.min_detections:
            continue
        test = st.choose_test("numeric", float(ref.sum()))
        if test == "ks":
            frames_ref = sum(x.frames for x in model.reference.windows)
            r = st.ks(ref, cur, n_reference=min(ref.sum(), frames_ref), n_current=min(cur.sum(), w.frames))
            limit = model.loo_threshold(hist, "ks", positions, 0.0)
            breached = r.drift and r.statistic > limit
        else:
            r = st.wasserstein_normed(ref, cur, positions)
            limit = model.loo_threshold(hist, "wasserstein", positions, st.DISTANCE_THRESHOLD)
            breached = r.statistic > limit
        name = "face sizes" if hist == "face_size_hist" else "detection scores"
        mean_ref = float(ref @ np.asarray(positions) / ref.sum())
        mean_cur = float(cur @ np.asarray(positions) / cur.sum())
        shift = (f"x{2 ** (mean_cur - mean_ref):.2f} in size" if hist == "face_size_hist"
                 else f"mean score {mean_cur:.2f} against {mean_ref:.2f}")
        out.append(Check(DRIFT, hist, r.test, r.score, breached,
                         f"{name} drifted: {r.test} {r.statistic:.3f} (limit {limit:.3f}"
                         + (f", p {r.p_value:.2g}" if r.test == "ks" else "") + f"), {shift}"))
        p = st.psi(ref, cur)
        out.append(Check(DRIFT, hist, "psi", p.statistic, False, f"PSI {p.statistic:.3f} ({st.psi_band(p.statistic)})"))
    return out


# ------------------------------------------------------------------------------------------------ tamper rules


def tamper_checks(model: ReferenceModel, w: Window, th: Thresholds) -> list[Check]:
    """covered: dark and flat (luminance and contrast collapse); blinded: mostly near-white where the reference was
    not; defocused: contrast-normalised sharpness far below the reference's lowest, picture neither covered nor
    blinded; moved: the picture unlike every reference window (nearest one beyond the reference's own spread and
    `moved_sigmas`) or its thumbnail far off the camera's baseline (`moved_offset`), neither covered nor blinded
    (a far baseline rules defocused out)."""
    if not model.picture or not w.has_picture:
        return []
    ref_luma = float(np.median([x.luma_mean for x in model.picture]))
    ref_std = float(np.median([x.luma_std for x in model.picture]))
    ref_bright = float(np.max([x.bright_fraction for x in model.picture]))
    ref_sharp = float(np.min([x.sharpness_norm for x in model.picture]))
    covered = (w.luma_mean < min(th.covered_luma, th.covered_ratio * ref_luma)
               and (w.luma_std < th.covered_flat * ref_std or w.dark_fraction > th.covered_dark))
    blinded = w.bright_fraction >= th.blinded_bright and ref_bright <= th.blinded_ref_max
    sharp_ratio = w.sharpness_norm / ref_sharp if ref_sharp > 0 else 1.0
    # A blur barely changes a 32x18 thumbnail; another view changes it a lot: a far baseline means moved, not blurred.
    ref_offset = float(np.max([x.scene_offset for x in model.picture]))
    offset_limit = max(th.moved_offset, th.moved_offset_ratio * ref_offset)
    off_baseline = w.scene_offset > offset_limit
    defocused = not covered and not blinded and not off_baseline and sharp_ratio < th.defocus_ratio
    points, scale = model.picture_space
    nearest = float(np.min(np.linalg.norm((points - np.asarray(_picture_point(w))) / scale, axis=1)))
    limit = max(th.moved_sigmas, model.moved_threshold)
    moved = not (covered or blinded or defocused) and (nearest > limit or off_baseline)
    return [
        Check(COVERED, TAMPER_FEATURE[COVERED], "tamper_rule", w.luma_mean, covered,
              f"luminance {w.luma_mean:.0f} (reference {ref_luma:.0f}), contrast {w.luma_std:.0f} (reference "
              f"{ref_std:.0f}), {100 * w.dark_fraction:.0f}% near-black"),
        Check(BLINDED, TAMPER_FEATURE[BLINDED], "tamper_rule", w.bright_fraction, blinded,
              f"{100 * w.bright_fraction:.0f}% near-white (reference at most {100 * ref_bright:.0f}%)"),
        Check(DEFOCUSED, TAMPER_FEATURE[DEFOCUSED], "tamper_rule", sharp_ratio, defocused,
              f"sharpness x{sharp_ratio:.2f} of the reference's lowest (contrast-normalised)"),
        Check(MOVED, TAMPER_FEATURE[MOVED], "tamper_rule", nearest, moved,
              f"picture {nearest:.1f} spreads from the nearest reference window (limit {limit:.1f}), thumbnail "
              f"{w.scene_offset:.1f} grey levels off the camera's baseline (limit {offset_limit:.1f})"),
    ]


# ----------------------------------------------------------------------------------- before/after a switch


def regression_checks(before: Sequence[Window], w: Window, th: Thresholds) -> list[Check]:
    """The camera's own windows under its previous variant against this window under the new one: faces per frame
    and detection-score mass each breach when they fall by more than the tolerance and by more than 3 sigma of the
    before windows (sigma floored at 10% of their mean). Nothing is judged when the scene had too few faces."""
    out = []
    for name, label in (("faces_mean", "faces per frame"), ("score_mass", "detection-score mass")):
        values = np.asarray([getattr(b, name) for b in before], dtype=np.float64)
        if values.size == 0:
            continue
        mean = float(values.mean())
        if name == "faces_mean" and mean < th.regression_min_faces:
            return []
        if mean <= 0:
            continue
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        now = float(getattr(w, name))
        change = now / mean - 1.0
        z = (now - mean) / max(std, 0.1 * mean)
        breached = change < -th.regression_tolerance and z < -th.sigmas
        baseline = before[-1].variant or "-"
        out.append(Check(REGRESSION, name, "before_after", change, breached,
                         f"{label} {now:.2f} under {w.variant} against {mean:.2f} under {baseline} on the same "
                         f"camera ({100 * change:+.0f}%, tolerated -{100 * th.regression_tolerance:.0f}%)"))
    return out
