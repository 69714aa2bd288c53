"""Serve a pipeline's deployments on their schedules (``anomaly-ae serve pipelines/<x>.toml``).

Each [[schedule]] of the pipeline file belongs to a flow: ``inbox`` (score new inbox files)
or ``pipeline`` (ingest, retrain when something changed, score the batch). One deployment
per flow with schedules: ``<pipeline>-inbox`` and ``<pipeline>-pipeline``; a pipeline file
without schedules gets one unscheduled ``<pipeline>-pipeline`` deployment to run by hand.

An inbox's interval schedule is the period of a watcher (`InboxWatcher`) that starts an inbox
run only when files have arrived, so an empty inbox creates no flow runs; cron schedules and the
pipeline flow's schedules are Prefect's. Schedules are turned into runs by a Prefect server's
scheduler, which Prefect's temporary server does not run. So when no server is configured
(``PREFECT_API_URL`` unset), `serve` starts ``prefect server start`` on 127.0.0.1 for as long as
it serves (its UI included).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from anomaly_ae.errors import AnomalyAEError
from anomaly_ae.pipeline import Pipeline, Schedule, load_pipeline
from flows.tempserver import check_database_folder, python_module_command

log = logging.getLogger(__name__)
POLL_SECONDS = 5.0
SERVER_START_SECONDS = 180.0  # a first start creates the database: slow on a loaded machine


def prefect_schedules(schedules: list[Schedule]) -> list:
    """Prefect schedule objects for pipeline-file schedules."""
    from prefect.schedules import Cron, Interval

    out = []
    for s in schedules:
        if s.cron is not None:
            out.append(Cron(s.cron, timezone=s.timezone))
        else:
            out.append(Interval(dt.timedelta(seconds=s.interval), timezone=s.timezone))
    return out


def deployments(p: Pipeline) -> list:
    """The pipeline's runner deployments (`flow.to_deployment`), with absolute parameters.

    The inbox deployment keeps only its cron schedules: its interval schedules are the period of
    the `InboxWatcher`, which starts a run only when files have arrived.
    """
    from flows.inbox import inbox_flow
    from flows.pipeline import pipeline_flow

    params = {"pipeline": str(p.path), "task_runner": p.scale.task_runner, "dask_address": p.scale.dask_address}
    tags = ["anomaly-ae", p.name]
    out = []
    inbox_schedules = p.schedules_for("inbox")
    if p.inbox is not None and inbox_schedules:
        out.append(inbox_flow.to_deployment(
            name=f"{p.name}-inbox", parameters=params, tags=tags,
            schedules=prefect_schedules([s for s in inbox_schedules if s.cron is not None]),
            description=f"Score new files in {p.inbox.folder} ({p.name})."))
    pipeline_schedules = p.schedules_for("pipeline")
    if pipeline_schedules or not out:
        out.append(pipeline_flow.to_deployment(
            name=f"{p.name}-pipeline", parameters={**params, "force": False},
            schedules=prefect_schedules(pipeline_schedules), tags=tags,
            description=f"Ingest, train (when changed), calibrate, score and report ({p.name})."))
    return out


class InboxWatcher:
    """Starts an inbox run when files have arrived, not on a blind clock.

    Every `period` seconds it checks the inbox (one stat per file, `steps.inbox_has_new_files`);
    when settled files the ledger does not hold are there and no run it started is still going,
    it starts a run of the inbox deployment. An empty inbox creates no flow runs.
    """

    def __init__(self, p: Pipeline, deployment: str, period: float):
        self.p, self.deployment, self.period = p, deployment, period
        self.running = None  # the id of the last run started, until it ends

    def check(self) -> str | None:
        """One check: the id of the flow run started, or None."""
        from prefect.client.orchestration import get_client

        from anomaly_ae import steps

        with get_client(sync_client=True) as client:
            if self.running is not None:
                state = client.read_flow_run(self.running).state
                if state is not None and not state.is_final():
                    return None
                self.running = None
            inbox = self.p.inbox
            if not steps.inbox_has_new_files(inbox.folder, self.p.inbox_state_dir, inbox.settle_seconds):
                return None
            deployment = client.read_deployment_by_name(self.deployment)
            self.running = client.create_flow_run_from_deployment(deployment.id, tags=["arrival"]).id
        log.info("new files in %s: started inbox run %s", inbox.folder, self.running)
        return str(self.running)

    def run(self, stop) -> None:
        """Check every `period` seconds until the event `stop` is set (a failed check is logged)."""
        while not stop.wait(self.period):
            try:
                self.check()
            except Exception as exc:  # the next check tries again; serving goes on
                log.warning("checking the inbox %s failed: %s", self.p.inbox.folder, exc)


def _watch_inbox(p: Pipeline):
    """A started watcher thread for the pipeline's interval inbox schedules, and its stop event (or None)."""
    import threading

    periods = [s.interval for s in p.schedules_for("inbox") if s.interval is not None]
    if p.inbox is None or not periods:
        return None
    stop = threading.Event()
    watcher = InboxWatcher(p, f"inbox-scoring/{p.name}-inbox", min(periods))
    threading.Thread(target=watcher.run, args=(stop,), name="inbox-watcher", daemon=True).start()
    return stop


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def local_server(timeout: float = SERVER_START_SECONDS) -> Iterator[str | None]:
    """Run ``prefect server start`` on 127.0.0.1 while the block runs, unless a server is configured.

    Yields the API URL it started (None when PREFECT_API_URL was already set). The server
    keeps its data in PREFECT_HOME like Prefect's temporary server, so runs and artifacts
    stay visible afterwards (``prefect artifact ls``).

    Raises:
        AnomalyAEError: the server did not answer within `timeout` seconds, or it could not keep
            its database (`flows.tempserver.check_database_folder`).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    check_database_folder()  # a server that cannot keep its database would only exit
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    logfile = tempfile.NamedTemporaryFile("w+", prefix="anomaly-ae-prefect-server-", suffix=".log", delete=False)
    # Under a parent watch: the server stops when this process dies, even by SIGKILL.
    cmd = python_module_command("prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port))
    # A session of its own: Ctrl-C stops serving first; the server is stopped after that.
    # The UI asks the API it is wired to (/ui-settings): this server's own, not the default port 4200.
    env = {**os.environ, "PREFECT_SERVER_UI_API_URL": url, "PREFECT_SERVER_API_PORT": str(port)}
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    try:
        _wait_healthy(proc, url, timeout, logfile.name)
        log.info("started a local Prefect server for serving: %s (UI at http://127.0.0.1:%d)", url, port)
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # flow runs start in subprocesses: they read the environment
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        logfile.close()
        os.unlink(logfile.name)


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, logname: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _healthy(url):
            return
        time.sleep(0.5)
    tail = Path(logname).read_text(errors="replace")[-2000:]
    raise AnomalyAEError(f"The local Prefect server did not start within {timeout:.0f} s ({url}). Its output:\n{tail}\n"
                         "Start one yourself with `prefect server start` and set PREFECT_API_URL.")


def serve(pipeline_path: str | Path, poll_seconds: float = POLL_SECONDS) -> None:
    """Serve the pipeline's deployments until interrupted (Ctrl-C).

    Flow runs start in the current folder, which must be the one the pipeline file's
    relative paths are meant from (the project root). `poll_seconds` is how often the
    server is asked for runs that are due.
    """
    from prefect import serve as prefect_serve

    from flows.preflight import check_paths

    p = load_pipeline(pipeline_path)
    check_paths(p, "serve")
    with local_server():
        stop = _watch_inbox(p)
        try:
            prefect_serve(*deployments(p), query_seconds=poll_seconds)
        finally:
            if stop is not None:
                stop.set()
