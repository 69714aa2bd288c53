"""Inbox scoring: the scheduled flow that scores the files that arrived since the last run.

Exactly-once is the library's (`anomaly_ae.inbox`): an inbox lock, a Parquet ledger and a
run folder whose rename is the commit. A run that finds the lock taken ends as Completed
with ``skipped: busy``: the running one scores the files, and the next run what is left.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anomaly_ae.errors import BusyError, ConfigError
from anomaly_ae.inbox import InboxRun
from anomaly_ae.inbox import summary as inbox_summary
from anomaly_ae.pipeline import Pipeline
from flows import artifacts, tasks
from flows.logs import forward_library_logs
from flows.pipeline import load_for_run, run_name
from flows.retry import transient_only
from flows.scale import mapper_for


@task(name="find-new-files", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=transient_only)
def stage_new_files(run: InboxRun) -> list:
    """List settled files the ledger does not hold and copy them for scoring."""
    forward_library_logs()
    return run.stage(run.new_files())


@task(name="commit-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1, retry_condition_fn=transient_only)
def commit(run: InboxRun, staged: list) -> str:
    """Write the ledger part and rename the run folder into place (the commit point)."""
    forward_library_logs()
    return str(run.commit(staged))


def ensure_model(p: Pipeline) -> None:
    """Train the pipeline's model first when it has none yet (ingest and train, both cached)."""
    if not (p.model_dir / "model.pt").exists():
        get_run_logger().info("%s has no model yet; ingesting and training it first", p.name)
        tasks.ingest(p)
        tasks.train(p)


def _score_inbox(p: Pipeline, task_runner: str | None, dask_address: str | None) -> dict:
    """Stage, score and commit under the inbox lock; returns the inbox summary."""
    with InboxRun(p.inbox.folder, p.inbox_state_dir, settle_seconds=p.inbox.settle_seconds,
                  max_files=p.inbox.max_files) as run:
        staged = stage_new_files(run)
        if not staged:
            return inbox_summary(run, [], None, None)
        files = run.scoreable()  # exactly the staged files that could be read
        scored = tasks.score(str(run.input_dir), str(p.model_dir), str(run.out_dir), partitions=p.scale.partitions,
                             map_partitions=mapper_for(p, task_runner, dask_address), files=files) if files else None
        final = commit(run, staged)
        return inbox_summary(run, staged, scored, final)


@flow(name="inbox-scoring", flow_run_name=run_name)
def inbox_flow(pipeline: str, task_runner: str | None = None, dask_address: str | None = None) -> dict:
    """Score the files that arrived in the pipeline's inbox since the last run, exactly once."""
    p = load_for_run(pipeline)
    logger = get_run_logger()
    if p.inbox is None:
        raise ConfigError(f"{p.path}: no [inbox] table; add one with folder = \"...\" to score an inbox.")
    ensure_model(p)
    try:
        result = _score_inbox(p, task_runner, dask_address)
    except BusyError as exc:
        logger.info("skipped: %s", exc)
        return {"inbox": p.inbox.folder, "skipped": "busy", "new_files": 0, "score": None}
    if not result["new_files"]:
        logger.info("no new files in %s (%d still settling)", p.inbox.folder, result["pending"])
        return result
    if result["score"] is None:
        logger.warning("none of the %d new files could be read; they are recorded as rejected", result["new_files"])
        return result
    run_dir, score = result["run_dir"], result["score"]
    if p.inbox.report:
        score["report"] = tasks.report_or_none(run_dir, logger)
    extra = {"new files": result["new_files"], "still settling": result["pending"]}
    result["artifacts"] = artifacts.publish(p.name, "inbox", score, run_dir, extra)
    result["alert"] = artifacts.alert(p.name, "inbox", score, run_dir, p.alerts.min_flagged, logger)
    return result
