"""Scoring steps: score a folder or dataset into a run folder, one partition of it, and its report."""

from __future__ import annotations

import logging
from pathlib import Path

from anomaly_ae import facts
from anomaly_ae.errors import DataError
from anomaly_ae.steps.datasets import Progress

log = logging.getLogger(__name__)


def score(input: str | Path, model: str | Path, out: str | Path, config=None, *, overwrite: bool = False,
          map_partitions=None, files: list[str] | None = None, run_id: str | None = None,
          progress: Progress | None = None, input_name: str | Path | None = None, links: dict | None = None,
          **settings) -> dict:
    """Score a folder or dataset with a model into the run folder `out` (written atomically).

    `config` (a `ScoreRunConfig`; default its defaults) sets the operating point, the split, the
    batches, workers, device, partitions and the report; `settings` replace single fields of it
    (``split="test"``, ``report=False``...).

    With `overwrite`, an existing `out` is replaced only when it is a run folder: never the input,
    the model, or a folder holding anything else.

    `files` (paths relative to the folder `input`) scores exactly those files, unlabelled.
    `run_id` names the run in run.json and the report (default: a new one; callers that name the
    run folder after an id pass the same one). `input_name` is the input run.json records
    (default `input`): an inbox run names its inbox, where the scored files' paths lead, not the
    staging copy it scored and then deleted. `links` (e.g. ``{"flow_run_url": ...}``) are recorded
    in run.json for the console to link to.

    `map_partitions(parts, part_dirs, threshold, normal)`, when given, scores the partitions
    elsewhere (a task runner) and returns their summaries; by default they run here in turn.
    """
    from anomaly_ae.parallel import leave_if_importing_script

    leave_if_importing_script()  # a worker importing a script without a main guard
    import dataclasses
    import shutil
    import time

    from anomaly_ae import backends, checkpoint, likeness, scoring
    from anomaly_ae import results as run_results
    from anomaly_ae.config import ScoreRunConfig
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.fsio import atomic_dir, atomic_write_json
    from anomaly_ae.imaging import Preprocess
    from anomaly_ae.locks import folder_lock
    from anomaly_ae.runid import new_run_id
    from anomaly_ae.schema import first_rejects

    t0, out = time.perf_counter(), Path(out)
    cfg = dataclasses.replace(config or ScoreRunConfig(), **settings)
    det = AutoencoderDetector.load(model, device=cfg.device)
    th = det.operating_point(cfg.threshold, cfg.target_fpr)
    policy = Preprocess.from_dict(det.meta_["preprocess"])
    protect = [Path(input), checkpoint.model_file(model).parent]  # never written over, whatever --out says
    with (folder_lock(out, "Run folder"),
          atomic_dir(out, overwrite=overwrite, kind="run", protect=protect) as tmp):
        parts = scoring.plan(input, policy, cfg.partitions, cfg.split, files=files)
        unlike = likeness.unlike(likeness.of_training(det.meta_), likeness.of_parts(parts), policy.crop)
        normal = scoring.normal_names(det.meta_.get("normal_classes") or [])
        normal = normal if scoring.labels_known(parts, normal) else None
        part_dirs = [tmp / ".parts" / f"{k:05d}" for k in range(len(parts))]
        if map_partitions is None:
            det = _backend_for(det, cfg.backend, sum(len(p) for p in parts), scoring.model_threads(det, parts[0]))
            done = _score_here(det, parts, part_dirs, th["threshold"], normal, cfg.batch_size, cfg.workers, progress)
        else:
            done = map_partitions(parts, part_dirs, th["threshold"], normal)
        t1 = time.perf_counter()
        merged = run_results.finalize(part_dirs, tmp, threshold_info=th, cal_scores=det.calibration_scores_)
        shutil.rmtree(tmp / ".parts", ignore_errors=True)
        if merged["metrics"] is not None:
            atomic_write_json(tmp / "metrics.json", merged["metrics"])
        run = run_results.run_record(det, model, input_name or input, cfg.split, th, parts, done, merged,
                                     {"total": time.perf_counter() - t0, "finalize": time.perf_counter() - t1}, normal,
                                     run_id or new_run_id())
        run.update(links or {})
        # Only labelled runs have metrics to overstate (and an inbox's runs are unlabelled).
        run["model_saw"] = _items_the_model_saw(det, cfg.split, tmp / "scores.parquet") if normal is not None else None
        run["backend"] = backends.name(det) if map_partitions is None else "per partition"
        run["unlike_training"] = unlike
        atomic_write_json(tmp / "run.json", run)
        if cfg.report:
            run["report"] = report_or_none(tmp, shown=out)
            atomic_write_json(tmp / "run.json", run)
    summary = run_results.score_summary(out, run, merged)
    if run["model_saw"]:
        log.warning(facts.model_saw(run["model_saw"]))
    for sentence in unlike:
        log.warning("Not like the training images: %s", sentence)
    rejects = first_rejects(out / "rejects.parquet", facts.MAX_NAMED)
    if rejects:  # news to whoever scored: said without -v too (the run's rejects table and report list them all)
        log.warning("%d of the files could not be scored: %s", summary["rejects"], facts.named(rejects, summary["rejects"]))
    log.info(facts.score(summary, rejects))
    return summary


def _items_the_model_saw(det, split: str | None, scores: Path) -> dict | None:
    """{"split", "scored_split", "n_items"[, "recalibration"]}: how many scored items are images that
    trained or calibrated the model, matched by content: the normal classes of the split it trained
    on, in its dataset (the dataset itself, the folder it came from, or copies elsewhere: the model
    keeps them; a model trained before it did counts them only while its dataset is there
    unchanged), and the images of its last ``calibrate --data`` and the reviewed false alarms
    calibration took ("recalibration" counts those). None when there are none."""
    import pyarrow.parquet as pq

    from anomaly_ae.dataset import SEEN_DIGITS, seen_by

    trained = det.meta_.get("data") or {}
    learned = seen_by(det.meta_) or set()
    recalibrated = set(det.meta_.get("calibration_hashes") or ()).union(
        *(det.meta_.get("reviewed_hashes") or {}).values())  # calibrate --data, and --reviews
    if not learned and not recalibrated:
        return None
    hashes = pq.read_table(scores, columns=["sha256"])["sha256"].to_pylist()
    n = sum(h[:SEEN_DIGITS] in learned or h in recalibrated for h in hashes)
    if not n:
        return None
    saw = {"split": trained.get("split") if any(h[:SEEN_DIGITS] in learned for h in hashes) else None,
           "scored_split": split, "n_items": n}
    again = sum(h in recalibrated for h in hashes)
    return {**saw, "recalibration": again} if again else saw


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


def score_partition(model: str | Path, part, part_dir: str | Path, *, threshold: float,
                    normal: list[str] | None, device: str = "auto", backend: str = "auto") -> dict:
    """Score one partition of a run (as `score` planned it) with the model loaded here, into
    `part_dir`: what a task runner's worker calls for each partition."""
    from anomaly_ae import scoring
    from anomaly_ae.detector import AutoencoderDetector

    det = AutoencoderDetector.load(model, device=device)
    det = _backend_for(det, backend, len(part), scoring.model_threads(det, part))
    return scoring.score_partition(det, part, Path(part_dir), threshold=threshold,
                                   normal=set(normal) if normal is not None else None)


# `auto` measures the backends only for runs at least this large: below, the export and the timing
# would cost more than they save (about a second for a digit model on 2 cores).
AUTO_MIN_ITEMS = 2000


def _backend_for(det, backend: str, n_items: int, threads: int | None):
    from anomaly_ae import backends

    if backend == "auto" and n_items < AUTO_MIN_ITEMS:
        return det
    return backends.with_backend(det, backend, threads)


def report_or_none(run_dir: str | Path, shown: str | Path | None = None) -> str | None:
    """Build the run folder's report.html and return its name; a failure is logged and returns None,
    for the scores are committed and a broken report must not cost the user the run's results.
    `shown`: the run folder's name in messages (the folder `run_dir` becomes, when it is a temporary)."""
    from anomaly_ae.errors import AnomalyAEError, NoSpaceError, NotWritableError

    shown = shown or run_dir
    try:
        return report(run_dir).name
    except AnomalyAEError as exc:  # a full disk, a folder made read-only: said in a line, no traceback
        why = ("no space was left on its disk" if isinstance(exc, NoSpaceError) else
               "its folder is not writable" if isinstance(exc, NotWritableError) else str(exc))
        log.warning("report.html of %s was not written (%s); the scores are kept: rebuild it with `anomaly-ae "
                    "report %s`", shown, why, shown)
    except Exception:
        log.exception("building the report of %s failed; the scores are kept (rebuild it with "
                      "`anomaly-ae report %s`)", shown, shown)
    return None


def report(run_dir: str | Path) -> Path:
    """Rebuild a run folder's report.html from its tables."""
    from anomaly_ae import report as report_module

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise DataError(f"{run_dir} is not a run folder (no run.json). Score something with `anomaly-ae score`.")
    return report_module.build(run_dir)


def console_links(run_dir: str | Path, console_url: str, top: int = 5) -> dict:
    """Links to a run in the console (`anomaly-ae ui`) at `console_url`: its run page (where items
    are reviewed), its report and model pages, and heat-map thumbnails of its `top` flagged items
    ({"path", "score", "url"})."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from anomaly_ae.ui.catalog import run_key

    run_dir = Path(run_dir)
    base = f"{console_url.rstrip('/')}/runs/{run_key(run_dir)}"
    t = pq.read_table(run_dir / "scores.parquet", columns=["image_id", "path", "score", "flagged", "rank"])
    t = t.filter(pc.field("flagged")).sort_by("rank").slice(0, top).to_pylist()
    from urllib.parse import quote

    return {"run": base, "report": f"{base}/files/report.html", "model": f"{base}/model",
            "thumbs": [{"path": r["path"], "score": r["score"], "url": f"{base}/thumb/{quote(r['image_id'])}?overlay=1"}
                       for r in t]}
