"""Detection metrics when labels are known, pixel AUROC with masks, and the drift check.

The curves and tests are computed here with numpy alone: importing scikit-learn and SciPy would
cost a second or more on every `score` run, longer than scoring a small batch.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

# Pixels sampled per image and per class (defect / normal) for pixel AUROC. AUROC does not
# depend on class proportions, so uniform sampling within each class leaves it unbiased.
PIXELS_PER_CLASS = 1024
CURVE_POINTS = 200


def _downsample(*arrays: np.ndarray, n: int = CURVE_POINTS) -> list[list[float]]:
    size = len(arrays[0])
    idx = np.unique(np.linspace(0, size - 1, min(n, size)).round().astype(int)) if size else np.zeros(0, int)
    return [np.nan_to_num(a[idx], posinf=1e300, neginf=-1e300).astype(float).tolist() for a in arrays]


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting one half (Mann-Whitney U from mid-ranks)."""
    y = np.asarray(y, bool)
    _, inverse, counts = np.unique(np.asarray(s, float), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_ranks = ends - (counts - 1) / 2.0  # 1-based mean rank of each distinct value
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    u = mid_ranks[inverse.ravel()][y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    return auroc(y, s) if 0 < y.sum() < len(y) else None


def _cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, threshold) when flagging score >= threshold, for every
    distinct score from the highest down."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(y)[last]
    return tps, (last + 1) - tps, s[last]


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds), from flagging nothing (threshold +inf) to flagging everything."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    tps, fps, thr = _cumulative_counts(y, s)
    tps, fps, thr = np.r_[0, tps], np.r_[0, fps], np.r_[np.inf, thr]
    return fps / max(1, fps[-1]), tps / max(1, tps[-1]), thr


def precision_recall(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(precision, recall, average precision). Points run from the highest threshold down; average
    precision is the sum of precision times each step in recall (no interpolation)."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    tps, fps, _ = _cumulative_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / max(1, tps[-1])
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return precision, recall, ap


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample Kolmogorov-Smirnov test, two-sided. The p-value is
    the asymptotic Kolmogorov distribution with Stephens' small-sample correction."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                            - np.searchsorted(b, grid, side="right") / len(b))))
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:
        return d, 1.0
    j = np.arange(1, 101)
    p = 2.0 * float(np.sum((-1.0) ** (j - 1) * np.exp(-2.0 * (j * lam) ** 2)))
    return d, min(1.0, max(0.0, p))


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact, no normal approximation)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return float(p >= 1.0)
    log_odds = math.log(p) - math.log1p(-p)

    def log_mass_from(j0: int, j1: int) -> np.ndarray:
        # log P(X = j) for j0 <= j < j1, by the ratio P(j+1)/P(j) = (n-j)/(j+1) * p/(1-p).
        first = (math.lgamma(n + 1) - math.lgamma(j0 + 1) - math.lgamma(n - j0 + 1)
                 + j0 * math.log(p) + (n - j0) * math.log1p(-p))
        j = np.arange(j0, j1 - 1, dtype=float)
        return first + np.r_[0.0, np.cumsum(np.log(n - j) - np.log(j + 1) + log_odds)]

    def total(log_mass: np.ndarray) -> float:
        top = log_mass.max()
        return float(math.exp(top) * np.exp(log_mass - top).sum())

    if k > n * p:  # upper tail is the small side: sum it directly
        return min(1.0, total(log_mass_from(k, n + 1)))
    return max(0.0, 1.0 - total(log_mass_from(0, k)))


def detection_metrics(is_anomaly: np.ndarray, scores: np.ndarray, flagged: np.ndarray,
                      threshold: float) -> dict:
    """AUROC, AUPRC, curves, and the confusion matrix and rates at the threshold."""
    y = np.asarray(is_anomaly, bool)
    s = np.asarray(scores, float)
    f = np.asarray(flagged, bool)
    tp, fp = int((f & y).sum()), int((f & ~y).sum())
    fn, tn = int((~f & y).sum()), int((~f & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    out = {
        "n_items": len(y), "n_normal": int((~y).sum()), "n_anomalous": int(y.sum()),
        "threshold": float(threshold), "auroc": _auroc(y, s), "auprc": None,
        "tpr": recall, "fpr": fp / (fp + tn) if fp + tn else None,
        "precision": precision, "recall": recall, "f1": f1,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}, "roc": None, "pr": None,
    }
    if out["auroc"] is not None:
        fpr, tpr, thr = roc_curve(y, s)
        prec, rec, out["auprc"] = precision_recall(y, s)
        out["roc"] = dict(zip(("fpr", "tpr", "thresholds"), _downsample(fpr, tpr, thr)))
        out["pr"] = dict(zip(("precision", "recall"), _downsample(prec, rec)))
    return out


def per_class(class_names: np.ndarray, is_anomaly: np.ndarray, scores: np.ndarray,
              flagged: np.ndarray) -> list[dict]:
    """Per class: count, flagged share (FPR for normal classes, TPR for anomalous ones), AUROC
    of that class against all normal items (anomalous classes only)."""
    names = np.asarray(class_names, dtype=object)
    y = np.asarray(is_anomaly, bool)
    s = np.asarray(scores, float)
    f = np.asarray(flagged, bool)
    rows = []
    for cls in sorted({c for c in names.tolist() if c is not None}, key=str):
        m = names == cls
        anomalous = bool(y[m].all())
        row = {"class_name": cls, "n": int(m.sum()), "is_anomaly": anomalous,
               "flagged": int(f[m].sum()), "flag_rate": float(f[m].mean()),
               "fpr": None if anomalous else float(f[m].mean()),
               "tpr": float(f[m].mean()) if anomalous else None, "auroc": None}
        if anomalous:
            sel = m | ~y
            row["auroc"] = _auroc(y[sel], s[sel])
        rows.append(row)
    return rows


class PixelSamples:
    """Collect sampled (error, is-defect) pixels image by image for pixel AUROC."""

    def __init__(self):
        self.values: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, image_id: str, error_map: np.ndarray, mask: np.ndarray) -> None:
        """Sample one image's pixels; `mask` > 0 marks defect pixels (all zero for normal images)."""
        seed = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        err, lab = error_map.ravel(), mask.ravel() > 0
        for want in (True, False):
            idx = np.flatnonzero(lab == want)
            if len(idx) > PIXELS_PER_CLASS:
                idx = rng.choice(idx, PIXELS_PER_CLASS, replace=False)
            self.values.append(err[idx].astype(np.float32))
            self.labels.append(np.full(len(idx), want))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(errors, labels) collected so far."""
        if not self.values:
            return np.zeros(0, np.float32), np.zeros(0, bool)
        return np.concatenate(self.values), np.concatenate(self.labels)


def pixel_auroc(errors: np.ndarray, labels: np.ndarray) -> float | None:
    """AUROC of per-pixel errors against defect masks (None without both kinds of pixels)."""
    return _auroc(np.asarray(labels, bool), np.asarray(errors, float))


def drift_check(scores: np.ndarray, cal_scores: np.ndarray, n_flagged: int, target_fpr: float) -> dict:
    """Does this batch look like the calibration (normal) data?

    A two-sample KS test of the batch's scores against the calibration scores, and a one-sided
    binomial test of the flagged count against the rate expected on normal images.
    """
    s = np.asarray(scores, float)
    n = len(s)
    if n == 0 or len(cal_scores) == 0:
        return {"n": n, "ks_statistic": None, "ks_pvalue": None, "flagged_share": None,
                "expected_share": target_fpr, "excess_pvalue": None, "drift": False}
    ks_statistic, ks_pvalue = ks_two_sample(s, cal_scores)
    excess = binomial_upper_tail(int(n_flagged), n, target_fpr)
    drift = bool((ks_pvalue < 0.01 and ks_statistic > 0.2) or excess < 0.001)
    return {"n": n, "ks_statistic": ks_statistic, "ks_pvalue": ks_pvalue,
            "flagged_share": n_flagged / n, "expected_share": float(target_fpr),
            "excess_pvalue": float(excess), "drift": drift}
