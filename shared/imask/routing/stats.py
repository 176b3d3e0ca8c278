"""The statistics that decide an experiment: SRM, cluster-robust ratio metrics, always-valid comparisons, guardrails.

Pure functions over per-camera aggregates. The unit of randomisation is the **camera** (assignment is sticky per
camera), so the camera is the unit of analysis too: frames of one camera share its scene, its light and its load,
and treating them as independent samples makes every standard error far too small (a camera effect with 200 frames
per camera easily gives a design effect of 100: the naive SE is 10x too small). Every variance here takes cameras
as clusters.

- `srm_check`: Pearson chi-square goodness of fit of counts per arm against the weights (GrowthBook, Statsig:
  p < 0.001). Right for *cameras* per arm. `frame_srm_check` is the same test for *frames* per arm with the
  camera clustering taken into account (the Pearson statistic divided by the design effect); a plain chi-square on
  frame counts alarms on almost every fair experiment, because whole cameras, not frames, are assigned.
- `ArmSample` / `ratio_estimate`: a ratio-of-sums metric (latency ms per frame, fail-closed frames per frame,
  faces per frame) with its delta-method variance, cameras as clusters (Deng, Knoblich, Lu 2018).
- `compare`: treatment minus control with a Welch-style normal approximation: a fixed-horizon test, valid only at
  one pre-planned look.
- `msprt_update` / `sequential_compare`: the mixture sequential probability ratio test with a normal mixing
  distribution (Johari, Pekelis, Walsh 2017, "Always valid inference"): an always-valid p-value and confidence
  sequence, so looking after every interval is safe. State is passed in and returned (`SequentialResult`), so the
  caller can keep it in Redis (`as_dict` / `from_dict`).
- `Guardrail` / `evaluate_guardrails` / `recommend`: tolerated degradations judged with the always-valid interval,
  and promote / hold / rollback with human-readable reasons.

No scipy: the few distributions needed (normal, chi-square survival) are computed with `math` / `statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Direction = Literal["lower_is_better", "higher_is_better"]
Status = Literal["passed", "failed", "inconclusive"]
Action = Literal["promote", "hold", "rollback"]

SRM_ALPHA = 0.001
"""GrowthBook's default SRM threshold; Statsig raises its red alert below it too."""

MIN_CAMERAS_FOR_VARIANCE = 16
"""A sequential look counts only when each arm has at least this many cameras. A cluster variance from a handful of
cameras is often far too small by chance, and one such look rejects for good (the p-value is a running minimum).
Measured in an A/A simulation (cameras joining 4 per arm per interval, 50 looks, lognormal frame counts,
alpha 0.05): counting looks from 8 cameras per arm gave 4.6% false rejections, nearly all at the first looks;
from 12, 3.5%; from 16, 2.2-2.7%."""

DEFAULT_RELATIVE_EFFECT = 0.1
"""The default mixing scale of the mSPRT: effects of about 10% of the control mean are the ones it detects fastest."""


# --------------------------------------------------------------------------------------------- distributions


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X chi-square with an integer number of degrees of freedom (closed forms, no scipy).

    Even df = 2m: Q = e^{-x/2} sum_{j<m} (x/2)^j / j!. Odd df = 2m+1: Q = erfc(sqrt(x/2)) + e^{-x/2} sum_{j<m}
    (x/2)^{j+1/2} / Gamma(j+3/2). Terms are built by recurrence in log space, so large x neither overflows nor
    loses the tail.
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not x > 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    half = x / 2.0
    m = df // 2
    if df % 2 == 0:
        total = 0.0
        log_term = -half  # log(e^{-x/2} (x/2)^0 / 0!)
        for j in range(m):
            if j > 0:
                log_term += math.log(half) - math.log(j)
            total += math.exp(log_term)
        return min(1.0, total)
    total = math.erfc(math.sqrt(half))
    log_term = -half + 0.5 * math.log(half) - math.lgamma(1.5)  # j = 0
    for j in range(m):
        if j > 0:
            log_term += math.log(half) - math.log(j + 0.5)
        total += math.exp(log_term)
    return min(1.0, total)


def _z_quantile(alpha: float) -> float:
    """The two-sided critical value z_{1 - alpha/2}."""
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


# --------------------------------------------------------------------------------------------------- SRM


@dataclass(frozen=True)
class SrmResult:
    """A sample-ratio-mismatch check: mismatch is p_value < alpha."""

    statistic: float
    p_value: float
    mismatch: bool
    expected: dict[str, float]
    observed: dict[str, float] = field(default_factory=dict)
    alpha: float = SRM_ALPHA
    design_effect: float = 1.0
    """1 for independently assigned units (cameras); for frames, total frames x sum(N_i^2) / (sum N_i)^2."""

    def describe(self, what: str) -> str:
        arms = ", ".join(
            f"{arm} {self.observed[arm]:,.0f} (expected {self.expected[arm]:,.1f})" for arm in self.expected
        )
        deff = f", design effect {self.design_effect:,.1f}" if self.design_effect != 1.0 else ""
        verdict = "<" if self.mismatch else ">="
        return (
            f"sample ratio {'mismatch' if self.mismatch else 'ok'} on {what}: {arms}; chi-square "
            f"{self.statistic:.2f}{deff}, p = {self.p_value:.3g} {verdict} {self.alpha:g}"
        )


def _check_weights(observed: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, float]:
    if set(observed) != set(weights):
        raise ValueError(f"observed arms {sorted(observed)} differ from weighted arms {sorted(weights)}")
    if len(weights) < 2:
        raise ValueError("an SRM check needs at least two arms")
    if any(not (w >= 0.0 and math.isfinite(w)) for w in weights.values()):
        raise ValueError(f"weights must be finite and >= 0: {dict(weights)}")
    total_w = float(sum(weights.values()))
    if total_w <= 0.0:
        raise ValueError("weights sum to 0")
    return {arm: float(w) / total_w for arm, w in weights.items()}


def _pearson(observed: Mapping[str, float], shares: Mapping[str, float]) -> tuple[float, dict[str, float], int]:
    """Pearson's statistic over the arms with a positive weight; an observation in a zero-weight arm is an
    impossible assignment and makes the statistic infinite."""
    total = float(sum(observed.values()))
    expected = {arm: total * shares[arm] for arm in shares}
    stat = 0.0
    live = 0
    for arm, exp in expected.items():
        obs = float(observed[arm])
        if exp > 0.0:
            stat += (obs - exp) ** 2 / exp
            live += 1
        elif obs > 0.0:
            stat = math.inf
    return stat, expected, max(live - 1, 1)


def srm_check(observed: Mapping[str, int], weights: Mapping[str, float], alpha: float = SRM_ALPHA) -> SrmResult:
    """Pearson chi-square goodness of fit of `observed` counts per arm against `weights` (normalised to sum to 1).

    statistic = sum_a (O_a - E_a)^2 / E_a with E_a = n w_a, df = (arms with w_a > 0) - 1; mismatch when
    p < alpha (0.001 by default, as GrowthBook and Statsig). Use it on cameras per arm (each camera is assigned
    independently by its hash). For frames per arm use `frame_srm_check`: frames are assigned a whole camera at a
    time, and this test would treat them as independent.
    """
    shares = _check_weights(observed, weights)
    if any(v < 0 for v in observed.values()):
        raise ValueError(f"counts must be >= 0: {dict(observed)}")
    stat, expected, df = _pearson(observed, shares)
    p = chi2_sf(stat, df) if sum(observed.values()) > 0 else 1.0
    return SrmResult(stat, p, p < alpha, expected, {a: float(v) for a, v in observed.items()}, alpha)


def frame_srm_check(
    frames_per_camera: Mapping[str, Sequence[float] | npt.NDArray[Any]],
    weights: Mapping[str, float],
    alpha: float = SRM_ALPHA,
) -> SrmResult:
    """SRM on frames per arm, cluster-robust: cameras are assigned, so frame shares vary with how many frames the
    assigned cameras happen to send.

    With cameras i assigned to arm a with probability w_a independently of their frame counts N_i, the frame share
    S_a = sum_{i in a} N_i / sum_i N_i has covariance (sum N_i^2 / (sum N_i)^2) (diag(w) - w w^T), so the Wald
    statistic is n_eff sum_a (S_a - w_a)^2 / w_a with n_eff = (sum N_i)^2 / sum N_i^2 (Kish's effective number of
    cameras): the Pearson statistic on frame totals divided by the design effect n / n_eff. Asymptotically
    chi-square with arms - 1 df when no single camera dominates. It flags frames lost (or duplicated) in one arm
    beyond what the camera-to-camera spread of frame rates explains.
    """
    arrays = {arm: np.asarray(v, dtype=np.float64) for arm, v in frames_per_camera.items()}
    observed = {arm: float(a.sum()) for arm, a in arrays.items()}
    shares = _check_weights(observed, weights)
    if any((a < 0).any() or not np.isfinite(a).all() for a in arrays.values()):
        raise ValueError("frame counts must be finite and >= 0")
    total = sum(observed.values())
    if total <= 0.0:
        return SrmResult(0.0, 1.0, False, {a: 0.0 for a in shares}, observed, alpha)
    sum_sq = float(sum(float((a * a).sum()) for a in arrays.values()))
    deff = total * sum_sq / total**2
    pearson, expected, df = _pearson(observed, shares)
    stat = pearson / deff
    p = chi2_sf(stat, df)
    return SrmResult(stat, p, p < alpha, expected, observed, alpha, deff)


# ----------------------------------------------------------------------------------------- ratio metrics


@dataclass(frozen=True)
class ArmSample:
    """One arm's per-camera aggregates of a metric: `sums[i]` and `counts[i]` for camera i.

    Ratio metrics: latency (ms summed, frames counted), fail-closed rate (fail-closed frames, frames), faces per
    frame (faces, frames), held-track rate, shadow disagreement. A per-camera quantile (a camera's p95 latency)
    enters as (p95, 1): the metric is then the mean over cameras of their p95, with the plain between-camera
    variance; quantile metrics have no ratio-of-sums form.
    """

    sums: npt.NDArray[np.float64]
    counts: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        sums = np.asarray(self.sums, dtype=np.float64).reshape(-1)
        counts = np.asarray(self.counts, dtype=np.float64).reshape(-1)
        if sums.shape != counts.shape:
            raise ValueError(f"{sums.size} sums but {counts.size} counts")
        if not (np.isfinite(sums).all() and np.isfinite(counts).all()):
            raise ValueError("sums and counts must be finite")
        if (counts < 0).any():
            raise ValueError("counts must be >= 0")
        object.__setattr__(self, "sums", sums)
        object.__setattr__(self, "counts", counts)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[float, float]]) -> ArmSample:
        """From (sum, count) per camera, e.g. `ArmSample.from_pairs(per_camera.values())`."""
        rows = list(pairs)
        if not rows:
            return cls(np.zeros(0), np.zeros(0))
        arr = np.asarray(rows, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError("pairs must be (sum, count) tuples")
        return cls(arr[:, 0], arr[:, 1])

    @classmethod
    def from_arrays(cls, sums: npt.ArrayLike, counts: npt.ArrayLike) -> ArmSample:
        """From two equal-length sequences or arrays of any numeric dtype (per camera, same order)."""
        return cls(np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64))

    @property
    def cameras(self) -> int:
        return int(self.sums.size)

    @property
    def total_count(self) -> float:
        return float(self.counts.sum())

    @property
    def total_sum(self) -> float:
        return float(self.sums.sum())


def ratio_estimate(arm: ArmSample) -> tuple[float, float]:
    """The ratio-of-sums mean R = sum_i Y_i / sum_i N_i and its delta-method variance with cameras as clusters.

    With K cameras, per-camera sums Y_i and counts N_i, and their means Ybar, Nbar (Deng, Knoblich, Lu 2018,
    "Applying the Delta Method in Metric Analytics", eq. for var(Ybar / Nbar)):

        var(R) ~= (1 / (K Nbar^2)) (s_Y^2 - 2 R s_YN + R^2 s_N^2)
               =  sum_i (Y_i - R N_i)^2 / (K (K - 1) Nbar^2)

    where s_Y^2, s_N^2, s_YN are the sample variances and covariance across cameras (ddof 1). It is the
    cluster-robust (sandwich) variance of the ratio: the residual Y_i - R N_i of a whole camera is one
    observation, so a camera effect shared by its frames is counted once per camera, not once per frame.

    Returns (nan, nan) without counts; the variance is nan with fewer than 2 cameras.
    """
    k = arm.cameras
    total_n = arm.total_count
    if k == 0 or total_n <= 0.0:
        return math.nan, math.nan
    r = arm.total_sum / total_n
    if k < 2:
        return r, math.nan
    n_bar = total_n / k
    resid = arm.sums - r * arm.counts
    var = float(resid @ resid) / (k * (k - 1) * n_bar * n_bar)
    return r, var


def _contrast(control: ArmSample, treatment: ArmSample, factor: float = 1.0) -> tuple[float, float, float, float]:
    """(R_t - factor R_c, its variance, R_c, R_t); arms are independent samples of cameras."""
    mc, vc = ratio_estimate(control)
    mt, vt = ratio_estimate(treatment)
    return mt - factor * mc, vt + factor * factor * vc, mc, mt


# ------------------------------------------------------------------------------------------- fixed horizon


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control at one look: a fixed-horizon normal test (valid at a single planned look only)."""

    diff: float
    relative_diff: float
    se: float
    z: float
    p_value_fixed: float
    ci95: tuple[float, float]
    control_mean: float = math.nan
    treatment_mean: float = math.nan


def compare(control: ArmSample, treatment: ArmSample) -> Comparison:
    """diff = R_t - R_c, se = sqrt(var_c + var_t) from `ratio_estimate` (Welch-style: unequal variances, normal
    approximation, which the central limit theorem over cameras justifies with a few dozen cameras per arm),
    z = diff / se, two-sided p = 2 P(Z > |z|), ci95 = diff +- 1.96 se. relative_diff = diff / R_c."""
    diff, var, mc, mt = _contrast(control, treatment)
    se = math.sqrt(var) if var >= 0.0 else math.nan
    rel = diff / mc if mc != 0.0 and math.isfinite(mc) else math.nan
    if se > 0.0:
        z = diff / se
        p = 2.0 * normal_sf(abs(z))
    elif se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0.0 else 0.0
    else:
        z, p = math.nan, math.nan
    half = _z_quantile(0.05) * se
    return Comparison(diff, rel, se, z, p, (diff - half, diff + half), mc, mt)


# ----------------------------------------------------------------------------------------------- mSPRT


@dataclass(frozen=True)
class SequentialResult:
    """The state and outcome of an mSPRT after some looks; pass it back as `previous` at the next look.

    p_value is the always-valid p-value (running minimum of 1/Lambda, at most 1) for theta = theta0; ci is the
    confidence sequence (running intersection of the per-look intervals). Both hold under continuous monitoring:
    P(ever p_value <= alpha | theta = theta0) <= alpha and P(theta ever outside ci) <= alpha.
    """

    estimate: float
    variance: float
    log_lambda: float
    p_value: float
    ci: tuple[float, float]
    tau2: float
    alpha: float
    theta0: float = 0.0
    looks: int = 0

    @property
    def rejected(self) -> bool:
        return self.p_value <= self.alpha

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "variance": self.variance,
            "log_lambda": self.log_lambda,
            "p_value": self.p_value,
            "ci": list(self.ci),
            "tau2": self.tau2,
            "alpha": self.alpha,
            "theta0": self.theta0,
            "looks": self.looks,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SequentialResult:
        lo, hi = d["ci"]
        return cls(
            float(d["estimate"]),
            float(d["variance"]),
            float(d["log_lambda"]),
            float(d["p_value"]),
            (float(lo), float(hi)),
            float(d["tau2"]),
            float(d["alpha"]),
            float(d.get("theta0", 0.0)),
            int(d.get("looks", 0)),
        )


def msprt_log_lambda(estimate: float, variance: float, tau2: float, theta0: float = 0.0) -> float:
    """log of the mixture likelihood ratio for a normal mean with a N(theta0, tau2) mixing distribution.

    With an estimate theta_hat ~ N(theta, V) (V = var_c + var_t, plug-in), the likelihood ratio of theta against
    theta0 integrated over theta ~ N(theta0, tau^2) is (Johari, Pekelis, Walsh 2017, eq. for the normal mSPRT,
    written in V = 2 sigma^2 / n):

        Lambda = sqrt(V / (V + tau^2)) exp( tau^2 (theta_hat - theta0)^2 / (2 V (V + tau^2)) ).
    """
    if not (tau2 > 0.0 and math.isfinite(tau2)):
        raise ValueError(f"tau2 must be > 0 and finite, got {tau2}")
    d = estimate - theta0
    if variance == 0.0:  # the limit V -> 0
        return math.inf if d != 0.0 else -math.inf
    s = variance + tau2
    return 0.5 * math.log(variance / s) + tau2 * d * d / (2.0 * variance * s)


def msprt_radius(variance: float, tau2: float, alpha: float) -> float:
    """Half-width of the per-look interval {theta0 : Lambda(theta0) < 1/alpha}:
    sqrt( V (V + tau^2) / tau^2 (2 log(1/alpha) + log((V + tau^2) / V)) )."""
    if variance == 0.0:
        return 0.0
    s = variance + tau2
    return math.sqrt(variance * s / tau2 * (2.0 * math.log(1.0 / alpha) + math.log(s / variance)))


def msprt_update(
    estimate: float,
    variance: float,
    *,
    tau2: float | None = None,
    alpha: float = 0.05,
    theta0: float = 0.0,
    previous: SequentialResult | None = None,
) -> SequentialResult:
    """One look of the normal-mixture mSPRT on the cumulative estimate and its (plug-in) variance.

    p_value = min(previous p, 1 / Lambda, 1); ci = previous ci intersected with estimate +- msprt_radius. tau2,
    alpha and theta0 come from `previous` when given (they must stay fixed over the looks for the guarantee to
    hold); tau2 is required at the first look (a `previous` with no counted look yet does not fix it). A look with
    a non-finite estimate or variance leaves the state as it was (it does not count).
    """
    if previous is not None and previous.looks > 0:
        tau2, alpha, theta0 = previous.tau2, previous.alpha, previous.theta0
    elif previous is not None:  # nothing counted yet: the mixing variance may still be chosen
        tau2 = previous.tau2 if tau2 is None else tau2
        previous = None
    if tau2 is None:
        raise ValueError("tau2 is required at the first look")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not (math.isfinite(estimate) and math.isfinite(variance) and variance >= 0.0):
        if previous is not None:
            return previous
        return SequentialResult(estimate, variance, 0.0, 1.0, (-math.inf, math.inf), tau2, alpha, theta0, 0)
    log_lam = msprt_log_lambda(estimate, variance, tau2, theta0)
    p = 1.0 if log_lam <= 0.0 else math.exp(-log_lam)
    r = msprt_radius(variance, tau2, alpha)
    lo, hi = estimate - r, estimate + r
    looks = 1
    if previous is not None:
        p = min(p, previous.p_value)
        lo, hi = max(lo, previous.ci[0]), min(hi, previous.ci[1])
        looks = previous.looks + 1
    return SequentialResult(estimate, variance, log_lam, p, (lo, hi), tau2, alpha, theta0, looks)


def default_tau2(
    control: ArmSample, treatment: ArmSample | None = None, relative_effect: float = DEFAULT_RELATIVE_EFFECT
) -> float:
    """The mixing variance from the metric's scale: (relative_effect x |control mean|)^2, i.e. effects of about 10% are
    detected fastest. Without a usable control mean, relative_effect x the between-camera SD of per-camera means
    (both arms); 1.0 when even that is 0. Fix it at the first look and keep it (`previous` does)."""
    mc, _ = ratio_estimate(control)
    if math.isfinite(mc) and mc != 0.0:
        return (relative_effect * abs(mc)) ** 2
    arms = [control] if treatment is None else [control, treatment]
    means = np.concatenate([a.sums[a.counts > 0] / a.counts[a.counts > 0] for a in arms])
    if means.size >= 2:
        sd = float(np.std(means, ddof=1))
        if sd > 0.0:
            return (relative_effect * sd) ** 2
    return 1.0


def sequential_compare(
    control: ArmSample,
    treatment: ArmSample,
    *,
    previous: SequentialResult | None = None,
    tau2: float | None = None,
    alpha: float = 0.05,
    min_cameras: int = MIN_CAMERAS_FOR_VARIANCE,
) -> SequentialResult:
    """The mSPRT of R_t - R_c = 0 at this look, on cumulative per-camera aggregates. tau2 defaults to
    `default_tau2(control, treatment)` at the first counted look. Looks where an arm has fewer than `min_cameras`
    cameras do not count (the state is returned unchanged, or an empty one)."""
    diff, var, _, _ = _contrast(control, treatment)
    if (previous is None or previous.looks == 0) and tau2 is None:
        tau2 = default_tau2(control, treatment)
    if min(control.cameras, treatment.cameras) < min_cameras:
        diff, var = math.nan, math.nan
    return msprt_update(diff, var, tau2=tau2, alpha=alpha, previous=previous)


# ------------------------------------------------------------------------------------------------ guardrails


@dataclass(frozen=True)
class Guardrail:
    """A metric the challenger may not make worse beyond a tolerance.

    Exactly one of `relative` (a fraction of the control mean: 0.20 = latency may be up to 20% worse, 0.10 = faces
    per frame may be up to 10% lower) and `absolute` (in metric units: 0.005 = fail-closed rate up to +0.5
    percentage point) is set. unit: "ms", "pp" (a rate shown in percentage points), or "" for display.
    """

    metric: str
    direction: Direction
    relative: float | None = None
    absolute: float | None = None
    alpha: float = 0.05
    tau2: float | None = None
    unit: str = ""

    def __post_init__(self) -> None:
        if self.direction not in ("lower_is_better", "higher_is_better"):
            raise ValueError(f"direction must be lower_is_better or higher_is_better, got {self.direction!r}")
        if (self.relative is None) == (self.absolute is None):
            raise ValueError(f"guardrail {self.metric}: set exactly one of relative and absolute")
        tol = self.relative if self.relative is not None else self.absolute
        assert tol is not None
        if not (tol >= 0.0 and math.isfinite(tol)):
            raise ValueError(f"guardrail {self.metric}: tolerance must be finite and >= 0, got {tol}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"guardrail {self.metric}: alpha must be in (0, 1)")

    @property
    def sign(self) -> float:
        """+1 when a larger value is worse."""
        return 1.0 if self.direction == "lower_is_better" else -1.0

    def excess(self, control: ArmSample, treatment: ArmSample) -> tuple[float, float, float, float]:
        """The treatment's degradation beyond the tolerated limit, in metric units, and its variance:
        e = s (R_t - f R_c - a) with s = +1 if lower is better else -1, f = 1 + s r (relative) or 1, and a = s x
        absolute (or 0). e > 0 means worse than tolerated. Its variance var_t + f^2 var_c is exact for the linear
        contrast, so the control's uncertainty is counted too. Returns (e, var, R_c, R_t)."""
        s = self.sign
        if self.relative is not None:
            factor, offset = 1.0 + s * self.relative, 0.0
        else:
            assert self.absolute is not None
            factor, offset = 1.0, s * self.absolute
        c, var, mc, mt = _contrast(control, treatment, factor)
        return s * (c - offset), var, mc, mt

    def describe_tolerance(self) -> str:
        worse = "+" if self.sign > 0 else "-"
        better = "lower" if self.sign > 0 else "higher"
        if self.relative is not None:
            return f"tolerated {worse}{100 * self.relative:g}% ({better} is better)"
        assert self.absolute is not None
        return f"tolerated {worse}{_fmt_abs(self.absolute, self.unit)} ({better} is better)"


def _fmt_abs(x: float, unit: str, signed: bool = False) -> str:
    if unit == "pp":
        return f"{100 * x:+.3g} pp" if signed else f"{100 * x:.3g} pp"
    text = f"{x:+.4g}" if signed else f"{x:.4g}"
    return f"{text} {unit}" if unit else text


def _fmt_value(x: float, unit: str) -> str:
    if unit == "pp":
        return f"{100 * x:.3g}%"
    return f"{x:.4g} {unit}" if unit else f"{x:.4g}"


@dataclass(frozen=True)
class GuardrailResult:
    """One guardrail at one look. `sequential` is the mSPRT on the excess over tolerance: keep it and pass
    `{r.guardrail.metric: r.sequential for r in results}` as `previous` at the next look. change_ci is the
    always-valid interval of the change (relative fraction or metric units, as the tolerance is stated)."""

    guardrail: Guardrail
    status: Status
    control_mean: float
    treatment_mean: float
    change: float
    change_ci: tuple[float, float]
    comparison: Comparison
    sequential: SequentialResult
    reason: str


def _change_ci(g: Guardrail, excess_ci: tuple[float, float], mc: float) -> tuple[float, float]:
    """Map the excess interval back to the change as the tolerance is stated: change = s (tol + e / scale)."""
    s = g.sign
    tol = g.relative if g.relative is not None else g.absolute
    assert tol is not None
    scale = abs(mc) if g.relative is not None else 1.0
    if not (scale > 0.0 and math.isfinite(scale)):
        return (math.nan, math.nan)
    a = s * (tol + excess_ci[0] / scale)
    b = s * (tol + excess_ci[1] / scale)
    return (min(a, b), max(a, b))


def _evaluate_one(
    g: Guardrail,
    control: ArmSample,
    treatment: ArmSample,
    previous: SequentialResult | None,
    min_cameras: int,
) -> GuardrailResult:
    e, var, mc, mt = g.excess(control, treatment)
    comparison = compare(control, treatment)
    if previous is None or previous.looks == 0:
        if g.tau2 is not None:
            tau2 = g.tau2
        elif g.relative is not None and math.isfinite(mc) and mc != 0.0 and g.relative > 0.0:
            tau2 = (g.relative * abs(mc)) ** 2
        elif g.absolute is not None and g.absolute > 0.0:
            tau2 = g.absolute**2
        else:
            tau2 = default_tau2(control, treatment)
    else:
        tau2 = previous.tau2
    few = min(control.cameras, treatment.cameras) < min_cameras
    seq = msprt_update(math.nan if few else e, math.nan if few else var, tau2=tau2, alpha=g.alpha, previous=previous)
    lo, hi = seq.ci
    if seq.looks == 0:
        status: Status = "inconclusive"
    elif lo > hi:
        # The confidence sequence ran empty: the metric is not stationary, so nothing is promoted on it. For
        # safety, this look's own always-valid interval still fails the guardrail when it lies wholly beyond it.
        now_lo = e - msprt_radius(var, tau2, g.alpha) if not few and math.isfinite(var) else math.nan
        status = "failed" if now_lo > 0.0 else "inconclusive"
    elif lo > 0.0:
        status = "failed"
    elif hi <= 0.0:
        status = "passed"
    else:
        status = "inconclusive"
    ci = _change_ci(g, seq.ci, mc)
    if g.relative is not None:
        change = comparison.relative_diff
        change_txt = f"{100 * change:+.1f}%"
        ci_txt = f"[{100 * ci[0]:+.1f}%, {100 * ci[1]:+.1f}%]"
    else:
        change = comparison.diff
        change_txt = _fmt_abs(change, g.unit, signed=True)
        ci_txt = f"[{_fmt_abs(ci[0], g.unit, signed=True)}, {_fmt_abs(ci[1], g.unit, signed=True)}]"
    level = f"{100 * (1 - g.alpha):g}%"
    head = (
        f"{g.metric} {status}: treatment {_fmt_value(mt, g.unit)} vs control {_fmt_value(mc, g.unit)} "
        f"({change_txt}), {g.describe_tolerance()}"
    )
    if seq.looks == 0:
        reason = (
            f"{head}; not tested yet: {min(control.cameras, treatment.cameras)} cameras in the smaller arm, "
            f"the test starts at {min_cameras}"
        )
    elif status == "failed" and lo > hi:
        reason = (f"{head}; the confidence sequence ran empty (the metric drifts), and this look's own always-valid "
                  f"{level} interval lies wholly beyond the tolerance")
    elif status == "failed":
        reason = f"{head}; always-valid {level} CI of the change {ci_txt} lies wholly beyond the tolerance"
    elif status == "passed":
        reason = f"{head}; always-valid {level} CI of the change {ci_txt} lies within the tolerance"
    elif lo > hi:
        reason = f"{head}; the confidence sequence ran empty ({ci_txt}): the metric drifts, judge by hand"
    else:
        reason = f"{head}; always-valid {level} CI of the change {ci_txt} still straddles the limit"
    return GuardrailResult(g, status, mc, mt, change, ci, comparison, seq, reason)


def evaluate_guardrails(
    guardrails: Sequence[Guardrail],
    samples: Mapping[str, tuple[ArmSample, ArmSample]],
    previous: Mapping[str, SequentialResult] | None = None,
    *,
    min_cameras: int = MIN_CAMERAS_FOR_VARIANCE,
) -> list[GuardrailResult]:
    """Judge each guardrail on `samples[metric] = (control, treatment)` (cumulative per-camera aggregates).

    failed: the always-valid CI of the excess over the tolerated limit lies wholly above 0 (the treatment is worse
    than tolerated, with confidence 1 - alpha under continuous monitoring); passed: it lies wholly at or below 0;
    inconclusive otherwise, or before both arms have `min_cameras` cameras, or with no data for the metric. Since the
    confidence sequence only narrows, a failed (or passed) guardrail stays so at later looks. The mixing variance is
    the tolerance itself (tau = relative x control mean at the first look, or the absolute tolerance) unless the
    guardrail sets tau2.
    """
    prev = previous or {}
    out: list[GuardrailResult] = []
    for g in guardrails:
        pair = samples.get(g.metric)
        if pair is None:
            empty = ArmSample(np.zeros(0), np.zeros(0))
            res = _evaluate_one(g, empty, empty, prev.get(g.metric), min_cameras)
            out.append(
                GuardrailResult(
                    g,
                    "inconclusive",
                    math.nan,
                    math.nan,
                    math.nan,
                    (math.nan, math.nan),
                    res.comparison,
                    res.sequential,
                    f"{g.metric} inconclusive: no data for the metric yet",
                )
            )
            continue
        out.append(_evaluate_one(g, pair[0], pair[1], prev.get(g.metric), min_cameras))
    return out


# ------------------------------------------------------------------------------------------- recommendation


@dataclass(frozen=True)
class Recommendation:
    action: Action
    reasons: list[str]


def recommend(
    srm_results: Mapping[str, SrmResult],
    guardrail_results: Sequence[GuardrailResult],
    min_cameras: int,
    min_frames: int,
) -> Recommendation:
    """promote / hold / rollback for one challenger against control.

    srm_results must hold "cameras" (from `srm_check` on cameras per arm) and "frames" (from `frame_srm_check`);
    other keys are checked too. Their observed counts are the cameras and frames per arm; min_cameras and
    min_frames apply to the smallest arm.

    rollback: any SRM mismatch (the split is broken: assignment or data loss, so no comparison can be trusted) or
    any failed guardrail. promote: no SRM, at least one guardrail and every guardrail passed, and the smallest arm
    has min_cameras cameras and min_frames frames. hold otherwise. Reasons are sentences with the numbers.
    """
    for key in ("cameras", "frames"):
        if key not in srm_results:
            raise ValueError(f"srm_results needs a {key!r} entry (got {sorted(srm_results)})")
    rollback: list[str] = []
    hold: list[str] = []
    ok: list[str] = []
    for what, srm in srm_results.items():
        (rollback if srm.mismatch else ok).append(srm.describe(what))
    for r in guardrail_results:
        {"failed": rollback, "inconclusive": hold, "passed": ok}[r.status].append(r.reason)
    if not guardrail_results:
        hold.append("no guardrails are defined, so nothing shows the challenger is safe")
    for key, need in (("cameras", min_cameras), ("frames", min_frames)):
        observed = srm_results[key].observed
        arm, have = min(observed.items(), key=lambda kv: kv[1]) if observed else ("-", 0.0)
        if have < need:
            hold.append(f"only {have:,.0f} {key} in arm {arm} (the smallest); promotion needs {need:,} per arm")
        else:
            ok.append(f"{have:,.0f} {key} in the smallest arm ({arm}), at least the {need:,} needed")
    if rollback:
        return Recommendation("rollback", rollback + hold)
    if hold:
        return Recommendation("hold", hold)
    return Recommendation("promote", ok)
