"""Detection metrics when labels are known, pixel AUROC with masks, and the drift check.

scikit-learn computes the curves; this module decides what is reported and in what shape.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Pixels sampled per image and per class (defect / normal) for pixel AUROC. AUROC does not
# depend on class proportions, so uniform sampling within each class leaves it unbiased.
PIXELS_PER_CLASS = 1024
CURVE_POINTS = 200


def _downsample(*arrays: np.ndarray, n: int = CURVE_POINTS) -> list[list[float]]:
    size = len(arrays[0])
    idx = np.unique(np.linspace(0, size - 1, min(n, size)).round().astype(int)) if size else np.zeros(0, int)
    return [np.nan_to_num(a[idx], posinf=1e300, neginf=-1e300).astype(float).tolist() for a in arrays]


def _auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def detection_metrics(is_anomaly: np.ndarray, scores: np.ndarray, flagged: np.ndarray,
                      threshold: float) -> dict:
    """AUROC, AUPRC, curves, and the confusion matrix and rates at the threshold."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    y = np.asarray(is_anomaly, bool)
    s = np.asarray(scores, float)
    f = np.asarray(flagged, bool)
    tp, fp = int((f & y).sum()), int((f & ~y).sum())
    fn, tn = int((~f & y).sum()), int((~f & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    out = {
        "n_items": int(len(y)), "n_normal": int((~y).sum()), "n_anomalous": int(y.sum()),
        "threshold": float(threshold), "auroc": _auroc(y, s), "auprc": None,
        "tpr": recall, "fpr": fp / (fp + tn) if fp + tn else None,
        "precision": precision, "recall": recall, "f1": f1,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}, "roc": None, "pr": None,
    }
    if out["auroc"] is not None:
        fpr, tpr, thr = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        out["auprc"] = float(average_precision_score(y, s))
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
    from scipy.stats import binomtest, ks_2samp

    s = np.asarray(scores, float)
    n = len(s)
    if n == 0 or len(cal_scores) == 0:
        return {"n": n, "ks_statistic": None, "ks_pvalue": None, "flagged_share": None,
                "expected_share": target_fpr, "excess_pvalue": None, "drift": False}
    ks = ks_2samp(s, np.asarray(cal_scores, float))
    excess = binomtest(int(n_flagged), n, target_fpr, alternative="greater").pvalue
    drift = bool((ks.pvalue < 0.01 and ks.statistic > 0.2) or excess < 0.001)
    return {"n": n, "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "flagged_share": n_flagged / n, "expected_share": float(target_fpr),
            "excess_pvalue": float(excess), "drift": drift}
