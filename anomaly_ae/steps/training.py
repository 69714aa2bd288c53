"""Model steps: train and calibrate a detector into a model folder, and say what a model holds."""

from __future__ import annotations

import dataclasses
import logging
from glob import escape as glob_escape
from pathlib import Path

from anomaly_ae.errors import DataError, NoSpaceError
from anomaly_ae.steps.datasets import Progress

log = logging.getLogger(__name__)

# Where a model's calibration scores came from, when train computed them.
HELD_OUT_SOURCE = "held-out normal images of the training data"


def model_info(path: str | Path, layers: bool = False) -> dict:
    """What a model folder holds: kind, how it was chosen and trained, and its threshold; with
    `layers`, its layer table (``layers``: name, type, output shape, parameters) and ``parameters``."""
    from anomaly_ae import checkpoint

    folder = checkpoint.model_file(path).parent
    summary = checkpoint.summary(folder, checkpoint.read(path), cached=False)
    if layers:
        from anomaly_ae.detector import AutoencoderDetector

        summary.update(AutoencoderDetector.load(folder, device="cpu").layer_summary())
    return summary


def _fingerprint(*parts) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _normal_rows(ds, normal: list[str] | None, split: str | None = "auto"):
    """Rows of the normal classes: from the train split when the dataset has one."""
    if not ds.classes and not normal:  # an unlabelled folder: every image is a normal one
        split = ("train" if ds.has_split("train") else None) if split == "auto" else split
        return [], split, ds.rows(split=split)
    classes = ds.resolve_classes(normal) if normal else ds.default_normal()
    if not classes:
        raise DataError(f"Say which classes are normal with --normal (a class name or label). "
                        f"Classes in {ds.path}: {', '.join(ds.classes) or 'none (unlabelled)'}.")
    if split == "auto":
        split = "train" if ds.has_split("train") else None
    rows = ds.rows(split=split, classes=classes)
    return classes, split, rows


def train(dataset: str | Path, out: str | Path, *, normal: list[str] | None = None, config=None,
          overwrite: bool = False, force: bool = False, resume: bool = False,
          progress: Progress | None = None, reviews: list[str | Path] | None = None) -> dict:
    """Train a detector on the normal classes of a dataset and calibrate it on a held-out part.

    The held-out share (``train.calib_fraction``) is drawn with ``train.seed`` and used for the
    threshold only: early stopping watches a separate share of the training images
    (``train.val_fraction``). The dataset's test split is never used. A model folder trained from
    the same data and settings is kept (``cached: True``) unless `force`; one trained otherwise
    is replaced only with `overwrite` (a damaged one with either), and only when it is a model
    folder, never the dataset or a folder holding anything else.

    `reviews` (run folders) adds the images of the items reviewers marked as false alarms there
    to the training images (never to the calibration ones): normal images the model got wrong.
    """
    from anomaly_ae.parallel import leave_if_importing_script

    leave_if_importing_script()  # a worker importing a script without a main guard
    import numpy as np

    from anomaly_ae import checkpoint
    from anomaly_ae.config import DetectorConfig
    from anomaly_ae.dataset import Dataset
    from anomaly_ae.fsio import atomic_dir, check_name_lengths, hidden_name, output_folder
    from anomaly_ae.locks import folder_lock

    config = config or DetectorConfig()
    ds, out = Dataset(dataset), output_folder(out)
    check_name_lengths(out)
    classes, split, rows = _normal_rows(ds, normal)
    if len(rows) < 4:
        raise DataError(f"Only {len(rows)} normal images ({', '.join(classes)}) in {dataset}; at least 4 are "
                        "needed (some train the model, the rest calibrate its threshold).")
    perm = np.random.default_rng(config.train.seed).permutation(rows)
    n_cal = min(len(rows) - 2, max(1, int(round(config.train.calib_fraction * len(rows)))))
    cal, fit = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    extra, extra_ids = _reviewed_normals(ds, reviews or [])
    fp = _fingerprint(ds.meta.get("fingerprint"), classes, split, _weights_config(config, ds.shape),
                      *([extra_ids] if extra_ids else []))
    # One train per model folder at a time: a second would race the first for the folder and leave
    # its resume state behind.
    with folder_lock(out, "Model folder"):
        found, existing = _existing_model(out, fp)
        if found == "same" and not force:
            return _told(checkpoint.summary(out, existing, cached=True))
        if (found == "other" and not overwrite) or (found == "damaged" and not (overwrite or force)):
            why = _why_retrain(existing, ds, classes, config, extra_ids) if found == "other" else "it is damaged"
            raise DataError(f"{out} already exists and is out of date: {why}. Pass --overwrite to train it again, "
                            "or choose another --out.")
        state = hidden_name(out, f".train-{fp[:12]}.pt")
        try:
            with atomic_dir(out, overwrite=overwrite or force, kind="model", protect=[ds.path]) as tmp:
                _fit_into(tmp, ds, config, (fit, cal), {"fingerprint": fp, "split": split}, classes,
                          state=state, resume=resume, progress=progress, extra=extra)
        except NoSpaceError:
            _drop(state)  # "nothing was kept": the resume state neither
            raise
        except KeyboardInterrupt:
            kept = _state_files(state)
            if kept:
                log.warning("training of %s interrupted; the last finished epoch is kept in %s: run the same "
                            "command %s to go on from there", out, ", ".join(map(str, kept)),
                            "again" if resume else "with --resume")
            raise
        _drop_every_state(out)  # this training's, and those of other settings' trainings, which no model needs now
    return _told(checkpoint.summary(out, checkpoint.read(out), cached=False))


def _state_files(state: Path) -> list[Path]:
    """The resume state files of a training: `state`, and with ``--model auto`` one per candidate
    (``<state>-<kind>.pt``)."""
    return sorted(p for p in [state, *state.parent.glob(f"{state.stem}-*{state.suffix}")] if p.exists())


def _drop(state: Path) -> None:
    for path in _state_files(state):
        path.unlink(missing_ok=True)


def _drop_every_state(out: Path) -> None:
    """Remove every interrupted training's resume state of the model folder `out`, whatever its settings."""
    from anomaly_ae.fsio import hidden_name

    prefix = hidden_name(out, ".train-")
    for path in prefix.parent.glob(f"{glob_escape(prefix.name)}*.pt"):
        path.unlink(missing_ok=True)


def _told(summary: dict) -> dict:
    from anomaly_ae import facts

    log.info(facts.train(summary))
    return summary


def unlike_its_pipeline(dataset: str | Path, model: str | Path, normal: list[str] | None, config) -> str | None:
    """How the model at `model` differs from what a pipeline file says it is (trained on `dataset`'s
    `normal` classes with `config`, its threshold for ``config.threshold.target_fpr``), e.g. after
    it was trained again by hand; None when it does not, or when either is not there to compare."""
    from anomaly_ae.dataset import Dataset

    if not (Path(dataset) / "images.parquet").exists() or not (Path(model) / "model.pt").exists():
        return None
    try:
        ds = Dataset(dataset)
        classes, split, _ = _normal_rows(ds, normal)
        found, ckpt = _existing_model(Path(model), _fingerprint(ds.meta.get("fingerprint"), classes, split,
                                                                _weights_config(config, ds.shape)))
    except DataError:
        return None
    if ckpt is None:
        return "it is damaged"
    why = [] if found == "same" else ["it was trained otherwise: " + _why_retrain(ckpt, ds, classes, config, None)]
    target = (ckpt.get("threshold") or {}).get("target_fpr")
    if target is not None and target != config.threshold.target_fpr:
        why.append(f"its threshold is for a target FPR of {target:g}, the pipeline's {config.threshold.target_fpr:g}")
    return "; ".join(why) or None


def _why_retrain(ckpt: dict, ds, classes: list[str], config, extra_ids) -> str:
    """How a model's training differs from this one's: the dataset (another, or ingested again), the
    normal classes, the reviewed false alarms, or the settings (each named, as it was and is now)."""
    from anomaly_ae.config import DetectorConfig

    data = ckpt.get("data", {})
    if data.get("dataset") and Path(data["dataset"]).resolve() != ds.path.resolve():
        return f"it was trained on {data['dataset']}"
    reasons = []
    if data.get("dataset_fingerprint") not in (None, ds.meta.get("fingerprint")):
        reasons.append(f"{ds.path} was ingested again since")
    if ckpt.get("normal_classes") is not None and list(ckpt["normal_classes"]) != list(classes):
        reasons.append(f"its normal classes were {', '.join(ckpt['normal_classes'])}, now {', '.join(classes)}")
    if data.get("n_reviewed_normals", 0) != len(extra_ids or []):
        reasons.append(f"it was trained with {data.get('n_reviewed_normals', 0)} reviewed false alarms, now "
                       f"{len(extra_ids or [])}")
    try:
        then = _flat(_weights_config(DetectorConfig.from_dict(ckpt["config"]).as_trained(), ds.shape))
        now = _flat(_weights_config(config.as_trained(), ds.shape))
        chosen = {"score.method"} if now.get("score.method") == "auto" else set()  # recorded as chosen, not as asked
        if now.get("model.kind") == "auto":
            chosen |= {k for k in then if k.startswith("model.")} | {"train.lr"}
        reasons += [f"{key} was {_shown(then.get(key))}, now {_shown(now.get(key))}" for key in sorted(set(then) | set(now))
                    if then.get(key) != now.get(key) and key not in chosen]
    except Exception:  # a configuration of another version: the reasons above stand
        pass
    return "; ".join(reasons) or "it was trained from other data or settings"


def _shown(value) -> str:
    return "not set" if value is None else str(value)


def _flat(d: dict) -> dict:
    """{'train.epochs': 30, ...} from {'train': {'epochs': 30}, ...}."""
    return {f"{section}.{key}": v for section, values in d.items() for key, v in values.items()}


def _existing_model(out: Path, fp: str) -> tuple[str, dict | None]:
    """What `out` holds: ("none", None); ("same", checkpoint) when trained from the same data and
    settings (fingerprint `fp`); ("other", checkpoint) when trained otherwise, which only
    `overwrite` replaces; ("damaged", None), which `force` replaces too."""
    from anomaly_ae import checkpoint

    if not (out / "model.pt").exists():
        return "none", None
    try:
        existing = checkpoint.read(out)
    except Exception:  # a damaged model is simply retrained
        return "damaged", None
    return ("same" if existing.get("data", {}).get("fingerprint") == fp else "other"), existing


def _fit_into(tmp: Path, ds, config, rows: tuple, data: dict, classes: list[str], *, state: Path,
              resume: bool, progress: Progress | None, extra=None) -> None:
    """Fit on the training rows (and the `extra` images), calibrate on the held-out rows and save
    the model folder into `tmp`."""
    import numpy as np

    from anomaly_ae.configfile import dump_toml
    from anomaly_ae.dataset import seen_hashes
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.fsio import atomic_write_text
    from anomaly_ae.likeness import of_rows

    fit, cal = rows
    held_out = ds.load(cal)
    images = ds.load(fit) if extra is None or not len(extra) else np.concatenate([ds.load(fit), extra])
    det = AutoencoderDetector(config).fit(images, progress=progress, state_path=state, resume=resume)
    det.calibrate(held_out)
    det.threshold_info_["source"] = HELD_OUT_SOURCE
    index = ds.index()
    data = {"dataset": str(ds.path.resolve()), "dataset_fingerprint": ds.meta.get("fingerprint"),
            "fingerprint": data["fingerprint"], "split": data["split"], "n_train": len(fit),
            "n_calibration": len(cal), "train_sha256": _fingerprint(index["sha256"].take(fit).to_pylist()),
            "n_reviewed_normals": 0 if extra is None else len(extra), "sources": of_rows(ds, fit)}
    seen = seen_hashes(index["sha256"].take(np.concatenate([fit, cal])).to_pylist())  # found by content later
    det.save(tmp, preprocess=ds.meta["preprocess"], classes=ds.classes, normal_classes=classes, data=data,
             seen_hashes=seen)
    atomic_write_text(tmp / "config.toml", dump_toml(config.as_trained().to_dict()))


def _reviewed_normals(ds, runs: list[str | Path]):
    """(images, [(run, item, sha256)...]) of the items reviewed as false alarms in `runs`, read
    again with the dataset's preprocessing; items whose images are gone are left out (warned).

    Raises:
        DataError: a folder that is not a run, or a run of images of another size.
    """
    import numpy as np

    from anomaly_ae import reviews as decisions
    from anomaly_ae.runitems import item_pixels, run_record

    images, ids = [], []
    for run_dir in map(Path, runs):
        if not (run_dir / "run.json").exists() or not (run_dir / "scores.parquet").exists():
            raise DataError(f"{run_dir} is not a run folder (run.json and scores.parquet are needed).")
        marked = sorted(k for k, v in decisions.latest(run_dir).items() if v["decision"] == decisions.FALSE_ALARM)
        found = item_pixels(run_dir, marked, ds.policy)
        if any(px.shape != tuple(ds.shape) for px in found.values()):
            raise DataError(f"{run_dir} scored images of another size than this dataset's.")
        if len(found) < len(marked):
            log.warning("%d of the %d false alarms reviewed in %s could not be read again and are left out",
                        len(marked) - len(found), len(marked), run_dir)
        run_id = run_record(run_dir).get("run_id") or run_dir.name
        images += [found[k] for k in sorted(found)]
        ids += [(run_id, k) for k in sorted(found)]
    if images:
        log.info("%d images reviewed as false alarms join the training images", len(images))
    return (np.stack(images) if images else None), ids


def _weights_config(config, shape: tuple[int, ...]) -> dict:
    """The settings a trained model depends on: not the threshold, the device or the collapse policy.
    Widths left at 0 are written as the network on images of `shape` (h, w, c) gets them, so a
    model trained before they could be left at 0 keeps its fingerprint."""
    side = config.model.tile
    model = config.model.resolved(*((side, side) if side else shape[:2]))
    d = dataclasses.replace(config, model=model).to_dict()
    d.pop("threshold")
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("device", "allow_collapsed")}
    return d


def export(model: str | Path, out: str | Path, fmt: str = "onnx") -> dict:
    """Export a model folder (see `anomaly_ae.export`) into the folder `out`; returns its metadata
    and ``folder``.

    Raises:
        ConfigError: an unknown format, or onnxruntime (which checks the export) is not installed.
        DataError: the exported scores differ from the model's.
    """
    from anomaly_ae.parallel import leave_if_importing_script

    leave_if_importing_script()  # a worker importing a script without a main guard
    from anomaly_ae import checkpoint
    from anomaly_ae import export as exporting
    from anomaly_ae.detector import AutoencoderDetector

    folder = checkpoint.model_file(model).parent
    if Path(out).resolve() == folder.resolve():
        raise DataError(f"--out {out} is the model folder itself; export into a folder of its own.")
    if folder.resolve() in Path(out).resolve().parents:  # a model folder holds only what training writes
        raise DataError(f"--out {out} lies inside the model folder {folder}; export into a folder of its own.")
    meta = exporting.export(AutoencoderDetector.load(folder, device="cpu"), out, fmt)
    log.info("exported %s to %s (%s)", folder, out, meta["graph"])
    return {**meta, "folder": str(out)}
