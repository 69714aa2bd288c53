"""What every detector does once it scores images: calibrate a threshold on held-out normal images,
flag, give p-values, and save itself. A detector class adds `score_samples`, `to_checkpoint` (with
`checkpoint_with`),
``shape_`` (its images' (h, w, c)) and ``CHECKPOINT_KEYS`` (the checkpoint keys it writes itself).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from anomaly_ae.errors import DataError, ModelError
from anomaly_ae.threshold import check_fpr, conformal_threshold, p_values

log = logging.getLogger(__name__)

# Checkpoint keys a detector writes itself; everything else is caller metadata kept in meta_.
DETECTOR_KEYS = frozenset({"format", "format_version", "state_dict", "config", "image_shape", "normalisation",
                           "threshold", "calibration_scores", "history", "collapse", "versions", "created"})


class Calibrated:
    """Threshold, flags, p-values and saving, for any detector with `score_samples`."""

    CHECKPOINT_KEYS = DETECTOR_KEYS

    def calibrate(self, images: np.ndarray, target_fpr: float | None = None):
        """Set `threshold_` from held-out normal images (never the training images)."""
        scores = self.score_samples(images)
        return self.calibrate_scores(scores, target_fpr)

    def calibrate_scores(self, scores: np.ndarray, target_fpr: float | None = None):
        """Set `threshold_` from scores of held-out normal images."""
        fpr = check_fpr(target_fpr if target_fpr is not None else self.config.threshold.target_fpr)
        # The configuration says the rate the threshold holds: a model saved now, and a retrain from
        # its config.toml, keep the new target.
        self.config = dataclasses.replace(self.config, threshold=dataclasses.replace(self.config.threshold,
                                                                                      target_fpr=fpr))
        self.calibration_scores_ = np.asarray(scores, dtype=np.float64)
        self.threshold_info_ = conformal_threshold(self.calibration_scores_, fpr)
        self.threshold_ = self.threshold_info_["threshold"]
        if self.threshold_info_["limited"]:
            log.warning("only %d calibration images: the smallest false-positive rate that can be "
                        "guaranteed is %.3g, above the target %.3g", self.threshold_info_["n_calibration"],
                        1 / (self.threshold_info_["n_calibration"] + 1), fpr)
        return self

    def operating_point(self, threshold: float | None = None, target_fpr: float | None = None) -> dict:
        """The threshold a scoring run flags at, without changing the detector: the calibrated one,
        a fixed `threshold` (with the share of calibration scores above it), or the conformal
        threshold of another `target_fpr` over the same calibration scores."""
        if not hasattr(self, "calibration_scores_"):
            raise ModelError("The detector is not calibrated: call calibrate() first.")
        if threshold is not None and target_fpr is not None:
            raise DataError("Give either a fixed threshold or a target false-positive rate, not both.")
        if threshold is not None:
            if not np.isfinite(threshold):
                raise DataError(f"The threshold must be a finite number, got {threshold}.")
            return {"threshold": float(threshold), "method": "fixed", "target_fpr": None,
                    "calibration_fpr": float((self.calibration_scores_ > threshold).mean()),
                    "n_calibration": len(self.calibration_scores_)}
        if target_fpr is not None:
            return conformal_threshold(self.calibration_scores_, check_fpr(target_fpr))
        return dict(self.threshold_info_)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of scores against the calibration scores."""
        if not hasattr(self, "calibration_scores_"):
            raise ModelError("The detector is not calibrated: call calibrate() first.")
        return p_values(scores, self.calibration_scores_)

    def predict(self, images: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """1 where the score exceeds the threshold (anomaly), else 0."""
        t = self.threshold_ if threshold is None else threshold
        return (self.score_samples(images) > t).astype(np.int64)

    def restore_calibration(self, ckpt: dict) -> None:
        """Take the training record, threshold, calibration scores and metadata of a checkpoint
        (as `anomaly_ae.checkpoint.read` returns it): every key not in ``CHECKPOINT_KEYS`` is metadata."""
        self.history_ = ckpt["history"]
        self.collapse_ = ckpt.get("collapse", {})
        self.calibration_scores_ = ckpt["calibration_scores"].numpy().astype(np.float64)
        self.threshold_info_ = dict(ckpt["threshold"])
        self.threshold_ = float(self.threshold_info_["threshold"])
        self.meta_ = {k: v for k, v in ckpt.items() if k not in self.CHECKPOINT_KEYS}
        self.created_ = ckpt.get("created")

    def checkpoint_with(self, state_dict: dict, **extra) -> dict:
        """The checkpoint dict of this fitted, calibrated detector: `state_dict` (its weights), the
        keys every detector writes, `extra` (a kind's own keys) and its metadata (`meta_`)."""
        import torch

        from anomaly_ae.checkpoint import FORMAT, FORMAT_VERSION, plain, versions
        from anomaly_ae.runid import utc_now

        return plain({
            "format": FORMAT, "format_version": FORMAT_VERSION, "state_dict": state_dict,
            "config": self.config.to_dict(), "image_shape": list(self.shape_),
            "normalisation": {"input_scale": 1.0 / 255.0, "input_offset": 0.0, "output": "sigmoid"},
            "threshold": dict(self.threshold_info_),
            "calibration_scores": torch.from_numpy(np.asarray(self.calibration_scores_, dtype=np.float64)),
            "history": self.history_, "collapse": dict(self.collapse_), "versions": versions(),
            "created": getattr(self, "created_", None) or utc_now(), **extra, **self.meta_,
        })

    def save(self, folder, **meta):
        """Write the model folder (model.pt + model.json); `meta` adds classes, data facts..."""
        from pathlib import Path

        from anomaly_ae import checkpoint

        self._require_fitted()
        if not hasattr(self, "threshold_"):
            raise ModelError("Calibrate the detector before saving it: a model without a threshold cannot flag.")
        clash = sorted(set(meta) & self.CHECKPOINT_KEYS)
        if clash:
            raise ModelError(f"save() sets {', '.join(clash)} itself; pass other metadata only.")
        h, w, c = self.shape_
        default = {"preprocess": {"height": h, "width": w, "channels": "L" if c == 1 else "RGB", "resize": "bilinear"}}
        self.meta_ = {**default, **getattr(self, "meta_", {}), **meta}
        return checkpoint.write(Path(folder), self.to_checkpoint())
