"""The drift tests, in numpy (no scipy: it is not a dependency of the project).

Over fixed-bin histograms (the features stream's score and face-size bins: windows of any camera are comparable):
- `ks`: two-sample Kolmogorov-Smirnov on the binned CDFs, with the asymptotic p-value (Kolmogorov's series) at the
  effective sample size n m / (n + m). Binned data tie within a bin, which only makes the statistic smaller
  (conservative).
- `wasserstein_normed`: the earth mover's distance between the two histograms over their bin positions, divided by
  the reference's standard deviation (Evidently's "normed Wasserstein"; drift at 0.1).
- `jensen_shannon`: the Jensen-Shannon distance (square root of the divergence, base 2: 0..1; drift at 0.1).
- `psi`: population stability index with a small floor per bin (< 0.1 no change, 0.1-0.25 minor, > 0.25 major).
- `chi2`: Pearson's test of homogeneity on the bins (small categorical samples).

`choose_test` picks by feature type and reference size as Evidently does: numeric with at most 1000 reference
observations -> KS (drift at p < 0.05), more -> normed Wasserstein (0.1); categorical -> chi-square / Jensen-Shannon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from imask.routing.stats import chi2_sf

Test = Literal["ks", "wasserstein", "jensen_shannon", "psi", "chi2", "zscore"]
FeatureType = Literal["numeric", "categorical"]
SMALL_SAMPLE = 1000
"""Evidently's cut: a reference of at most this many observations gets a p-value test, a larger one a distance."""
P_ALPHA = 0.05
DISTANCE_THRESHOLD = 0.1
PSI_MINOR, PSI_MAJOR = 0.1, 0.25
PSI_FLOOR = 1e-4
Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TestResult:
    test: Test
    statistic: float  # the distance, or the KS / chi-square statistic
    p_value: float  # nan for distances
    drift: bool
    n_reference: float
    n_current: float

    @property
    def score(self) -> float:
        """What imask_drift_score shows: the p-value for p-value tests, the distance otherwise."""
        return self.p_value if self.test in ("ks", "chi2") else self.statistic


def _counts(hist: npt.ArrayLike) -> Array:
    arr = np.asarray(hist, dtype=np.float64).reshape(-1)
    if (arr < 0).any() or not np.isfinite(arr).all():
        raise ValueError("histogram counts must be finite and >= 0")
    return arr


def _pair(reference: npt.ArrayLike, current: npt.ArrayLike) -> tuple[Array, Array]:
    ref, cur = _counts(reference), _counts(current)
    if ref.shape != cur.shape:
        raise ValueError(f"histograms of {ref.size} and {cur.size} bins")
    return ref, cur


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for Kolmogorov's distribution: 2 sum_{k>=1} (-1)^{k-1} exp(-2 k^2 x^2)."""
    if x <= 0.0:
        return 1.0
    if x < 0.2:  # the series converges slowly here, and the value is 1 to 1e-9
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return max(0.0, min(1.0, 2.0 * total))


def ks_statistic(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    ref, cur = _pair(reference, current)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return 0.0
    return float(np.abs(np.cumsum(ref) / ref.sum() - np.cumsum(cur) / cur.sum()).max())


def ks(reference: npt.ArrayLike, current: npt.ArrayLike, n_reference: float | None = None,
       n_current: float | None = None, alpha: float = P_ALPHA) -> TestResult:
    """Two-sample KS over binned data. n_* override the sample sizes (clustered data: an effective size smaller
    than the count, e.g. frames rather than faces); the p-value uses Stephens' small-sample correction of the
    asymptotic distribution: sqrt(en) + 0.12 + 0.11 / sqrt(en)."""
    ref, cur = _pair(reference, current)
    n = float(ref.sum() if n_reference is None else n_reference)
    m = float(cur.sum() if n_current is None else n_current)
    d = ks_statistic(ref, cur)
    if n <= 0 or m <= 0:
        return TestResult("ks", 0.0, 1.0, False, n, m)
    en = n * m / (n + m)
    p = kolmogorov_sf((math.sqrt(en) + 0.12 + 0.11 / math.sqrt(en)) * d)
    return TestResult("ks", d, p, p < alpha, n, m)


def ks_samples(reference: npt.ArrayLike, current: npt.ArrayLike, alpha: float = P_ALPHA) -> TestResult:
    """Two-sample KS on raw values (per-window values of a feature)."""
    a = np.sort(np.asarray(reference, dtype=np.float64).reshape(-1))
    b = np.sort(np.asarray(current, dtype=np.float64).reshape(-1))
    if a.size == 0 or b.size == 0:
        return TestResult("ks", 0.0, 1.0, False, float(a.size), float(b.size))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    d = float(np.abs(cdf_a - cdf_b).max())
    en = a.size * b.size / (a.size + b.size)
    p = kolmogorov_sf((math.sqrt(en) + 0.12 + 0.11 / math.sqrt(en)) * d)
    return TestResult("ks", d, p, p < alpha, float(a.size), float(b.size))


def wasserstein_normed(reference: npt.ArrayLike, current: npt.ArrayLike, positions: npt.ArrayLike,
                       threshold: float = DISTANCE_THRESHOLD) -> TestResult:
    """W1 between the histograms placed at `positions` (bin centres, increasing), divided by the reference's
    standard deviation (floored at a tenth of the smallest bin spacing, so a one-bin reference still has a scale)."""
    ref, cur = _pair(reference, current)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1)
    if pos.shape != ref.shape or (np.diff(pos) <= 0).any():
        raise ValueError("positions must be increasing, one per bin")
    n, m = float(ref.sum()), float(cur.sum())
    if n <= 0 or m <= 0:
        return TestResult("wasserstein", 0.0, math.nan, False, n, m)
    p, q = ref / n, cur / m
    w1 = float(np.sum(np.abs(np.cumsum(p) - np.cumsum(q))[:-1] * np.diff(pos)))
    mean = float(p @ pos)
    std = math.sqrt(max(float(p @ (pos - mean) ** 2), 0.0))
    floor = float(np.diff(pos).min()) / 10 if pos.size > 1 else 1.0
    stat = w1 / max(std, floor)
    return TestResult("wasserstein", stat, math.nan, stat > threshold, n, m)


def jensen_shannon(reference: npt.ArrayLike, current: npt.ArrayLike,
                   threshold: float = DISTANCE_THRESHOLD) -> TestResult:
    """The Jensen-Shannon distance (base 2), 0 for equal shares, 1 for disjoint supports."""
    ref, cur = _pair(reference, current)
    n, m = float(ref.sum()), float(cur.sum())
    if n <= 0 or m <= 0:
        return TestResult("jensen_shannon", 0.0, math.nan, False, n, m)
    p, q = ref / n, cur / m
    mid = (p + q) / 2

    def kl(a: Array) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / mid[mask])))

    stat = math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))
    return TestResult("jensen_shannon", stat, math.nan, stat > threshold, n, m)


def psi(reference: npt.ArrayLike, current: npt.ArrayLike, threshold: float = PSI_MAJOR) -> TestResult:
    """sum (q - p) ln(q / p) over bins, shares floored at PSI_FLOOR (an empty bin would make it infinite)."""
    ref, cur = _pair(reference, current)
    n, m = float(ref.sum()), float(cur.sum())
    if n <= 0 or m <= 0:
        return TestResult("psi", 0.0, math.nan, False, n, m)
    p = np.maximum(ref / n, PSI_FLOOR)
    q = np.maximum(cur / m, PSI_FLOOR)
    stat = float(np.sum((q - p) * np.log(q / p)))
    return TestResult("psi", stat, math.nan, stat > threshold, n, m)


def psi_band(value: float) -> str:
    return "none" if value < PSI_MINOR else ("minor" if value <= PSI_MAJOR else "major")


def chi2(reference: npt.ArrayLike, current: npt.ArrayLike, alpha: float = P_ALPHA) -> TestResult:
    """Pearson's chi-square test of homogeneity of two count vectors (bins empty in both are left out)."""
    ref, cur = _pair(reference, current)
    n, m = float(ref.sum()), float(cur.sum())
    keep = (ref + cur) > 0
    if n <= 0 or m <= 0 or keep.sum() < 2:
        return TestResult("chi2", 0.0, 1.0, False, n, m)
    ref, cur = ref[keep], cur[keep]
    total = ref + cur
    exp_r, exp_c = total * n / (n + m), total * m / (n + m)
    stat = float(np.sum((ref - exp_r) ** 2 / exp_r + (cur - exp_c) ** 2 / exp_c))
    p = chi2_sf(stat, int(keep.sum()) - 1)
    return TestResult("chi2", stat, p, p < alpha, n, m)


def choose_test(kind: FeatureType, n_reference: float) -> Test:
    """Evidently's automatic choice: numeric -> KS up to SMALL_SAMPLE reference observations, normed Wasserstein
    above; categorical -> chi-square, then Jensen-Shannon."""
    small = n_reference <= SMALL_SAMPLE
    if kind == "numeric":
        return "ks" if small else "wasserstein"
    return "chi2" if small else "jensen_shannon"


def run_test(test: Test, reference: npt.ArrayLike, current: npt.ArrayLike, positions: npt.ArrayLike | None = None,
             n_reference: float | None = None, n_current: float | None = None) -> TestResult:
    """One of the histogram tests by name (positions: for wasserstein)."""
    if test == "ks":
        return ks(reference, current, n_reference, n_current)
    if test == "wasserstein":
        if positions is None:
            raise ValueError("wasserstein needs the bin positions")
        return wasserstein_normed(reference, current, positions)
    if test == "jensen_shannon":
        return jensen_shannon(reference, current)
    if test == "psi":
        return psi(reference, current)
    if test == "chi2":
        return chi2(reference, current)
    raise ValueError(f"no histogram test {test!r}")


def zscore(reference: npt.ArrayLike, value: float, rel_floor: float, abs_floor: float = 0.0,
           k: float = 3.0) -> TestResult:
    """A per-window value against the reference windows' values: |x - mean| / scale, scale = max(std (ddof 1),
    rel_floor |mean|, abs_floor); drift beyond k (NannyML's mean +- 3 sigma over reference chunks, with floors so a
    very steady reference does not alarm on noise). The statistic is signed (negative: below the reference)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if ref.size == 0 or not math.isfinite(value):
        return TestResult("zscore", 0.0, math.nan, False, float(ref.size), 1.0)
    mean = float(ref.mean())
    std = float(ref.std(ddof=1)) if ref.size > 1 else 0.0
    scale = max(std, rel_floor * abs(mean), abs_floor, 1e-12)
    z = (value - mean) / scale
    return TestResult("zscore", z, math.nan, abs(z) > k, float(ref.size), 1.0)
