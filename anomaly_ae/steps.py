"""The pipeline's steps (ingest, info, train, calibrate, score, report): what the CLI and flows call.

Each step takes plain values, does one job through the modules below it and returns a plain,
JSON-able summary. Steps never import prefect or typer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from anomaly_ae.errors import DataError, NoSpaceError

log = logging.getLogger(__name__)

# Where a model's calibration scores came from, when train computed them.
HELD_OUT_SOURCE = "held-out normal images of the training data"

Progress = Callable[[int, int], None]


def ingest(source: str, out: str | Path, *, root: str | None = None, download: bool = False,
           size: str | None = None, channels: str | None = None, resize: str = "bilinear",
           test_fraction: float | None = None, seed: int = 0, max_pixels: int | None = None,
           workers: int | None = None, overwrite: bool = False, force: bool = False,
           progress: Progress | None = None) -> dict:
    """Ingest `source` into the dataset folder `out`; skipped when `out` is already up to date.

    An existing dataset made from the same files with the same options is kept as it is
    (``cached: True`` in the summary) unless `force`; one made from something else is
    replaced only with `overwrite`, and only when it is a dataset (never the source itself or a
    folder holding anything else).
    """
    from anomaly_ae import imaging
    from anomaly_ae.dataset import Dataset
    from anomaly_ae.ingest import fingerprint
    from anomaly_ae.ingest import ingest as run_ingest
    from anomaly_ae.sources import open_source

    request = imaging.PolicyRequest(imaging.parse_size(size), channels, resize)
    max_pixels = max_pixels or imaging.DEFAULT_MAX_PIXELS
    listing = open_source(source, root=root, download=download).list()
    out = Path(out)
    options = {"test_fraction": test_fraction, "seed": seed, "max_pixels": max_pixels}
    if (out / "images.parquet").exists() and not force:
        existing = Dataset(out).meta
        if existing.get("fingerprint") == fingerprint(listing, request, options):
            log.info("%s is up to date with %s; skipping ingest", out, source)
            return _dataset_summary(out, existing, cached=True)
    protect = tuple(Path(p) for p in (source, root) if p and Path(p).exists())
    meta = run_ingest(listing, out, request=request, test_fraction=test_fraction, seed=seed,
                      max_pixels=max_pixels, workers=workers, overwrite=overwrite or force,
                      progress=progress, protect=protect)
    return _dataset_summary(out, meta, cached=False)


def _dataset_summary(out: Path, meta: dict, cached: bool) -> dict:
    return {"dataset": str(out), "cached": cached, "source": meta.get("source", {}).get("spec"),
            "image_shape": meta["image_shape"], "classes": meta.get("classes", []),
            "counts": meta["counts"], "preprocess": meta["preprocess"],
            "fingerprint": meta.get("fingerprint")}


def info(path: str | Path) -> dict:
    """What a dataset holds: counts per split and class, shape, masks, rejects."""
    from anomaly_ae.dataset import Dataset

    ds = Dataset(path)
    rejects = ds.rejects()
    summary = _dataset_summary(Path(path), ds.meta, cached=False)
    summary.pop("cached")
    summary["rejects"] = [{"source": s, "reason": r} for s, r in
                          zip(rejects["source"].to_pylist(), rejects["reason"].to_pylist())]
    summary["layout"] = ds.meta.get("source", {}).get("layout")
    summary["schema_version"] = ds.meta.get("schema_version")
    summary["rows"] = len(ds)
    if summary["rows"] != summary["counts"]["images"]:
        raise DataError(f"{path}: metadata says {summary['counts']['images']} images but the file "
                        f"holds {summary['rows']}; the dataset is damaged. Ingest it again.")
    return summary


def model_info(path: str | Path) -> dict:
    """What a model folder holds: kind, how it was chosen and trained, and its threshold."""
    from anomaly_ae import checkpoint

    folder = checkpoint.model_file(path).parent
    return _model_summary(folder, checkpoint.read(path), cached=False)


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
          progress: Progress | None = None) -> dict:
    """Train a detector on the normal classes of a dataset and calibrate it on a held-out part.

    The held-out share (``train.calib_fraction``) is drawn with ``train.seed`` and used for the
    threshold only: early stopping watches a separate share of the training images
    (``train.val_fraction``). The dataset's test split is never used. A model folder trained from the same data and settings is kept
    (``cached: True``) unless `force`; another is replaced (`overwrite` or `force`) only when it is a
    model folder, never the dataset or a folder holding anything else.
    """
    import numpy as np

    from anomaly_ae import checkpoint
    from anomaly_ae.config import DetectorConfig
    from anomaly_ae.dataset import Dataset
    from anomaly_ae.fsio import FileLock, atomic_dir

    config = config or DetectorConfig()
    ds, out = Dataset(dataset), Path(out)
    classes, split, rows = _normal_rows(ds, normal)
    if len(rows) < 4:
        raise DataError(f"Only {len(rows)} normal images ({', '.join(classes)}) in {dataset}; at least 4 are "
                        "needed (some train the model, the rest calibrate its threshold).")
    perm = np.random.default_rng(config.train.seed).permutation(rows)
    n_cal = min(len(rows) - 2, max(1, int(round(config.train.calib_fraction * len(rows)))))
    cal, fit = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    fp = _fingerprint(ds.meta.get("fingerprint"), classes, split, _weights_config(config))
    # One train per model folder at a time: a second would race the first for the folder and leave
    # its resume state behind.
    with FileLock(out.parent / f".{out.name}.lock", f"Model folder {out}"):
        existing = None if force else _up_to_date_model(out, fp)
        if existing is not None:
            log.info("%s is up to date; skipping training", out)
            return _model_summary(out, existing, cached=True)
        state = out.parent / f".{out.name}.train-{fp[:12]}.pt"
        try:
            with atomic_dir(out, overwrite=overwrite or force, kind="model", protect=[ds.path]) as tmp:
                _fit_into(tmp, ds, config, (fit, cal), {"fingerprint": fp, "split": split}, classes,
                          state=state, resume=resume, progress=progress)
        except NoSpaceError:
            state.unlink(missing_ok=True)  # "nothing was kept": the resume state neither
            raise
        state.unlink(missing_ok=True)
    return _model_summary(out, checkpoint.read(out), cached=False)


def _up_to_date_model(out: Path, fp: str) -> dict | None:
    """The checkpoint at `out` when it was trained from the same data and settings (fingerprint `fp`)."""
    from anomaly_ae import checkpoint

    if not (out / "model.pt").exists():
        return None
    try:
        existing = checkpoint.read(out)
    except Exception:  # a damaged model is simply retrained
        return None
    return existing if existing.get("data", {}).get("fingerprint") == fp else None


def _fit_into(tmp: Path, ds, config, rows: tuple, data: dict, classes: list[str], *, state: Path,
              resume: bool, progress: Progress | None) -> None:
    """Fit on the training rows, calibrate on the held-out rows and save the model folder into `tmp`."""
    from anomaly_ae.config import dump_toml
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.fsio import atomic_write_text

    fit, cal = rows
    held_out = ds.load(cal)
    det = AutoencoderDetector(config).fit(ds.load(fit), progress=progress, state_path=state, resume=resume)
    det.calibrate(held_out)
    det.threshold_info_["source"] = HELD_OUT_SOURCE
    index = ds.index()
    data = {"dataset": str(ds.path.resolve()), "dataset_fingerprint": ds.meta.get("fingerprint"),
            "fingerprint": data["fingerprint"], "split": data["split"], "n_train": len(fit),
            "n_calibration": len(cal), "train_sha256": _fingerprint(index["sha256"].take(fit).to_pylist())}
    det.save(tmp, preprocess=ds.meta["preprocess"], classes=ds.classes, normal_classes=classes, data=data)
    atomic_write_text(tmp / "config.toml", dump_toml(config.as_trained().to_dict()))


def _weights_config(config) -> dict:
    """The settings a trained model depends on: not the threshold, the device or the collapse policy."""
    d = config.to_dict()
    d.pop("threshold")
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("device", "allow_collapsed")}
    return d


def _model_summary(out: Path, ckpt: dict, cached: bool) -> dict:
    h, t = ckpt["history"], ckpt["threshold"]
    return {"model": str(out), "cached": cached, "kind": ckpt["config"]["model"]["kind"],
            "score": ckpt["config"]["score"]["method"], "normal_classes": ckpt.get("normal_classes"),
            "n_train": ckpt.get("data", {}).get("n_train"), "n_calibration": t["n_calibration"],
            "epochs": len(h["train_loss"]), "best_epoch": h["best_epoch"] + 1,
            "train_loss": h["train_loss"][h["best_epoch"]], "held_out_loss": h["val_loss"][h["best_epoch"]],
            "seconds": h["seconds"], "device": h["device"], "threshold": t["threshold"],
            "target_fpr": t["target_fpr"], "guaranteed_fpr": t.get("guaranteed_fpr"),
            "collapse": ckpt.get("collapse"), "selection": ckpt.get("selection")}


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
    from anomaly_ae.fsio import FileLock

    folder = checkpoint.model_file(model).parent
    with FileLock(folder.parent / f".{folder.name}.lock", f"Model folder {folder}"):
        det = AutoencoderDetector.load(folder)
        fpr = target_fpr if target_fpr is not None else det.threshold_info_["target_fpr"]
        scores, source = _calibration_set(det, data, normal, split, held_out)
        det.calibrate_scores(scores, fpr)
        det.threshold_info_["source"] = source
        # In place, file by file: replacing the whole folder would drop whatever else it holds.
        det.save(folder)
    return {"model": str(folder), "source": source, **det.threshold_info_,
            "held_out_kept": len(det.meta_.get("held_out_scores") or [])}


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


def score(input: str | Path, model: str | Path, out: str | Path, *, threshold: float | None = None,
          target_fpr: float | None = None, split: str | None = None, batch_size: int | None = None,
          workers: int | None = None, overwrite: bool = False, report: bool = True, device: str = "auto",
          partitions: int = 1, map_partitions=None, files: list[str] | None = None,
          progress: Progress | None = None) -> dict:
    """Score a folder or dataset with a model into the run folder `out` (written atomically).

    With `overwrite`, an existing `out` is replaced only when it is a run folder: never the input,
    the model, or a folder holding anything else.

    `files` (paths relative to the folder `input`) scores exactly those files, unlabelled.

    `map_partitions(parts, part_dirs, threshold, normal)`, when given, scores the partitions
    elsewhere (a task runner) and returns their summaries; by default they run here in turn.
    """
    import shutil
    import time

    from anomaly_ae import checkpoint, scoring
    from anomaly_ae import results as run_results
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.fsio import FileLock, atomic_dir, atomic_write_json
    from anomaly_ae.imaging import Preprocess

    t0, out = time.perf_counter(), Path(out)
    det = AutoencoderDetector.load(model, device=device)
    th = run_results.resolve_threshold(det, threshold, target_fpr)
    policy = Preprocess.from_dict(det.meta_["preprocess"])
    protect = [Path(input), checkpoint.model_file(model).parent]  # never written over, whatever --out says
    with (FileLock(out.parent / f".{out.name}.lock", f"Run folder {out}"),
          atomic_dir(out, overwrite=overwrite, kind="run", protect=protect) as tmp):
        parts = scoring.plan(input, policy, partitions, split, files=files)
        normal = scoring.normal_names(det.meta_.get("normal_classes") or [])
        normal = normal if scoring.labels_known(parts, normal) else None
        part_dirs = [tmp / ".parts" / f"{k:05d}" for k in range(len(parts))]
        if map_partitions is None:
            done = _score_here(det, parts, part_dirs, th["threshold"], normal, batch_size, workers, progress)
        else:
            done = map_partitions(parts, part_dirs, th["threshold"], normal)
        t1 = time.perf_counter()
        merged = run_results.finalize(part_dirs, tmp, threshold_info=th, cal_scores=det.calibration_scores_)
        shutil.rmtree(tmp / ".parts", ignore_errors=True)
        if merged["metrics"] is not None:
            atomic_write_json(tmp / "metrics.json", merged["metrics"])
        run = run_results.run_record(det, model, input, split, th, parts, done, merged,
                                     {"total": time.perf_counter() - t0, "finalize": time.perf_counter() - t1}, normal)
        atomic_write_json(tmp / "run.json", run)
        if report:
            run["report"] = _build_report(tmp)
            atomic_write_json(tmp / "run.json", run)
    return run_results.score_summary(out, run, merged)


def _score_here(det, parts, part_dirs, threshold, normal, batch_size, workers, progress) -> list[dict]:
    """Score the partitions one after the other in this process, with one progress count."""
    from anomaly_ae import scoring

    total, before, out = sum(len(p) for p in parts), 0, []
    for part, d in zip(parts, part_dirs):
        def report(n, _total, base=before):
            if progress:
                progress(base + n, total)
        out.append(scoring.score_partition(det, part, d, threshold=threshold, normal=normal,
                                           batch_size=batch_size, workers=workers, progress=report))
        before += len(part)
    return out


def _build_report(run_dir: Path) -> str | None:
    """Build report.html; a failure is logged, never loses the scores."""
    try:
        from anomaly_ae import report

        return report.build(run_dir).name
    except Exception:  # a broken report must not cost the user the run's results
        log.exception("building the report failed; the scores are kept")
        return None


def report(run_dir: str | Path) -> Path:
    """Rebuild a run folder's report.html from its tables."""
    from anomaly_ae import report as report_module

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise DataError(f"{run_dir} is not a run folder (no run.json). Score something with `anomaly-ae score`.")
    return report_module.build(run_dir)


DEMO_SOURCE = "sample:mnist5k"


def demo(workdir: str | Path = "data", *, normal: str = "0", device: str = "auto",
         progress: Progress | None = None) -> dict:
    """The whole pipeline on the bundled MNIST digits: ingest, train (one digit normal), calibrate,
    score the test split and report. Reruns reuse the dataset and model when up to date."""
    import dataclasses

    from anomaly_ae.config import DetectorConfig, TrainConfig

    workdir = Path(workdir)
    ds = ingest(DEMO_SOURCE, workdir / "datasets" / "mnist5k", progress=progress)
    # 30% held out: 105 calibration digits, enough for the 1% target to be guaranteed.
    cfg = DetectorConfig(train=dataclasses.replace(TrainConfig(), device=device, calib_fraction=0.3))
    model = train(ds["dataset"], workdir / "models" / f"mnist5k-{normal}", normal=[normal], config=cfg,
                  overwrite=True, progress=progress)
    run = score(ds["dataset"], model["model"], workdir / "runs" / f"mnist5k-{normal}-demo", split="test",
                overwrite=True, device=device, progress=progress)
    return {"dataset": ds, "model": model, "score": run}
