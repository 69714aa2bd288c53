"""The `anomaly-ae` command line: the library's commands (`anomaly_ae.cli`) plus the Prefect ones.

``run``, ``serve`` and ``inbox`` start flow runs (`flows.entry`); prefect is imported only when
one of them runs, so ``anomaly-ae --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anomaly_ae import console
from anomaly_ae.cli import Json, Verbose, app, apply_help_style
from anomaly_ae.cli import main as library_main
from anomaly_ae.console import out_console

Pipeline = Annotated[Path, typer.Argument(help="A pipeline file (pipelines/*.toml).")]
TaskRunner = Annotated[str, typer.Option(help="local (one process) or dask (fan scoring out over partitions).")]
DaskAddress = Annotated[str | None, typer.Option(help="An existing Dask scheduler \\[default: a local cluster].")]


@app.command()
def run(
    pipeline: Pipeline,
    force: Annotated[bool, typer.Option(help="Redo ingest and training even when up to date.")] = False,
    task_runner: TaskRunner = "local", dask_address: DaskAddress = None,
    as_json: Json = False, verbose: Verbose = False,
) -> None:
    """Run a pipeline (ingest, train, calibrate, score, report) as one Prefect flow run."""
    console.setup_logging(verbose)
    from flows import entry

    s = entry.run(str(pipeline), force=force, task_runner=task_runner, dask_address=dask_address)
    if as_json:
        return console.print_json(s)
    out_console.print(f"Flow run {s['flow_run_id']}: {s['state']}")
    if s.get("score"):
        console.print_score_summary(s["score"])


@app.command()
def serve(pipeline: Pipeline, verbose: Verbose = False) -> None:
    """Serve a pipeline's deployments on their schedules until Ctrl-C (starts a local Prefect server
    when PREFECT_API_URL is not set)."""
    console.setup_logging(verbose)
    from flows import entry

    entry.serve(str(pipeline))


@app.command()
def inbox(
    pipeline: Pipeline, task_runner: TaskRunner = "local", dask_address: DaskAddress = None,
    as_json: Json = False, verbose: Verbose = False,
) -> None:
    """Score the files that arrived in a pipeline's inbox since its last run, each exactly once."""
    console.setup_logging(verbose)
    from flows import entry

    s = entry.inbox(str(pipeline), task_runner=task_runner, dask_address=dask_address)
    if as_json:
        return console.print_json(s)
    said = f" ({s['message']})" if s.get("message") else ""
    out_console.print(f"Flow run {s['flow_run_id']}: {s['state']}{said}; inbox {s.get('inbox')}", soft_wrap=True)
    if s.get("score"):
        console.print_score_summary(s["score"])


apply_help_style(app)


def main() -> None:
    """Console-script entry point: every command, the Prefect ones included."""
    library_main()


if __name__ == "__main__":  # pragma: no cover
    main()
