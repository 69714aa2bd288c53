"""The calibrate step: a model's threshold set again, for a new target or on other normal images."""

from __future__ import annotations

import logging
from pathlib import Path

from anomaly_ae.errors import DataError
from anomaly_ae.steps.training import HELD_OUT_SOURCE

log = logging.getLogger(__name__)


def calibrate(model: str | Path, *, target_fpr: float | None = None, data: str | Path | None = None,
              normal: list[str] | None = None, split: str | None = None, held_out: bool = False) -> dict:
    """Recalibrate a model's threshold without retraining.

    With `data` (a dataset's normal classes, or a folder of normal images) the calibration
    scores are recomputed on those images and replace the ones in use; the held-out scores train
    computed stay in the model all the same, and `held_out` brings them back. Without either, the
    scores in use are reused. The summary's `source` says where the scores came from.

    Raises:
        BusyError: the model is being trained or recalibrated by another process.
        DataError: `data` is the training data, holds no usable images, or `held_out` asks for
            held-out scores the model no longer has.
    """
    from anomaly_ae import checkpoint
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.locks import FileLock

    folder = checkpoint.model_file(model).parent
    with FileLock(folder.parent / f".{folder.name}.lock", f"Model folder {folder}"):
        det = AutoencoderDetector.load(folder)
        current = det.threshold_info_
        if data is None and not held_out and target_fpr in (None, current.get("target_fpr")):
            return _calibration_summary(folder, det, current.get("source", HELD_OUT_SOURCE), cached=True)
        scores, source = _calibration_set(det, data, normal, split, held_out)
        det.calibrate_scores(scores, target_fpr if target_fpr is not None else current["target_fpr"])
        det.threshold_info_["source"] = source
        # In place, file by file: replacing the whole folder would drop whatever else it holds.
        det.save(folder)
        _retarget_config_file(folder / "config.toml", det.config.threshold.target_fpr)
    return _calibration_summary(folder, det, source, cached=False)


def _calibration_summary(folder: Path, det, source: str, cached: bool) -> dict:
    """The calibrate step's summary; its line is logged."""
    from anomaly_ae import facts

    summary = {"model": str(folder), "cached": cached, "source": source, **det.threshold_info_,
               "held_out_kept": len(det.meta_.get("held_out_scores") or [])}
    log.info(facts.calibrate(summary))
    return summary


def _retarget_config_file(path: Path, target_fpr: float) -> None:
    """Set ``threshold.target_fpr`` in a model's config.toml, so a retrain from it holds the same rate."""
    from anomaly_ae.configfile import dump_toml, read_toml
    from anomaly_ae.fsio import atomic_write_text

    if path.exists():
        doc = read_toml(path)
        doc["threshold"] = {**doc.get("threshold", {}), "target_fpr": target_fpr}
        atomic_write_text(path, dump_toml(doc))


def _calibration_set(det, data, normal, split, held_out: bool):
    """(scores, where they came from) to calibrate on; keeps train's held-out scores in `det.meta_`."""
    import numpy as np

    current = det.threshold_info_.get("source", HELD_OUT_SOURCE)
    if current == HELD_OUT_SOURCE and "held_out_scores" not in det.meta_:
        det.meta_["held_out_scores"] = det.calibration_scores_.tolist()
    if held_out:
        if data is not None:
            raise DataError("Calibrate either on new normal images (--data) or on the held-out scores, not both.")
        if "held_out_scores" not in det.meta_:
            raise DataError(f"The model no longer holds the held-out scores of its training (they were replaced "
                            f"by those of {current}). Calibrate with --data, or train the model again.")
        return np.asarray(det.meta_["held_out_scores"], dtype=np.float64), HELD_OUT_SOURCE
    if data is None:
        return det.calibration_scores_, current
    scores = _normal_scores(det, data, normal, split)
    source = f"normal images of {data}" + (f" (split {split})" if split else "")
    log.info("%d calibration scores of %s replace those of %s; the held-out scores of training stay in the model",
             len(scores), source, current)
    return scores, source


def _normal_scores(det, data, normal, split):
    """Scores of held-out normal images: a dataset's normal classes, or every image of a folder."""
    import numpy as np

    from anomaly_ae.dataset import Dataset
    from anomaly_ae.imaging import Preprocess
    from anomaly_ae.scoring import is_dataset, iter_batches, plan

    policy = Preprocess.from_dict(det.meta_["preprocess"])
    classes = None
    if is_dataset(data):
        ds = Dataset(data)
        trained = det.meta_.get("data", {})
        if ds.meta.get("fingerprint") == trained.get("dataset_fingerprint") and split in (None, trained.get("split")):
            raise DataError(f"{data} is the dataset the model was trained on: its normal images trained the model, "
                            "and their scores would set the threshold too low. Calibrate on other normal images, "
                            "or pass --split with a split the model never saw (e.g. --split test).")
        classes = ds.resolve_classes(normal or det.meta_.get("normal_classes") or []) or None
    rejects: list = []
    scores = [det.score_samples(px) for part in plan(data, policy, split=split, classes=classes)
              for _, px, _ in iter_batches(part, policy, 256, None, rejects)]
    if rejects:
        log.warning("%d files could not be read and were skipped", len(rejects))
    return np.concatenate(scores) if scores else np.zeros(0)
