"""The drift tests against known values (scipy's results, computed once, or closed forms)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imask.drift import statistics as st


def test_kolmogorov_sf_known_values() -> None:
    # scipy.special.kolmogorov(x)
    assert st.kolmogorov_sf(1.0) == pytest.approx(0.26999967, abs=1e-7)
    assert st.kolmogorov_sf(1.36) == pytest.approx(0.04939, abs=1e-4)
    assert st.kolmogorov_sf(0.0) == 1.0
    assert st.kolmogorov_sf(5.0) < 1e-20


def test_ks_samples_statistic_and_decision() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    same = st.ks_samples(a, b)
    assert not same.drift and same.p_value > 0.05
    shifted = st.ks_samples(a, b + 0.5)
    assert shifted.drift and shifted.p_value < 1e-6
    assert st.ks_samples([1, 2, 3], [4, 5, 6]).statistic == 1.0


def test_binned_ks_matches_raw_ks_statistic_and_uses_effective_sizes() -> None:
    ref = [10, 20, 30, 40]
    cur = [40, 30, 20, 10]
    d = st.ks_statistic(ref, cur)
    assert d == pytest.approx(0.4)  # cumulative shares 0.1, 0.3, 0.6 against 0.4, 0.7, 0.9
    big = st.ks(ref, cur)
    small = st.ks(ref, cur, n_reference=10, n_current=10)
    assert big.p_value < small.p_value  # fewer independent observations: weaker evidence
    assert st.ks([0, 0], [1, 1]).p_value == 1.0


def test_wasserstein_normed() -> None:
    positions = [0.0, 1.0, 2.0, 3.0]
    assert st.wasserstein_normed([1, 2, 2, 1], [1, 2, 2, 1], positions).statistic == 0.0
    moved = st.wasserstein_normed([0, 10, 0, 0], [0, 0, 10, 0], positions)
    # W1 = 1; the reference has no spread, so the floor (a tenth of the spacing) is the scale
    assert moved.statistic == pytest.approx(10.0) and moved.drift
    ref = [1, 1, 1, 1]
    w = st.wasserstein_normed(ref, [0, 1, 1, 2], positions)
    std = math.sqrt(np.mean((np.asarray(positions) - 1.5) ** 2))
    assert w.statistic == pytest.approx(0.75 / std)  # cdf gaps 0.25 at each of three unit steps
    with pytest.raises(ValueError):
        st.wasserstein_normed(ref, ref, [0, 2, 1, 3])


def test_jensen_shannon_bounds() -> None:
    assert st.jensen_shannon([5, 5], [5, 5]).statistic == 0.0
    assert st.jensen_shannon([1, 0], [0, 1]).statistic == pytest.approx(1.0)
    half = st.jensen_shannon([1, 1], [1, 0]).statistic
    assert 0.1 < half < 1 and st.jensen_shannon([1, 1], [1, 0]).drift


def test_psi_bands() -> None:
    assert st.psi([25, 25, 25, 25], [25, 25, 25, 25]).statistic == 0.0
    # (0.3-0.25)ln(1.2)*2 + (0.2-0.25)ln(0.8)*2
    expected = 2 * 0.05 * math.log(1.2) + 2 * -0.05 * math.log(0.8)
    assert st.psi([25, 25, 25, 25], [30, 30, 20, 20]).statistic == pytest.approx(expected)
    assert st.psi_band(0.05) == "none" and st.psi_band(0.2) == "minor" and st.psi_band(0.3) == "major"
    assert st.psi([50, 50, 0, 0], [0, 0, 50, 50]).drift


def test_chi2_homogeneity() -> None:
    r = st.chi2([50, 50], [50, 50])
    assert r.statistic == 0 and r.p_value == 1.0
    r = st.chi2([80, 20], [20, 80])
    assert r.statistic == pytest.approx(72.0) and r.drift


def test_choose_test_by_type_and_size() -> None:
    assert st.choose_test("numeric", 500) == "ks"
    assert st.choose_test("numeric", 1000) == "ks"
    assert st.choose_test("numeric", 1001) == "wasserstein"
    assert st.choose_test("categorical", 10) == "chi2"
    assert st.choose_test("categorical", 5000) == "jensen_shannon"
    for test in ("ks", "wasserstein", "jensen_shannon", "psi", "chi2"):
        assert st.run_test(test, [1, 2, 3], [1, 2, 3], positions=[0, 1, 2]).drift is False


def test_zscore_floors() -> None:
    steady = [100.0] * 10
    assert not st.zscore(steady, 101.0, rel_floor=0.12).drift  # no spread: the floor is the scale
    assert st.zscore(steady, 50.0, rel_floor=0.12).drift
    assert st.zscore(steady, 50.0, rel_floor=0.12).statistic < 0
    assert not st.zscore([], 5.0, 0.1).drift


def test_bad_histograms_refused() -> None:
    with pytest.raises(ValueError):
        st.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        st.psi([-1, 2], [1, 2])
