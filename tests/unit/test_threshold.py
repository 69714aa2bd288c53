"""Conformal thresholds and p-values: hand-computed cases and the guarantee they give."""

import numpy as np
import pytest

from anomaly_ae.errors import ConfigError, DataError
from anomaly_ae.threshold import conformal_threshold, f1_optimal_threshold, p_values

CAL = np.arange(1.0, 10.0)  # 1..9, n = 9


def test_hand_computed_thresholds():
    # k = ceil((n + 1)(1 - a)): a = 0.2 -> ceil(8.0) = 8 -> 8th smallest = 8
    t = conformal_threshold(CAL, 0.2)
    assert t["threshold"] == 8.0 and t["rank"] == 8 and t["guaranteed_fpr"] == pytest.approx(0.2)
    # a = 0.25 -> ceil(7.5) = 8 as well; a = 0.35 -> ceil(6.5) = 7
    assert conformal_threshold(CAL, 0.25)["threshold"] == 8.0
    assert conformal_threshold(CAL, 0.35)["threshold"] == 7.0
    assert not t["limited"]


def test_too_few_scores_for_the_target_is_reported():
    t = conformal_threshold(CAL, 0.01)  # needs k = ceil(9.9) = 10 > 9
    assert t["limited"] and t["threshold"] == 9.0 and t["guaranteed_fpr"] == pytest.approx(0.1)


def test_p_values_by_hand():
    # p = (1 + #{cal >= s}) / (n + 1)
    assert p_values([0.5, 5.0, 8.5, 100.0], CAL).tolist() == pytest.approx([1.0, 0.6, 0.2, 0.1])


def test_flagging_agrees_with_p_values():
    rng = np.random.default_rng(0)
    cal, new = rng.normal(size=200), rng.normal(size=1000)
    for a in (0.01, 0.05, 0.2):
        t = conformal_threshold(cal, a)
        flagged = new > t["threshold"]
        assert np.array_equal(flagged, p_values(new, cal) <= t["guaranteed_fpr"] + 1e-12)


def test_realised_false_positive_rate_holds_on_exchangeable_normals():
    rng = np.random.default_rng(1)
    rates = []
    for _ in range(200):
        cal, new = rng.gamma(2.0, size=300), rng.gamma(2.0, size=300)
        rates.append((new > conformal_threshold(cal, 0.05)["threshold"]).mean())
    assert 0.035 < np.mean(rates) <= 0.055


def test_identical_scores_and_bad_inputs():
    assert conformal_threshold(np.full(50, 0.3), 0.05)["threshold"] == 0.3
    assert p_values([0.3], np.full(50, 0.3))[0] == 1.0
    with pytest.raises(ConfigError, match="between 0 and 1"):
        conformal_threshold(CAL, 1.5)
    with pytest.raises(DataError, match="NaN"):
        conformal_threshold([1.0, np.nan], 0.1)
    with pytest.raises(DataError, match="No calibration"):
        conformal_threshold([], 0.1)


def test_f1_optimal_threshold_by_hand():
    scores = [0.1, 0.2, 0.3, 0.8, 0.9]
    labels = [0, 0, 1, 1, 1]
    r = f1_optimal_threshold(scores, labels)
    assert r["f1"] == 1.0 and 0.2 < r["threshold"] < 0.3
    with pytest.raises(DataError):
        f1_optimal_threshold([0.1, 0.2], [0, 0])
