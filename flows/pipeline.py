"""The pipeline's flows: ingest, train, calibrate, score-batch and the whole pipeline.

Every flow takes plain values (the pipeline file's path and a few switches) so schedules
and the UI can set them; each is a few lines over `flows.tasks`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from anomaly_ae.pipeline import Pipeline, batch_input, load_pipeline
from flows import artifacts, tasks
from flows.logs import forward_library_logs
from flows.scale import mapper_for


def run_name() -> str:
    """Flow run names that read well: ``<pipeline>-<yyyymmddThhmmssZ>`` (UTC)."""
    from prefect.runtime import flow_run

    from anomaly_ae.runid import stamp

    params = flow_run.parameters or {}
    path = Path(str(params.get("pipeline", "pipeline")))
    try:  # its [pipeline] name, as its tags and artifacts use; the file's name when it has none
        name = load_pipeline(path).name
    except Exception:  # the flow run itself reports a file that cannot be read
        name = path.stem
    return f"{name}-{stamp()}"


def load_for_run(pipeline: str) -> Pipeline:
    """Load the pipeline file at the start of a flow run (and forward the library's logs)."""
    forward_library_logs()
    return load_pipeline(pipeline)


@flow(name="ingest", flow_run_name=run_name)
def ingest_flow(pipeline: str, force: bool = False) -> dict:
    """Ingest the pipeline's source into its Parquet dataset (skipped when up to date)."""
    return tasks.ingest(load_for_run(pipeline), force)


@flow(name="train", flow_run_name=run_name)
def train_flow(pipeline: str, force: bool = False) -> dict:
    """Train the pipeline's model on its dataset (skipped when nothing changed)."""
    return tasks.train(load_for_run(pipeline), force)


@flow(name="calibrate", flow_run_name=run_name)
def calibrate_flow(pipeline: str, target_fpr: float | None = None) -> dict:
    """Recalibrate the pipeline's model threshold (to `target_fpr`, default the file's; with the
    reviewed false alarms when [review] calibrate is on)."""
    from anomaly_ae import steps

    p = load_for_run(pipeline)
    return steps.calibrate(p.model_dir, target_fpr=target_fpr or p.detector.threshold.target_fpr,
                           reviews=p.reviewed_runs() if p.review.calibrate else None)


def score_and_report(p: Pipeline, input: str, split: str | None, kind: str, task_runner: str | None,
                     dask_address: str | None, partitions: int | None = None, after: list | None = None) -> dict:
    """Score into a new run folder (once the task states in `after` are final), build the report,
    publish artifacts and alert; returns the summary."""
    from anomaly_ae.runid import new_run_id

    logger = get_run_logger()
    partitions = partitions or p.scale.partitions
    run_id = new_run_id()
    out = p.runs_dir / run_id
    scored = tasks.score(input, str(p.model_dir), str(out), run_id=run_id, split=split, partitions=partitions,
                         map_partitions=mapper_for(p, task_runner, dask_address, partitions), wait_for=after or [],
                         return_state=True)
    summary = scored.result()
    if p.batch.report:
        summary["report"] = tasks.report(out, wait_for=[scored])
    summary["artifacts"] = artifacts.publish(p.name, kind, summary, out, console_url=p.console_url)
    summary["alert"] = artifacts.alert(p.name, kind, summary, out, p.alerts.min_flagged, logger)
    return summary


@flow(name="score-batch", flow_run_name=run_name)
def score_batch_flow(pipeline: str, input: str | None = None, split: str | None = None,
                     task_runner: str | None = None, dask_address: str | None = None,
                     partitions: int | None = None) -> dict:
    """Score a folder or dataset (default: what the pipeline's [batch] says) with its model."""
    p = load_for_run(pipeline)
    default_input, default_split = batch_input(p)
    scored = score_and_report(p, input or default_input, split if input else (split or default_split), "batch",
                              task_runner, dask_address, partitions)
    return artifacts.finish(p.name, scored, scored)


@flow(name="anomaly-pipeline", flow_run_name=run_name)
def pipeline_flow(pipeline: str, force: bool = False, task_runner: str | None = None,
                  dask_address: str | None = None) -> dict:
    """The whole pipeline as one run: ingest -> train -> calibrate -> score -> report.

    Ingest and training are skipped when their inputs and settings are unchanged; `force`
    redoes them. `task_runner` ("local" or "dask") and `dask_address` fan scoring out over
    the pipeline's [scale] partitions.
    """
    p = load_for_run(pipeline)
    # Each task waits for the one before: the run's graph shows ingest -> train -> calibrate -> score -> report.
    # A failed task's result() raises its error, which ends the run as before.
    ingested = tasks.ingest(p, force, return_state=True)
    dataset = ingested.result()
    trained = tasks.train(p, force, wait_for=[ingested], return_state=True)
    model = trained.result()
    calibrated = tasks.calibrate(p, wait_for=[trained], return_state=True)
    threshold = calibrated.result()
    source, split = batch_input(p)
    scored = score_and_report(p, source, split, "batch", task_runner, dask_address, after=[calibrated])
    result = {"pipeline": p.name, "dataset": dataset, "model": model, "calibrate": threshold, "score": scored}
    return artifacts.finish(p.name, result, scored)
