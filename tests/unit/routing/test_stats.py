"""The experiment statistics (imask.routing.stats): SRM, delta-method variances, mSPRT under peeking, guardrails.

Pure and seeded: every figure below comes from simulations with a fixed numpy Generator, so it is the same on
every run. The measured rates are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest

from imask.routing.stats import (
    MIN_CAMERAS_FOR_VARIANCE,
    ArmSample,
    Guardrail,
    GuardrailResult,
    Recommendation,
    SequentialResult,
    SrmResult,
    chi2_sf,
    compare,
    default_tau2,
    evaluate_guardrails,
    frame_srm_check,
    msprt_update,
    normal_sf,
    ratio_estimate,
    recommend,
    sequential_compare,
    srm_check,
)

Array = npt.NDArray[np.float64]


# ------------------------------------------------------------------------------------------------------ SRM


def test_chi2_sf_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in range(1, 9):
        for x in (0.0, 0.01, 0.5, 1.0, 3.84, 10.83, 14.4, 40.0, 300.0):
            want = float(scipy_stats.chi2.sf(x, df))
            assert chi2_sf(x, df) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_srm_matches_scipy_chisquare() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    res = srm_check({"control": 560, "challenger": 440}, {"control": 0.5, "challenger": 0.5})
    want = scipy_stats.chisquare([560, 440], [500, 500])
    assert res.statistic == pytest.approx(float(want.statistic))
    assert res.p_value == pytest.approx(float(want.pvalue), rel=1e-9)


def test_srm_detected_on_skewed_assignments() -> None:
    half = srm_check({"control": 560, "challenger": 440}, {"control": 50, "challenger": 50})
    assert half.mismatch and half.statistic == pytest.approx(14.4) and half.p_value < 0.001
    assert half.expected == {"control": 500.0, "challenger": 500.0}
    canary = srm_check({"control": 860, "challenger": 140}, {"control": 0.9, "challenger": 0.1})
    assert canary.mismatch and canary.p_value < 1e-4, canary
    assert "mismatch on cameras" in canary.describe("cameras")
    # the same 14% share on too few cameras is not evidence of anything
    small = srm_check({"control": 86, "challenger": 14}, {"control": 0.9, "challenger": 0.1})
    assert not small.mismatch
    # a camera in an arm of weight 0 is an impossible assignment
    assert srm_check({"a": 10, "b": 1}, {"a": 1.0, "b": 0.0}).mismatch


def test_srm_false_alarm_rate_on_fair_assignments() -> None:
    rng = np.random.default_rng(20261201)
    sims = 20_000
    rates = {}
    for weights in ({"control": 0.5, "challenger": 0.5}, {"control": 0.9, "challenger": 0.1}):
        counts = rng.multinomial(1000, list(weights.values()), size=sims)
        alarms = sum(srm_check(dict(zip(weights, map(int, row), strict=True)), weights).mismatch for row in counts)
        rates[tuple(weights.values())] = alarms / sims
    print(f"SRM false-alarm rate over {sims} fair assignments of 1,000 cameras (alpha 0.001): {rates}")
    for rate in rates.values():
        assert rate < 0.003


def _frames_per_camera(rng: np.random.Generator, cameras: int, sims: int) -> Array:
    """Heterogeneous cameras: frame counts lognormal around 3,000 (some cameras send 10x more than others)."""
    return rng.poisson(rng.lognormal(math.log(3000), 0.8, (sims, cameras))).astype(np.float64)


def test_frame_srm_is_cluster_robust() -> None:
    """Whole cameras are assigned, so a chi-square on frame totals alarms on fair experiments; the design-effect
    corrected check does not, and still catches an arm that loses a large share of its frames."""
    rng = np.random.default_rng(7)
    sims, cameras = 2_000, 1_000
    weights = {"control": 0.5, "challenger": 0.5}
    frames = _frames_per_camera(rng, cameras, sims)
    in_challenger = rng.random((sims, cameras)) < 0.5
    naive = robust = 0
    for s in range(sims):
        arms = {"control": frames[s][~in_challenger[s]], "challenger": frames[s][in_challenger[s]]}
        totals = {arm: int(v.sum()) for arm, v in arms.items()}
        naive += srm_check(totals, weights).mismatch
        robust += frame_srm_check(arms, weights).mismatch
    naive_rate, robust_rate = naive / sims, robust / sims
    print(
        f"frame SRM false-alarm rate over {sims} fair camera assignments: chi-square on frame totals {naive_rate:.3f},"
    )
    print(f"  cluster-robust (design effect) {robust_rate:.4f}")
    assert naive_rate > 0.5
    assert robust_rate < 0.003
    # the challenger drops 30% of its frames on every camera: detected (10% is not: camera spread hides it)
    s = 0
    lossy = {"control": frames[s][~in_challenger[s]], "challenger": np.floor(0.7 * frames[s][in_challenger[s]])}
    res = frame_srm_check(lossy, weights)
    assert res.mismatch and res.design_effect > 1000, res
    assert "design effect" in res.describe("frames")


# ------------------------------------------------------------------------------------- delta-method variance


def _clustered_arm(
    rng: np.random.Generator, cameras: int, mu: float, sd_camera: float, sd_frame: float
) -> tuple[ArmSample, float]:
    """One arm of per-camera (latency sum, frames) with a camera random effect and varying frames per camera,
    drawn exactly without materialising frames; also returns the naive frames-as-independent SE."""
    n = rng.poisson(rng.lognormal(math.log(200), 0.7, cameras)) + 1
    m = mu + rng.normal(0.0, sd_camera, cameras)
    sums = n * m + sd_frame * np.sqrt(n) * rng.standard_normal(cameras)
    within_ss = sd_frame**2 * rng.chisquare(n - 1)  # sum over a camera's frames of (y - its mean)^2
    total_n = float(n.sum())
    grand = float(sums.sum()) / total_n
    ss = float(within_ss.sum() + ((sums / n - grand) ** 2 * n).sum())
    naive_se = math.sqrt(ss / (total_n - 1) / total_n)
    return ArmSample(sums, n.astype(np.float64)), naive_se


def test_ratio_estimate_matches_the_textbook_delta_formula() -> None:
    rng = np.random.default_rng(3)
    arm, _ = _clustered_arm(rng, 30, 30.0, 5.0, 10.0)
    mean, var = ratio_estimate(arm)
    y, n = arm.sums, arm.counts
    k = y.size
    r = y.sum() / n.sum()
    cov = np.cov(y, n, ddof=1)
    textbook = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (k * n.mean() ** 2)
    assert mean == pytest.approx(r)
    assert var == pytest.approx(textbook, rel=1e-9)
    assert math.isnan(ratio_estimate(ArmSample.from_pairs([(5.0, 2.0)]))[1])
    assert math.isnan(ratio_estimate(ArmSample.from_pairs([]))[0])


def test_delta_method_se_matches_the_empirical_sd_and_naive_is_far_too_small() -> None:
    rng = np.random.default_rng(11)
    reps = 2_000
    est = np.empty(reps)
    var = np.empty(reps)
    naive = np.empty(reps)
    for i in range(reps):
        arm, naive[i] = _clustered_arm(rng, 50, 30.0, 8.0, 4.0)  # ICC 0.8: strongly clustered
        est[i], var[i] = ratio_estimate(arm)
    empirical = float(est.std(ddof=1))
    delta = math.sqrt(float(var.mean()))
    naive_se = math.sqrt(float((naive**2).mean()))
    print(
        f"ratio SE over {reps} simulated arms of 50 cameras: empirical SD {empirical:.4f}, delta-method {delta:.4f} "
        f"({delta / empirical:.3f}x), frames-as-independent {naive_se:.4f} ({empirical / naive_se:.1f}x too small)"
    )
    assert abs(delta / empirical - 1.0) < 0.15
    assert empirical / naive_se > 2.0

    # the same holds for the difference of two arms: compare()'s SE against the spread of its diff
    diffs = np.empty(500)
    ses = np.empty(500)
    for i in range(500):
        a, _ = _clustered_arm(rng, 50, 30.0, 8.0, 4.0)
        b, _ = _clustered_arm(rng, 50, 30.0, 8.0, 4.0)
        c = compare(a, b)
        diffs[i], ses[i] = c.diff, c.se
    assert abs(math.sqrt(float((ses**2).mean())) / float(diffs.std(ddof=1)) - 1.0) < 0.15


def test_compare_fields() -> None:
    rng = np.random.default_rng(5)
    a, _ = _clustered_arm(rng, 40, 30.0, 3.0, 5.0)
    b, _ = _clustered_arm(rng, 40, 36.0, 3.0, 5.0)
    c = compare(a, b)
    assert c.diff == pytest.approx(c.treatment_mean - c.control_mean)
    assert c.relative_diff == pytest.approx(c.diff / c.control_mean)
    assert c.z == pytest.approx(c.diff / c.se)
    assert c.p_value_fixed == pytest.approx(2 * normal_sf(abs(c.z)))
    assert c.ci95[0] < c.diff < c.ci95[1]
    assert c.ci95[1] - c.ci95[0] == pytest.approx(2 * 1.959964 * c.se, rel=1e-6)
    assert c.p_value_fixed < 1e-6 and c.relative_diff == pytest.approx(0.2, abs=0.05)


# ------------------------------------------------------------------------------------------------- mSPRT


def _growing_experiment(
    rng: np.random.Generator, sims: int, effect: float, intervals: int = 50, per_interval: int = 4
) -> list[tuple[Array, Array]]:
    """Cumulative per-camera (latency sum, frames) for control and treatment, shape (sims, cameras, intervals):
    4 cameras join each arm per interval (a ramp), each with its own level (SD 20% of the mean), frame rate
    (lognormal) and per-interval shocks, plus frame noise."""
    cams = intervals * per_interval
    joined = np.repeat(np.arange(intervals), per_interval)[:, None] <= np.arange(intervals)[None, :]
    arms = []
    for eff in (0.0, effect):
        level = 30.0 * (1.0 + eff) + rng.normal(0.0, 6.0, (sims, cams, 1))
        n = rng.poisson(rng.lognormal(math.log(150), 0.8, (sims, cams, 1)), (sims, cams, intervals)) * joined
        shock = rng.normal(0.0, 3.0, (sims, cams, intervals))
        y = n * (level + shock) + 10.0 * np.sqrt(n) * rng.standard_normal((sims, cams, intervals))
        arms.append((np.cumsum(y, axis=2), np.cumsum(n, axis=2).astype(np.float64)))
    return arms


def _peek(arms: list[tuple[Array, Array]], s: int, t: int, per_interval: int = 4) -> tuple[ArmSample, ArmSample]:
    k = (t + 1) * per_interval
    (yc, nc), (yt, nt) = arms
    return ArmSample(yc[s, :k, t], nc[s, :k, t]), ArmSample(yt[s, :k, t], nt[s, :k, t])


def test_msprt_type_one_error_under_peeking_vs_naive_z_test() -> None:
    rng = np.random.default_rng(20170101)
    sims, intervals, alpha = 500, 50, 0.05
    msprt_rejects = naive_rejects = 0
    for _ in range(sims):
        arms = _growing_experiment(rng, 1, 0.0, intervals)
        seq: SequentialResult | None = None
        naive = False
        for t in range(intervals):
            control, treatment = _peek(arms, 0, t)
            seq = sequential_compare(control, treatment, previous=seq, alpha=alpha)
            if seq.looks:  # the naive analyst: compare()'s fixed-horizon z-test at the same looks
                naive = naive or 2 * normal_sf(abs(seq.estimate) / math.sqrt(seq.variance)) < alpha
        assert seq is not None and seq.looks == intervals - (MIN_CAMERAS_FOR_VARIANCE // 4 - 1)
        msprt_rejects += seq.rejected
        naive_rejects += naive
        # the p-value and the confidence sequence agree: rejected exactly when 0 left the interval
        assert seq.rejected == (not seq.ci[0] < 0.0 < seq.ci[1])
    msprt_rate, naive_rate = msprt_rejects / sims, naive_rejects / sims
    print(
        f"A/A with a look after each of {intervals} intervals, {sims} sims, alpha {alpha}: mSPRT ever rejected "
        f"{msprt_rate:.3f}, naive fixed-horizon z-test ever rejected {naive_rate:.3f}"
    )
    assert msprt_rate <= 0.06
    assert naive_rate > 0.15


def test_msprt_has_power_under_a_real_effect() -> None:
    rng = np.random.default_rng(99)
    sims, intervals = 100, 50
    first: list[int] = []
    for _ in range(sims):
        arms = _growing_experiment(rng, 1, 0.15, intervals)  # latency +15%
        seq: SequentialResult | None = None
        for t in range(intervals):
            seq = sequential_compare(*_peek(arms, 0, t), previous=seq)
            if seq.rejected:
                first.append(t)
                assert seq.ci[0] > 0.0  # and the interval says which way
                break
    power = len(first) / sims
    print(f"+15% latency: mSPRT rejected in {power:.2f} of {sims} sims, median at interval {np.median(first):.0f}")
    assert power >= 0.9


def test_msprt_state_round_trips_and_fixes_tau() -> None:
    rng = np.random.default_rng(1)
    arms = _growing_experiment(rng, 1, 0.0, 10)
    seq = None
    for t in range(10):
        control, treatment = _peek(arms, 0, t)
        seq = sequential_compare(control, treatment, previous=seq)
        seq = SequentialResult.from_dict(json.loads(json.dumps(seq.as_dict())))
    assert seq is not None and seq.looks == 10 - (MIN_CAMERAS_FOR_VARIANCE // 4 - 1)
    # tau2 was fixed at the first counted look from that look's control mean
    first_control, _ = _peek(arms, 0, MIN_CAMERAS_FOR_VARIANCE // 4 - 1)
    assert seq.tau2 == pytest.approx(default_tau2(first_control))
    # manual path: the same as compare() + msprt_update
    again = None
    for t in range(MIN_CAMERAS_FOR_VARIANCE // 4 - 1, 10):
        c = compare(*_peek(arms, 0, t))
        again = msprt_update(c.diff, c.se**2, tau2=seq.tau2, previous=again)
    assert again is not None and again.p_value == pytest.approx(seq.p_value) and again.ci == pytest.approx(seq.ci)


# -------------------------------------------------------------------------------- guardrails and decisions


GUARDRAILS = [
    Guardrail("latency_p95_ms", "lower_is_better", relative=0.20, unit="ms"),
    Guardrail("fail_closed_rate", "lower_is_better", absolute=0.005, unit="pp"),
    Guardrail("faces_per_frame", "higher_is_better", relative=0.10),
]


class _Cameras:
    """Persistent traits of one arm's cameras: frame rate, p95 latency level, fail-closed propensity, faces in view.
    Cameras differ a lot and keep their differences over intervals (the reason frames are not independent)."""

    def __init__(self, rng: np.random.Generator, cameras: int) -> None:
        self.rate = rng.lognormal(0.0, 0.6, cameras)
        self.p95 = 40.0 * rng.lognormal(0.0, 0.25, cameras)
        self.fail = rng.gamma(2.0, 0.5, cameras)  # mean 1
        self.faces = 3.0 * rng.gamma(16.0, 1.0 / 16.0, cameras)  # mean 3, CV 0.25

    def interval(
        self,
        rng: np.random.Generator,
        frames: float,
        latency: float = 1.0,
        fail_closed: float = 0.002,
        faces: float = 1.0,
    ) -> dict[str, ArmSample]:
        """One interval's per-camera aggregates: p95 latency per camera (as (p95, 1)), fail-closed frames over
        frames, faces over frames, and frames (as (frames, 1))."""
        k = self.rate.size
        n = rng.poisson(self.rate * frames) + 1
        p95 = self.p95 * latency * rng.lognormal(0.0, 0.05, k)
        fails = rng.binomial(n, np.minimum(1.0, self.fail * fail_closed))
        found = rng.poisson(n * self.faces * faces)
        ones = np.ones(k)
        return {
            "latency_p95_ms": ArmSample.from_pairs(zip(p95, ones, strict=True)),
            "fail_closed_rate": ArmSample.from_arrays(fails, n),
            "faces_per_frame": ArmSample.from_arrays(found, n),
            "_frames": ArmSample.from_arrays(n, ones),
        }


def _add(a: ArmSample, b: ArmSample) -> ArmSample:
    """Cumulative aggregates: sums and counts per camera add up (for p95: a running mean of interval p95s)."""
    return ArmSample(a.sums + b.sums, a.counts + b.counts)


def _run(
    rng: np.random.Generator,
    cameras: int,
    frames: float,
    intervals: int,
    min_cameras: int = 50,
    min_frames: int = 100_000,
    **challenger: float,
) -> list[tuple[Recommendation, list[GuardrailResult], dict[str, SrmResult]]]:
    """Intervals of a 50/50 experiment with cumulative aggregates; the recommendation after each. The challenger's
    cameras get the `challenger` multipliers (latency, faces) or fail-closed rate."""
    weights = {"control": 0.5, "challenger": 0.5}
    control_cams, treat_cams = _Cameras(rng, cameras), _Cameras(rng, cameras)
    control = control_cams.interval(rng, frames)
    treat = treat_cams.interval(rng, frames, **challenger)
    state: dict[str, SequentialResult] = {}
    out: list[tuple[Recommendation, list[GuardrailResult], dict[str, SrmResult]]] = []
    for _ in range(intervals):
        samples = {g.metric: (control[g.metric], treat[g.metric]) for g in GUARDRAILS}
        results = evaluate_guardrails(GUARDRAILS, samples, state)
        state = {r.guardrail.metric: r.sequential for r in results}
        srm = {
            "cameras": srm_check({"control": cameras, "challenger": cameras}, weights),
            "frames": frame_srm_check(
                {"control": control["_frames"].sums, "challenger": treat["_frames"].sums}, weights
            ),
        }
        out.append((recommend(srm, results, min_cameras, min_frames), results, srm))
        nc, nt = control_cams.interval(rng, frames), treat_cams.interval(rng, frames, **challenger)
        control = {name: _add(control[name], nc[name]) for name in control}
        treat = {name: _add(treat[name], nt[name]) for name in treat}
    return out


def test_bad_challenger_is_rolled_back_with_reasons() -> None:
    rng = np.random.default_rng(2024)
    runs = _run(rng, 100, 300, 5, latency=1.5, fail_closed=0.015)
    rec, results, _ = runs[0]
    assert rec.action == "rollback", rec
    status = {r.guardrail.metric: r.status for r in results}
    assert status["latency_p95_ms"] == "failed" and status["fail_closed_rate"] == "failed"
    text = " | ".join(rec.reasons)
    print("rollback reasons:", *rec.reasons, sep="\n  ")
    assert "latency_p95_ms failed" in text and "fail_closed_rate failed" in text
    assert "tolerated +20%" in text and "tolerated +0.5 pp" in text
    # a failed guardrail stays failed: the confidence sequence only narrows
    for rec_later, *_ in runs[1:]:
        assert rec_later.action == "rollback"


def test_neutral_challenger_with_little_data_is_held() -> None:
    rng = np.random.default_rng(5)
    (rec, results, _), *_ = _run(rng, 10, 50, 1)
    assert rec.action == "hold", rec
    assert all(r.status == "inconclusive" for r in results)
    text = " | ".join(rec.reasons)
    assert "only 10 cameras" in text and "promotion needs 50" in text
    # more cameras but a short look: still not enough frames to promote
    (rec, _, _), *_ = _run(rng, 60, 20, 1)
    assert rec.action == "hold" and "frames" in " | ".join(rec.reasons), rec


def test_good_challenger_with_enough_data_is_promoted() -> None:
    rng = np.random.default_rng(8)
    runs = _run(rng, 200, 300, 4, latency=0.95, faces=1.02)
    actions = [r[0].action for r in runs]
    rec, results, _ = runs[-1]
    print("promote reasons:", *rec.reasons, sep="\n  ")
    assert actions[-1] == "promote", (actions, rec)
    assert all(r.status == "passed" for r in results)
    assert "rollback" not in actions


def test_srm_rolls_back_even_a_good_challenger() -> None:
    rng = np.random.default_rng(8)
    (_, results, srm), *_ = _run(rng, 200, 300, 1, latency=0.95)
    skewed = dict(srm)
    skewed["cameras"] = srm_check({"control": 560, "challenger": 440}, {"control": 0.5, "challenger": 0.5})
    rec = recommend(skewed, results, 50, 1000)
    assert rec.action == "rollback" and "sample ratio mismatch on cameras" in rec.reasons[0], rec


def test_guardrail_validation_and_missing_metric() -> None:
    with pytest.raises(ValueError):
        Guardrail("x", "lower_is_better")
    with pytest.raises(ValueError):
        Guardrail("x", "lower_is_better", relative=0.1, absolute=0.1)
    with pytest.raises(ValueError):
        Guardrail("x", "sideways", relative=0.1)  # type: ignore[arg-type]
    (res,) = evaluate_guardrails([GUARDRAILS[0]], {})
    assert res.status == "inconclusive" and "no data" in res.reason
    with pytest.raises(ValueError):
        recommend({}, [res], 1, 1)


def test_a_drifting_metric_still_fails_when_this_look_is_beyond_tolerance() -> None:
    """A challenger that starts fine and then degrades: the confidence sequence runs empty (not stationary), which
    must not hide a degradation the current look shows beyond doubt (the canary would never be rolled back)."""
    rng = np.random.default_rng(7)
    guard = Guardrail("latency_ms", "lower_is_better", relative=0.2, unit="ms")

    def arms(treatment_ms: float) -> tuple[ArmSample, ArmSample]:
        frames = rng.integers(80, 120, size=40).astype(float)
        control = ArmSample(frames * 100.0 * rng.normal(1, 0.02, 40), frames)
        treatment = ArmSample(frames * treatment_ms * rng.normal(1, 0.02, 40), frames)
        return control, treatment

    first = evaluate_guardrails([guard], {"latency_ms": arms(90.0)})[0]  # better than control at first
    assert first.status == "passed"
    later = evaluate_guardrails([guard], {"latency_ms": arms(300.0)}, {"latency_ms": first.sequential})[0]
    assert later.status == "failed", later.reason
    assert "ran empty" in later.reason
