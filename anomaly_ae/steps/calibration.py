"""The calibrate step: a model's threshold set again, for a new target or on other normal images."""

from __future__ import annotations

import logging
from pathlib import Path

from anomaly_ae.errors import DataError
from anomaly_ae.steps.training import HELD_OUT_SOURCE

log = logging.getLogger(__name__)


def calibrate(model: str | Path, *, target_fpr: float | None = None, data: str | Path | None = None,
              normal: list[str] | None = None, split: str | None = None, held_out: bool = False,
              reviews: list[str | Path] | None = None) -> dict:
    """Recalibrate a model's threshold without retraining.

    With `data` (a dataset's normal classes, or a folder of normal images) the calibration
    scores are recomputed on those images and replace the ones in use; the held-out scores train
    computed stay in the model all the same, and `held_out` brings them back. Without either, the
    scores in use are reused. The summary's `source` says where the scores came from.

    `reviews` (run folders) adds the items reviewers marked as false alarms there to the
    calibration normals, once each however often a run is named (see `_add_reviews`); they stay
    added when the base scores are replaced later. Runs that add nothing new leave the model as it
    is (the summary says `cached`). The summary's `threshold_before` says how the
    threshold moved.

    Raises:
        BusyError: the model is being trained or recalibrated by another process.
        DataError: `data` is the training data, holds no usable images, or `held_out` asks for
            held-out scores the model no longer has.
    """
    from anomaly_ae.parallel import leave_if_importing_script

    leave_if_importing_script()  # a worker importing a script without a main guard
    import numpy as np

    from anomaly_ae import checkpoint
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.locks import folder_lock

    folder = checkpoint.model_file(model).parent
    with folder_lock(folder, "Model folder"):
        det = AutoencoderDetector.load(folder)
        current = det.threshold_info_
        before = current["threshold"]
        if data is None and not held_out and not reviews and target_fpr in (None, current.get("target_fpr")):
            return _calibration_summary(folder, det, current.get("source", HELD_OUT_SOURCE), cached=True)
        base = det.meta_.get("calibration_base")  # the scores before any reviewed false alarms were added
        if base is not None and data is None and not held_out:
            scores, source = np.asarray(base["scores"], dtype=np.float64), base["source"]
        else:
            if data is not None or held_out:  # recorded again below for the images that set the threshold now
                det.meta_.pop("calibration_hashes", None)
            scores, source = _calibration_set(det, data, normal, split, held_out)
        if reviews:
            taken_before = _reviewed_items(det)
            _add_reviews(det, reviews)
            unchanged = _reviewed_items(det) == taken_before
            if unchanged and data is None and not held_out and target_fpr in (None, current.get("target_fpr")):
                return _calibration_summary(folder, det, current.get("source", HELD_OUT_SOURCE), cached=True)
        reviewed = det.meta_.get("reviewed_false_alarms") or {}
        extra = np.asarray([v for items in reviewed.values() for v in items.values()], dtype=np.float64)
        if len(extra):
            det.meta_["calibration_base"] = {"scores": np.asarray(scores).tolist(), "source": source}
            scores = np.concatenate([scores, extra])
            source = f"{source}, with {len(extra)} reviewed false alarms of {len(reviewed)} runs"
        det.calibrate_scores(scores, target_fpr if target_fpr is not None else current["target_fpr"])
        det.threshold_info_["source"] = source
        # In place, file by file: replacing the whole folder would drop whatever else it holds.
        det.save(folder)
        _retarget_config_file(folder / "config.toml", det.config.threshold.target_fpr)
    return _calibration_summary(folder, det, source, cached=False, before=before)


def _reviewed_items(det) -> dict:
    """{run id: sorted item ids} of the reviewed false alarms in the model: which items, not their
    scores (an item scored again by another computation can differ in the last bits)."""
    return {run: sorted(items) for run, items in (det.meta_.get("reviewed_false_alarms") or {}).items()}


def _add_reviews(det, runs: list[str | Path]) -> None:
    """Put the scores of the items marked as false alarms in `runs` into ``det.meta_``
    (``reviewed_false_alarms``: run id -> item -> score), replacing what an earlier call took from
    the same run. A run the model scored gives its recorded scores (flagged items only: a false
    alarm is an item the model flagged); a run another model scored has those items' images
    scored again by this one, where they can still be read.

    Raises:
        DataError: a folder that is not a run, or a run that scored other images than the model takes.
    """
    import numpy as np

    from anomaly_ae import reviews
    from anomaly_ae.runitems import item_pixels, run_record

    taken = det.meta_.setdefault("reviewed_false_alarms", {})
    for run_dir in map(Path, runs):
        if not (run_dir / "run.json").exists() or not (run_dir / "scores.parquet").exists():
            raise DataError(f"{run_dir} is not a run folder (run.json and scores.parquet are needed).")
        run = run_record(run_dir)
        marked = {k for k, v in reviews.latest(run_dir).items() if v["decision"] == reviews.FALSE_ALARM}
        if run["model"].get("trained") == getattr(det, "created_", None):
            found = reviews.false_alarm_scores(run_dir, with_ids=True)
        else:
            from anomaly_ae.imaging import Preprocess

            pixels = item_pixels(run_dir, sorted(marked), Preprocess.from_dict(det.meta_["preprocess"]))
            if pixels and next(iter(pixels.values())).shape != tuple(det.shape_):
                raise DataError(f"{run_dir} scored images of another size than this model takes.")
            ids = sorted(pixels)
            found = dict(zip(ids, det.score_samples(np.stack([pixels[i] for i in ids])).tolist())) if ids else {}
            if len(found) < len(marked):
                log.warning("%d of the %d false alarms reviewed in %s could not be read again and are left out",
                            len(marked) - len(found), len(marked), run_dir)
        key = run.get("run_id") or run_dir.name
        taken[key] = {k: float(v) for k, v in found.items()}
        det.meta_.setdefault("reviewed_hashes", {})[key] = _item_hashes(run_dir, found)
        log.info("%s: %d reviewed false alarms join the calibration normals", run_dir, len(found))


def _item_hashes(run_dir: Path, items) -> list[str]:
    """The sha256 of `items` (image ids) of a run, from its scores.parquet (for a later run's `model_saw`)."""
    from anomaly_ae.schema import read_parquet

    t = read_parquet(run_dir / "scores.parquet", columns=["image_id", "sha256"])
    wanted = set(items)
    return sorted({h for i, h in zip(t["image_id"].to_pylist(), t["sha256"].to_pylist()) if i in wanted and h})


def _calibration_summary(folder: Path, det, source: str, cached: bool, before: float | None = None) -> dict:
    """The calibrate step's summary; its line is logged."""
    from anomaly_ae import facts

    summary = {"model": str(folder), "cached": cached, "source": source, **det.threshold_info_,
               "held_out_kept": len(det.meta_.get("held_out_scores") or []),
               "threshold_before": det.threshold_info_["threshold"] if before is None else before,
               "reviewed_false_alarms": sum(len(v) for v in (det.meta_.get("reviewed_false_alarms") or {}).values())}
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
    scores, hashes = _normal_scores(det, data, normal, split)
    det.meta_["calibration_hashes"] = sorted(set(hashes))
    source = f"normal images of {data}" + (f" (split {split})" if split else "")
    log.info("%d calibration scores of %s replace those of %s; the held-out scores of training stay in the model",
             len(scores), source, current)
    return scores, source


def _normal_scores(det, data, normal, split):
    """(scores, sha256 of each image) of held-out normal images: a dataset's normal classes, or a
    folder's (every image of a folder without class folders of those names)."""
    import numpy as np

    from anomaly_ae.dataset import Dataset, training_dataset
    from anomaly_ae.imaging import Preprocess
    from anomaly_ae.scoring import is_dataset, iter_batches, plan

    policy = Preprocess.from_dict(det.meta_["preprocess"])
    wanted = normal or det.meta_.get("normal_classes") or []
    if training_dataset(det.meta_.get("data", {}), data, split) is not None:
        raise DataError(f"{data} is the dataset the model was trained on (or the folder it was ingested from): its "
                        "normal images trained the model, and their scores would set the threshold too low. Calibrate "
                        "on other normal images, or pass --split with a split the model never saw (e.g. --split test) "
                        "if it has one.")
    if is_dataset(data):
        classes = Dataset(data).resolve_classes(wanted) or None
    else:  # a folder: its normal class folders when it has them (e.g. test/good beside test/crack), else every image
        from anomaly_ae.sources.folder import FolderSource

        present = {i.class_name for i in FolderSource(Path(data)).list().items if split is None or i.split == split}
        missing = [c for c in normal or [] if c not in present]
        if missing:  # asked for by name: every image instead would put anomalies among the normal scores
            found = ", ".join(sorted(c for c in present if c is not None)) or "none (the images are not in class folders)"
            raise DataError(f"Class {missing[0]!r} is not in {data}{f' (split {split})' if split else ''}. Classes: "
                            f"{found}.")
        classes = [c for c in wanted if c in present] or None
    rejects: list = []
    scores, hashes = [], []
    for part in plan(data, policy, split=split, classes=classes):
        for meta, px, _ in iter_batches(part, policy, 256, None, rejects):
            scores.append(det.score_samples(px))
            hashes += meta["sha256"]
    if rejects:
        from anomaly_ae.facts import named

        log.warning("%d files could not be used and were skipped: %s", len(rejects), named(rejects))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    return _without_training_images(det, data, scores, hashes)


def _without_training_images(det, data, scores, hashes):
    """(scores, hashes) less the images that trained or calibrated the model, found by content (a
    sub-folder of its training folder, or copies elsewhere): their scores would set the threshold too
    low. Known from the model itself (models trained before it kept them: while its dataset is there).

    Raises:
        DataError: every image is one of them.
    """
    import numpy as np

    from anomaly_ae.dataset import SEEN_DIGITS, seen_by

    trained = det.meta_.get("data") or {}
    learned = seen_by(det.meta_)
    if learned is None:
        if trained.get("dataset"):
            log.warning("Cannot tell whether the images of %s trained the model: its dataset %s is gone or was "
                        "ingested again since. Make sure they are normal images the model never saw, or their scores "
                        "set the threshold too low", data, trained["dataset"])
        return scores, hashes
    seen = np.array([h[:SEEN_DIGITS] in learned for h in hashes], dtype=bool)
    if not seen.any():
        return scores, hashes
    if seen.all():
        raise DataError(f"All {len(hashes)} images of {data} trained or calibrated the model (found by content): their "
                        "scores would set the threshold too low. Calibrate on normal images the model never saw.")
    log.warning("%d of the %d images of %s trained or calibrated the model (found by content): left out, so they "
                "cannot set the threshold too low; calibrating on the other %d", int(seen.sum()), len(hashes), data,
                int((~seen).sum()))
    return scores[~seen], [h for h, s in zip(hashes, seen) if not s]
