"""Prefect tasks: one per library step, with retries on I/O and the library's caching.

Ingest and training skip finished work by themselves: `anomaly_ae.steps` compares a
fingerprint of the inputs and settings with the stored one and returns ``cached: True``.
``force=True`` redoes the work. Prefect's own result caching is off (``NO_CACHE``) so that
there is exactly one caching rule.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from anomaly_ae import steps
from anomaly_ae.pipeline import Pipeline, is_web_url
from flows.logs import forward_library_logs
from flows.retry import transient_only

IO_RETRIES = {"retries": 2, "retry_delay_seconds": 3, "retry_condition_fn": transient_only}
SKIPPED = "Skipped"


def skipped_or_done(summary: dict, why: str):
    """A step's summary, or, when the step found its work done already (``cached``), a Completed state
    named Skipped that says why: the UI tells work skipped from work done."""
    from prefect.states import Completed

    return Completed(name=SKIPPED, message=f"skipped: {why}", data=summary) if summary.get("cached") else summary


@task(name="ingest", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest(p: Pipeline, force: bool = False) -> dict:
    """Ingest the pipeline's source into its Parquet dataset (skipped when up to date).

    The pipeline owns its dataset folder: a dataset made from other files or options is replaced.
    """
    forward_library_logs()
    return skipped_or_done(steps.ingest(**p.ingest_kwargs(), overwrite=True, force=force), "the source is unchanged")


@task(name="train", cache_policy=NO_CACHE)
def train(p: Pipeline, force: bool = False) -> dict:
    """Train and calibrate the pipeline's model (skipped when data and settings are unchanged); a
    training of the same data and settings that was interrupted goes on from its last finished epoch."""
    forward_library_logs()
    return skipped_or_done(steps.train(p.dataset_dir, p.model_dir, normal=p.normal, config=p.detector,
                                       overwrite=True, force=force, resume=True), "the data and settings are unchanged")


@task(name="calibrate", cache_policy=NO_CACHE, **IO_RETRIES)
def calibrate(p: Pipeline) -> dict:
    """Set the model's threshold to the pipeline's target FPR, with the false alarms reviewed in its
    runs among the calibration normals when [review] calibrate is on (skipped when nothing changed)."""
    forward_library_logs()
    reviews = p.reviewed_runs() if p.review.calibrate else None
    return skipped_or_done(steps.calibrate(p.model_dir, target_fpr=p.detector.threshold.target_fpr, reviews=reviews),
                           "the model already holds the target" + (" and every reviewed false alarm" if reviews else ""))


@task(name="score", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3, retry_condition_fn=transient_only)
def score(input: str, model: str, out: str, run_id: str | None = None, split: str | None = None,
          partitions: int = 1, map_partitions=None, files: list[str] | None = None) -> dict:
    """Score a folder or dataset (or just `files` of a folder) into a new run folder (partitions fan out as tasks)."""
    forward_library_logs()
    return steps.score(input, model, out, run_id=run_id, split=split, partitions=partitions,
                       map_partitions=map_partitions, report=False, files=files, links=flow_run_links())


def flow_run_links() -> dict:
    """The current flow run's page in the Prefect UI, for run.json (the console links to it)."""
    from prefect.runtime import flow_run

    try:
        url = flow_run.ui_url
    except Exception:  # no UI URL configured: the run has no page to link to
        url = None
    # Without one Prefect still builds "None/flow-runs/..." (the temporary server has no UI to link to).
    return {"flow_run_url": url} if is_web_url(url) else {}


@task(name="report", cache_policy=NO_CACHE)
def report(run_dir: str | Path) -> str | None:
    """Build the run folder's report.html; a failed report is logged and never fails the run (the
    scores are committed, and `anomaly-ae report` rebuilds it)."""
    forward_library_logs()
    return steps.report_or_none(run_dir)
