"""What the `anomaly-ae` command line calls: run a pipeline, serve it, score its inbox now.

Each function validates the pipeline file first (a bad file fails before Prefect starts),
then starts one flow run and returns a plain summary.
"""

from __future__ import annotations

from pathlib import Path

import flows.offline  # noqa: F401  (telemetry defaults before Prefect starts a server)


def _state_summary(state) -> dict:
    return {"flow_run_id": str(state.state_details.flow_run_id), "state": state.name,
            "completed": state.is_completed(), "message": state.message}


def _pipeline_path(pipeline_path: str, flow: str) -> str:
    """Load and check the pipeline file and every path `flow` will need, then start the
    temporary Prefect server (unless one is configured): all before any work."""
    from anomaly_ae.pipeline import load_pipeline
    from flows.preflight import check_paths
    from flows.tempserver import ensure_temporary_server

    p = load_pipeline(pipeline_path)
    check_paths(p, flow)
    ensure_temporary_server()
    return str(p.path)


def run(pipeline_path: str, force: bool = False, task_runner: str = "local",
        dask_address: str | None = None) -> dict:
    """Run the whole pipeline (ingest, train, calibrate, score, report) as one flow run.

    Returns:
        The flow run's id and state, the step summaries and the score summary under "score".

    Raises:
        AnomalyAEError: the pipeline file, a path it names or the data is wrong (the flow run is
            marked Failed), or the temporary Prefect server did not start (PrefectServerError).
    """
    from flows.pipeline import pipeline_flow
    from flows.scale import make_task_runner

    make_task_runner(task_runner, dask_address)  # an unknown runner fails before the run starts
    path = _pipeline_path(pipeline_path, "pipeline")
    state = pipeline_flow(pipeline=path, force=force, task_runner=task_runner, dask_address=dask_address,
                          return_state=True)
    return {**_state_summary(state), **state.result()}


def inbox(pipeline_path: str, task_runner: str = "local", dask_address: str | None = None) -> dict:
    """Score the files that arrived in the pipeline's inbox since the last run (one flow run now)."""
    from flows.inbox import inbox_flow
    from flows.scale import make_task_runner

    make_task_runner(task_runner, dask_address)
    path = _pipeline_path(pipeline_path, "inbox")
    state = inbox_flow(pipeline=path, task_runner=task_runner, dask_address=dask_address, return_state=True)
    return {**_state_summary(state), **state.result()}


def serve(pipeline_path: str) -> None:
    """Serve the pipeline's deployments on their schedules; blocks until Ctrl-C."""
    from flows.serve import serve as serve_pipeline

    serve_pipeline(Path(pipeline_path))
