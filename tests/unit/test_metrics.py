"""The numpy metrics against scikit-learn's and SciPy's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

from anomaly_ae.metrics import auroc, binomial_upper_tail, drift_check, ks_two_sample, precision_recall, roc_curve

# Few distinct values so that ties are common.
labelled = st.integers(2, 200).flatmap(lambda n: st.tuples(
    st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < len(y)),
    st.lists(st.integers(0, 12).map(float) | st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n)))


@given(labelled)
def test_auroc_matches_scikit_learn_with_ties(data):
    y, s = map(np.asarray, data)
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@given(labelled)
def test_roc_curve_matches_scikit_learn(data):
    y, s = map(np.asarray, data)
    fpr, tpr, thr = roc_curve(y, s)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_array_equal(thr[1:], ref_thr[1:])


@given(labelled)
def test_average_precision_and_pr_points_match_scikit_learn(data):
    y, s = map(np.asarray, data)
    precision, recall, ap = precision_recall(y, s)
    assert ap == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    ref_p, ref_r, _ = skm.precision_recall_curve(y, s, drop_intermediate=False)
    # scikit-learn lists points from the lowest threshold up and appends (recall 0, precision 1).
    np.testing.assert_allclose(precision, ref_p[:-1][::-1])
    np.testing.assert_allclose(recall, ref_r[:-1][::-1])


@pytest.mark.filterwarnings("ignore:ks_2samp")
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=5, max_size=120),
       st.lists(st.floats(-50, 50, allow_nan=False), min_size=5, max_size=120))
def test_ks_statistic_matches_scipy(a, b):
    d, p = ks_two_sample(a, b)
    assert d == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert 0.0 <= p <= 1.0


def test_ks_pvalue_agrees_with_scipy_asymptotic_on_large_samples():
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.05, 0.1, 0.3):
        a, b = rng.normal(size=2000), rng.normal(shift, size=1500)
        d, p = ks_two_sample(a, b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert p == pytest.approx(ref.pvalue, rel=0.05, abs=1e-6), shift


@given(st.integers(1, 3000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.floats(0.001, 0.5))
def test_binomial_upper_tail_matches_scipy(kn, p):
    k, n = kn
    ref = stats.binomtest(k, n, p, alternative="greater").pvalue
    assert binomial_upper_tail(k, n, p) == pytest.approx(ref, rel=1e-7, abs=1e-12)


def test_binomial_upper_tail_on_a_large_batch():
    ref = stats.binomtest(1200, 100_000, 0.01, alternative="greater").pvalue
    assert binomial_upper_tail(1200, 100_000, 0.01) == pytest.approx(ref, rel=1e-6)


def test_drift_check_flags_a_shift_and_not_the_same_distribution():
    rng = np.random.default_rng(1)
    cal = rng.normal(size=500)
    same = drift_check(rng.normal(size=3000), cal, n_flagged=30, target_fpr=0.01)
    shifted = drift_check(rng.normal(1.0, size=3000), cal, n_flagged=30, target_fpr=0.01)
    excess = drift_check(rng.normal(size=3000), cal, n_flagged=90, target_fpr=0.01)
    assert not same["drift"] and shifted["drift"] and excess["drift"]
