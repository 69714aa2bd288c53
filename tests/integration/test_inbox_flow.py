"""Inbox scoring flows: files arriving between runs, partial files, overlapping runs, failures,
and a served schedule that actually fires."""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from anomaly_ae.inbox import read_ledger
from anomaly_ae.pipeline import load_pipeline
from tests.conftest import write_png
from tests.integration.conftest import write_pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def line(tmp_path_factory, mnist_images):
    """A product line from real digits: zeros are good; a trained model; a pool of new images."""
    from anomaly_ae import steps

    pixels, classes, splits = mnist_images
    root = tmp_path_factory.mktemp("line")
    for k in np.flatnonzero((classes == "0") & (splits == "train"))[:80]:
        write_png(root / "line" / "train" / "good" / f"{k:05d}.png", pixels[k, :, :, 0])
    path = write_pipeline(root / "base.toml", {"data": {"source": str(root / "line"), "normal": ["good"]},
                                                "output": {"folder": str(root / "out")}})
    p = load_pipeline(path)
    steps.ingest(**p.ingest_kwargs())
    steps.train(p.dataset_dir, p.model_dir, normal=p.normal, config=p.detector)
    test = np.flatnonzero(splits == "test")
    return {"model": p.model_dir, "source": root / "line", "pixels": pixels[test, :, :, 0], "root": root}


def make_line(line, tmp_path: Path, settle: float = 0.0, schedule: list | None = None, report: bool = False):
    """A pipeline over the shared model with its own inbox and outputs; returns (file, inbox, Pipeline)."""
    out, inbox = tmp_path / "out", tmp_path / "inbox"
    inbox.mkdir()
    shutil.copytree(line["model"], out / "model")
    doc = {"pipeline": {"name": "line-t"}, "data": {"source": str(line["source"]), "normal": ["good"]},
           "output": {"folder": str(out)},
           "inbox": {"folder": str(inbox), "settle_seconds": settle, "report": report}}
    if schedule:
        doc["schedule"] = schedule
    path = write_pipeline(tmp_path / "line-t.toml", doc)
    return path, inbox, load_pipeline(path)


def drop(line, inbox: Path, names: list[str], start: int = 0) -> list[str]:
    """Write real digit images (PNG) into the inbox under `names` (any extension)."""
    for k, name in enumerate(names):  # written outside, then renamed in: never seen half-written
        png = write_png(inbox.parent / "drop-staging" / f"{k}.png", line["pixels"][start + k])
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        png.rename(inbox / name)
    return names


def ledger_paths(p) -> list[str]:
    return read_ledger(p.inbox_state_dir, consolidate=False)["path"].to_pylist()


def test_files_arriving_between_runs_are_each_scored_once(line, tmp_path):
    from flows.entry import inbox as run_inbox

    path, inbox, p = make_line(line, tmp_path)
    first = drop(line, inbox, ["a1.png", "a2.png", "sub/a3.png"])
    r1 = run_inbox(str(path))
    assert r1["state"] == "Completed" and sorted(r1["files"]) == sorted(first)
    assert r1["score"]["scored"] == 3
    second = drop(line, inbox, ["b1.png", "b2.png"], start=10)
    r2 = run_inbox(str(path))
    assert sorted(r2["files"]) == second and r2["score"]["scored"] == 2
    r3 = run_inbox(str(path))
    assert r3["new_files"] == 0 and r3["score"] is None
    assert sorted(ledger_paths(p)) == sorted(first + second)
    import pyarrow.parquet as pq

    scored = pq.read_table(Path(r2["run_dir"]) / "scores.parquet")["path"].to_pylist()
    assert sorted(scored) == second  # each run's results hold its own files only
    assert r2["artifacts"]["summary"] == "line-t-inbox-summary"
    # The run names its inbox as its input (where its paths lead), not the staging copy since deleted.
    import json

    recorded = json.loads((Path(r2["run_dir"]) / "run.json").read_text())["input"]
    assert Path(recorded) == Path(p.inbox.folder).resolve() and (Path(recorded) / second[0]).exists()


def test_every_file_is_scored_whatever_the_folder_names(line, tmp_path, monkeypatch):
    """Sub-folders named like a dataset layout (train/, test/, ground_truth/), loose files, an
    unreadable file and a name that is not UTF-8: each file is scored or recorded as rejected."""
    import builtins

    from flows.inbox import inbox_flow

    path, inbox, p = make_line(line, tmp_path)
    names = drop(line, inbox, ["loose.png", "train/a.png", "test/good/b.png", "ground_truth/c.png", "cats/d.png",
                               "locked.png"])
    raw = os.fsencode(inbox) + b"/caf\xe9.png"
    with open(raw, "wb") as fh:
        fh.write((inbox / "loose.png").read_bytes())
    real_open = builtins.open

    def deny_locked(file, *a, **k):
        if str(file).endswith("locked.png") and str(inbox) in str(file):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", deny_locked)
    result = inbox_flow(pipeline=str(path))
    table = read_ledger(p.inbox_state_dir, consolidate=False)
    status = dict(zip(table["path"].to_pylist(), table["status"].to_pylist()))
    assert set(status) == set(names) | {"caf\\xe9.png"}
    assert status["locked.png"] == "rejected"
    assert all(v == "scored" for k, v in status.items() if k != "locked.png")
    assert result["score"]["scored"] == len(names)  # the five readable drops and the Latin-1 name
    monkeypatch.undo()
    again = inbox_flow(pipeline=str(path))
    assert again["new_files"] == 0


def test_partial_and_fresh_files_wait(line, tmp_path, monkeypatch):
    from anomaly_ae import arrivals
    from flows.inbox import inbox_flow

    # The inbox's clock, moved on by hand: however slow the machine, c3 is fresh in the first
    # run (60 s of settling asked for) and settled in the second.
    later = {"s": 0.0}
    monkeypatch.setattr(arrivals, "time", type("Clock", (), {"time": staticmethod(lambda: time.time() + later["s"])}))
    path, inbox, p = make_line(line, tmp_path, settle=60)
    drop(line, inbox, ["c1.png.part", ".c2.png", "c3.png"])
    r1 = inbox_flow(pipeline=str(path))
    assert r1["new_files"] == 0 and r1["pending"] == 1  # c3 still settling; .part and hidden ignored
    (inbox / "c1.png.part").rename(inbox / "c1.png")
    later["s"] = 61.0
    r2 = inbox_flow(pipeline=str(path))
    assert sorted(r2["files"]) == ["c1.png", "c3.png"]
    assert sorted(ledger_paths(p)) == ["c1.png", "c3.png"]


def test_concurrent_runs_score_each_file_once(line, tmp_path, monkeypatch):
    """Two runs at once: one holds the inbox lock until the other has been refused, and scores."""
    from anomaly_ae.inbox import InboxRun
    from flows.inbox import inbox_flow

    path, inbox, p = make_line(line, tmp_path)
    names = drop(line, inbox, [f"d{k}.png" for k in range(12)])
    original = InboxRun.stage
    refused = threading.Event()

    def held_stage(self, files):
        refused.wait(300)  # hold the lock until the other run has collided with it (however slow)
        return original(self, files)

    monkeypatch.setattr(InboxRun, "stage", held_stage)
    results, states, barrier = [], [], threading.Barrier(2)

    def one():
        barrier.wait()
        state = inbox_flow(pipeline=str(path), return_state=True)
        result = state.result()
        results.append(result)
        states.append(state)
        if result.get("skipped") == "busy":
            refused.set()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(r.get("skipped") or "ran" for r in results) == ["busy", "ran"]
    assert sum(r["new_files"] for r in results) == len(names)
    counts = collections.Counter(ledger_paths(p))
    assert sorted(counts) == sorted(names) and set(counts.values()) == {1}
    # The overlap is no failure: the busy run, its task and its logs say so without an error.
    busy = next(s for s, r in zip(states, results) if r.get("skipped") == "busy")
    assert busy.is_completed() and busy.message == "skipped: busy"
    run_id = busy.state_details.flow_run_id
    assert [t.state.name for t in _task_runs(run_id)] == ["Completed"]
    logs = _flow_run_logs(run_id, "skipped: Inbox")
    assert any("is in use by process" in entry.message for entry in logs), [e.message for e in logs]
    assert not [entry.message for entry in logs if entry.level >= logging.ERROR]


def _task_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _flow_run_logs(flow_run_id, needle: str, timeout: float = 120.0) -> list:
    """The log entries of a flow run (its tasks' included), once one says `needle` (logs ship late)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if any(needle in entry.message for entry in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def test_the_state_message_counts_every_file_refused(line, tmp_path):
    """Files scoring cannot decode, and entries refused unopened (a link): the one-line state
    message, what the UI and a scheduler show, counts both."""
    from flows.inbox import inbox_flow

    path, inbox, p = make_line(line, tmp_path)
    drop(line, inbox, ["a.png", "b.png", "c.png"])
    (inbox / "empty.png").write_bytes(b"")
    os.symlink(inbox / "a.png", inbox / "link.png")
    state = inbox_flow(pipeline=str(path), return_state=True)
    result = state.result()
    assert state.is_completed() and result["refused"] == 1, result["rejected"]
    assert re.fullmatch(r"\d/3 flagged, 1 unreadable, 1 refused, drift: (none|warning)", state.message), state.message
    assert sorted(ledger_paths(p)) == ["a.png", "b.png", "c.png", "empty.png", "link.png"]


def test_failed_run_then_good_run_loses_nothing(line, tmp_path, monkeypatch):
    from anomaly_ae.errors import DataError
    from anomaly_ae.inbox import InboxRun
    from flows.entry import inbox as run_inbox

    path, inbox, p = make_line(line, tmp_path)
    names = drop(line, inbox, ["e1.png", "e2.png", "e3.png"])

    def broken_commit(self, staged):
        raise DataError("disk full (simulated)")

    with monkeypatch.context() as m:
        m.setattr(InboxRun, "commit", broken_commit)
        with pytest.raises(DataError, match="simulated"):
            run_inbox(str(path))
    assert ledger_paths(p) == []
    assert not (p.inbox_state_dir / "runs").exists() or not any((p.inbox_state_dir / "runs").iterdir())
    more = drop(line, inbox, ["e4.png"], start=5)
    r = run_inbox(str(path))
    assert r["state"] == "Completed" and sorted(r["files"]) == sorted(names + more)
    assert sorted(ledger_paths(p)) == sorted(names + more)


def test_a_report_left_unbuilt_is_built_by_the_next_run(line, tmp_path):
    """A run interrupted between its commit and its report (Ctrl-C, a crash) has its files in the
    ledger, so no later run scores them again: the next run builds the missing report."""
    from flows.entry import inbox as run_inbox

    path, inbox, p = make_line(line, tmp_path, report=True)
    drop(line, inbox, ["r1.png", "r2.png"])
    first = run_inbox(str(path))
    report = Path(first["run_dir"]) / "report.html"
    assert report.exists()
    report.unlink()  # as if the run had been interrupted after its commit
    again = run_inbox(str(path))
    assert again["new_files"] == 0 and report.exists()
    assert sorted(ledger_paths(p)) == ["r1.png", "r2.png"]


def _wait_for(predicate, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"not done within {timeout} s")


def _inbox_runs(deployment: str) -> list:
    """The flow runs of an inbox deployment, through the Prefect API this process is pointed at."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except Exception:  # not deployed yet
            return []
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def test_served_inbox_runs_when_files_arrive_and_scores_each_once(line, tmp_path, monkeypatch):
    """`serve` with a 2-second inbox interval: empty checks start no flow runs; each arrival is
    scored once, by a run started because it arrived."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import local_server

    path, inbox, p = make_line(line, tmp_path, schedule=[{"flow": "inbox", "interval": 2}])
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}), local_server() as url:
        env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "prefect-home")}
        code = f"from flows.serve import serve; serve({str(path)!r}, poll_seconds=1)"
        log = open(tmp_path / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[2])
        deployment = "inbox-scoring/line-t-inbox"
        try:
            from prefect.client.orchestration import get_client

            def deployed() -> bool:
                with get_client(sync_client=True) as client:
                    try:
                        return client.read_deployment_by_name(deployment) is not None
                    except Exception:
                        return False

            _wait_for(deployed, 600)
            time.sleep(8)  # four empty checks
            assert _inbox_runs(deployment) == []
            first = drop(line, inbox, ["f1.png", "f2.png"])
            startup = _wait_for(lambda: sorted(ledger_paths(p)) == first, 300)
            second = drop(line, inbox, ["g1.png"], start=3)
            latency = _wait_for(lambda: sorted(ledger_paths(p)) == sorted(first + second), 300)
            print(f"first drop scored {startup:.1f} s after it arrived; second drop {latency:.1f} s after it")
            _wait_for(lambda: all(r.state.is_final() for r in _inbox_runs(deployment)), 120)
            time.sleep(6)  # more empty checks after the arrivals
            runs = _inbox_runs(deployment)
        except AssertionError:
            log.flush()
            print((tmp_path / "serve.log").read_text()[-4000:])
            raise
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    assert set(collections.Counter(ledger_paths(p)).values()) == {1}
    assert 2 <= len(runs) <= 3 and all(r.state.name == "Completed" for r in runs)  # one per arrival
    assert not any((r.state.message or "").startswith("no new files") for r in runs)


def test_the_serving_servers_ui_talks_to_that_server(monkeypatch):
    """`serve` starts its own Prefect server when none is configured; the UI it serves must be wired
    to that server's API (its /ui-settings), not to the default port."""
    import json
    import urllib.parse
    import urllib.request

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import local_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}), local_server() as url:
        with urllib.request.urlopen(url.removesuffix("/api") + "/ui-settings", timeout=30) as response:
            settings = json.loads(response.read())
    # The port is the OS's pick (ephemeral, never the default); compare the port itself, since a
    # pick such as 42007 contains the text ":4200".
    assert settings["api_url"] == url and urllib.parse.urlsplit(url).port != 4200


def test_a_user_error_on_a_run_is_one_line_not_a_traceback(line, tmp_path):
    """A run that fails on bad data or settings (here: its inbox folder is gone) ends Failed with the
    message, and its logs hold that line without a traceback."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.inbox import inbox_flow

    path, inbox, p = make_line(line, tmp_path)
    inbox.rmdir()
    state = inbox_flow(pipeline=str(path), return_state=True)
    assert state.is_failed() and "does not exist or is not a folder" in state.message
    deadline, messages = time.monotonic() + 120, []
    while time.monotonic() < deadline and not any("does not exist" in m for m in messages):
        time.sleep(0.5)
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        messages = [entry.message for entry in logs]
    assert any("does not exist or is not a folder" in m for m in messages), messages
    assert not any("Traceback" in m for m in messages), messages
