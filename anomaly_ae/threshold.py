"""Thresholds and p-values from held-out normal scores: pure functions, no model involved.

The threshold is a conformal quantile: with n calibration scores and target false-positive
rate a, it is the k-th smallest score with k = ceil((n + 1) * (1 - a)). A new normal image
(exchangeable with the calibration images) then scores above it with probability at most a.
When n is too small for a (k > n) the largest score is used and the guarantee weakens to
1 / (n + 1); `conformal_threshold` says so in its result.

An item's conformal p-value is (1 + #{calibration scores >= its score}) / (n + 1).
"""

from __future__ import annotations

import math

import numpy as np

from anomaly_ae.errors import ConfigError, DataError


def check_fpr(target_fpr: float) -> float:
    """Validate a target false-positive rate (0 < a < 1)."""
    if not (isinstance(target_fpr, (int, float)) and 0.0 < float(target_fpr) < 1.0):
        raise ConfigError(f"target FPR must be between 0 and 1 (e.g. 0.01 for 1%), got {target_fpr!r}.")
    return float(target_fpr)


def _clean(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise DataError("No calibration scores: calibrate on at least one held-out normal image.")
    if not np.isfinite(s).all():
        raise DataError("Calibration scores contain NaN or infinity; the model or the images are broken.")
    return s


def conformal_threshold(cal_scores, target_fpr: float) -> dict:
    """The threshold giving false-positive rate <= `target_fpr` on new normal images.

    Returns:
        dict with ``threshold``, ``target_fpr``, ``n_calibration``, ``rank`` (k),
        ``guaranteed_fpr`` (the bound that holds: (n + 1 - k) / (n + 1)) and ``limited``
        (True when n is too small to reach the target).

    Raises:
        ConfigError: target outside (0, 1).
        DataError: no scores, or non-finite scores.
    """
    a = check_fpr(target_fpr)
    s = np.sort(_clean(cal_scores))
    n = s.size
    k = math.ceil((n + 1) * (1.0 - a) - 1e-9)
    limited = k > n
    k = max(1, min(k, n))
    return {
        "threshold": float(s[k - 1]), "target_fpr": a, "n_calibration": int(n), "rank": int(k),
        "guaranteed_fpr": (n + 1 - k) / (n + 1), "limited": bool(limited), "method": "conformal",
    }


def p_values(scores, cal_scores) -> np.ndarray:
    """Conformal p-values of `scores` against the calibration scores (small = anomalous)."""
    cal = np.sort(_clean(cal_scores))
    s = np.asarray(scores, dtype=np.float64)
    at_least = cal.size - np.searchsorted(cal, s, side="left")
    return (1.0 + at_least) / (cal.size + 1.0)


def f1_optimal_threshold(scores, labels) -> dict:
    """The threshold maximising F1 on labelled scores (flag when score > threshold).

    Only for reporting: the default threshold needs normal images alone.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        raise DataError("The F1-optimal threshold needs both normal and anomalous labelled items.")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # cut only between distinct scores
    f1 = np.where(last, 2 * tp / (tp + fp + y.sum()), -1.0)
    i = int(np.argmax(f1))
    nxt = s_sorted[i + 1] if i + 1 < s_sorted.size else s_sorted[i] - 1.0
    return {"threshold": float((s_sorted[i] + nxt) / 2), "f1": float(f1[i]),
            "precision": float(tp[i] / (tp[i] + fp[i])), "recall": float(tp[i] / y.sum()),
            "flags_all": i + 1 == s_sorted.size}  # no cut does better than flagging every item
