"""Inbox scoring: the scheduled flow that scores the files that arrived since the last run.

Exactly-once is the library's (`anomaly_ae.steps.score_inbox` over `anomaly_ae.inbox`): an inbox
lock, a Parquet ledger and a run folder whose rename is the commit. A run that finds the lock taken ends as Completed
with the message ``skipped: busy`` (its task too: an overlap is no failure): the running one scores the files, and the
next run what is left.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anomaly_ae import steps
from anomaly_ae.errors import BusyError
from anomaly_ae.pipeline import Pipeline
from flows import artifacts, tasks
from flows.logs import forward_library_logs
from flows.pipeline import load_for_run, run_name
from flows.preflight import require_inbox
from flows.retry import transient_only
from flows.scale import mapper_for

# The state message of a run that found the inbox lock held by another run.
BUSY = "skipped: busy"


@task(name="score-inbox", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, retry_condition_fn=transient_only)
def score_inbox(p: Pipeline, task_runner: str | None, dask_address: str | None) -> dict:
    """Stage the inbox's new files, score them and commit the run under the inbox lock.

    A retry is safe: a run that failed before its commit committed nothing, and one that committed
    left no new files behind.
    """
    forward_library_logs()
    try:
        return steps.score_inbox(p.inbox.folder, p.inbox_state_dir, p.model_dir,
                                 settle_seconds=p.inbox.settle_seconds, max_files=p.inbox.max_files,
                                 partitions=p.scale.partitions, report=False,
                                 map_partitions=mapper_for(p, task_runner, dask_address),
                                 links=tasks.flow_run_links())
    except BusyError as exc:  # an overlap is no failure: the run holding the lock scores the files
        return {"inbox": p.inbox.folder, "skipped": "busy", "busy": str(exc), "new_files": 0, "score": None}


def ensure_model(p: Pipeline) -> None:
    """Train the pipeline's model first when it has none yet (ingest and train, both cached)."""
    if not (p.model_dir / "model.pt").exists():
        get_run_logger().info("%s has no model yet; ingesting and training it first", p.name)
        tasks.ingest(p)
        tasks.train(p)
        return
    why = steps.unlike_its_pipeline(p.dataset_dir, p.model_dir, p.normal, p.detector)
    if why:
        get_run_logger().warning("The model %s is not the one %s describes (%s): the inbox scores with it as it is; "
                                 "`anomaly-ae run %s` trains and calibrates it as the file says", p.model_dir,
                                 p.path, why, p.path)


# How many of the latest committed runs a flow run checks for a report left unbuilt.
REPORT_CATCH_UP = 5


def _reports_left_behind(p: Pipeline, this_run: str | None) -> None:
    """Build the report of a recent committed run that has none (see
    `steps.inbox_runs_without_report`), other than this flow run's own, which it builds after."""
    for run_dir in steps.inbox_runs_without_report(p.inbox_state_dir, REPORT_CATCH_UP):
        if this_run is None or run_dir != Path(this_run):
            get_run_logger().info("building the report of %s, committed without one", run_dir)
            tasks.report(run_dir)


@flow(name="inbox-scoring", flow_run_name=run_name)
def inbox_flow(pipeline: str, task_runner: str | None = None, dask_address: str | None = None) -> dict:
    """Score the files that arrived in the pipeline's inbox since the last run, exactly once."""
    p = load_for_run(pipeline)
    logger = get_run_logger()
    require_inbox(p)
    ensure_model(p)
    result = score_inbox(p, task_runner, dask_address)
    if result.get("skipped") == "busy":
        logger.info("skipped: %s", result["busy"])
        return artifacts.finish(p.name, result, None, BUSY)
    if p.inbox.report:
        _reports_left_behind(p, result.get("run_dir"))
    if not result["new_files"]:
        return artifacts.finish(p.name, result, None, f"no new files, {result['pending']} still settling")
    if result["score"] is None:
        logger.warning("none of the %d new files could be read; they are recorded as rejected", result["new_files"])
        return artifacts.finish(p.name, result, None, state_message(result))
    run_dir, score = result["run_dir"], result["score"]
    if p.inbox.report:
        score["report"] = tasks.report(run_dir)
    extra = {"new files": result["new_files"], "still settling": result["pending"],
             "rejected before scoring": result["unreadable"] + result["refused"]}
    result["artifacts"] = artifacts.publish(p.name, "inbox", score, run_dir, extra, console_url=p.console_url)
    result["alert"] = artifacts.alert(p.name, "inbox", score, run_dir, p.alerts.min_flagged, logger)
    return artifacts.finish(p.name, result, score, state_message(result))


def state_message(result: dict) -> str:
    """What an inbox run that staged files found, in a few words: ``5/6 flagged, 2 unreadable,
    1 refused, drift: none``. Unreadable counts the files scoring could not decode and those that
    could not be read; refused the entries rejected unopened (links, pipes, folders)."""
    score = result["score"] or {}
    unreadable = score.get("rejects", 0) + result["unreadable"]
    refused = f", {result['refused']} refused" if result["refused"] else ""
    if not score:
        return f"{result['new_files']} new files, none scored: {unreadable} unreadable{refused}"
    return (f"{score['flagged']}/{score['scored']} flagged, {unreadable} unreadable{refused}, "
            f"drift: {'warning' if score.get('drift') else 'none'}")
