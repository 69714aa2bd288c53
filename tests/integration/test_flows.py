"""The pipeline flows end to end: the shipped demo, cached reruns, forced reruns, artifacts,
forwarded logs and the Dask task runner."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import write_pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-5  # scores computed in other processes or batchings agree to this relative tolerance


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The shipped demo pipeline, with tiny training settings and outputs in a temporary folder."""
    doc = tomllib.loads((ROOT / "pipelines" / "mnist-demo.toml").read_text())
    doc["output"] = {"folder": str(tmp_path_factory.mktemp("demo") / "out")}
    doc.pop("model", None)
    doc.pop("train", None)
    return write_pipeline(tmp_path_factory.mktemp("pipelines") / "mnist-demo.toml", doc)


@pytest.fixture(scope="module")
def first_run(demo) -> dict:
    from flows.entry import run

    return run(str(demo))


def _flow_run_logs(flow_run_id: str, needle: str, timeout: float = 120.0) -> list[str]:
    """Messages of a flow run's logs (waiting, with a generous ceiling, for the asynchronous log shipping)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        messages = [log.message for log in logs]
        if any(needle in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def _task_runs(flow_run_id: str) -> dict[str, tuple]:
    """{task name: (state name, state message, task run id, ids of the task runs it waited for)}."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: (r.state.name, r.state.message, r.id,
                                       {i.id for i in r.task_inputs.get("wait_for", [])}) for r in runs}


def test_demo_pipeline_end_to_end(first_run):
    from prefect.artifacts import Artifact

    r = first_run
    assert r["state"] == "Completed" and r["completed"]
    assert r["dataset"]["cached"] is False and r["model"]["cached"] is False
    score = r["score"]
    assert score["scored"] == 1500  # the bundled sample's test split
    assert score["auroc"] > 0.7  # digit 0 against the rest, even with a two-epoch toy model
    run_dir = Path(score["run"])
    assert (run_dir / "scores.parquet").exists() and (run_dir / "flagged.csv").exists()
    assert score["artifacts"] == {"summary": "mnist-demo-batch-summary", "flagged": "mnist-demo-batch-flagged",
                                  "report": "mnist-demo-batch-report"}
    summary = Artifact.get("mnist-demo-batch-summary")
    assert summary is not None and "threshold" in summary.data and run_dir.as_uri() in summary.data
    table = Artifact.get("mnist-demo-batch-flagged")
    assert table is not None and table.type == "table"


def test_a_run_tells_what_it_did_in_its_logs_state_and_tags(first_run):
    """One line of facts per step in the run's logs, the run's finding in its final state's message,
    and the pipeline's name and flagged / clean in its tags."""
    from prefect.client.orchestration import get_client

    score = first_run["score"]
    messages = _flow_run_logs(first_run["flow_run_id"], "scored 1500 items")
    facts = {m.split(" ", 1)[0]: m for m in messages if m.split(" ", 1)[0] in ("ingested", "trained", "scored")}
    assert set(facts) == {"ingested", "trained", "scored"}, messages
    assert facts["ingested"].startswith("ingested 5000 images 28x28x1 of 10 classes")
    assert "0 rejected" in facts["ingested"]
    assert " epochs (" in facts["trained"] and "calibration images" in facts["trained"]
    assert f"{score['flagged']}/1500 flagged, 0 unreadable" in facts["scored"] and "AUROC" in facts["scored"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(first_run["flow_run_id"])
    assert run.state.message.startswith(f"{score['flagged']}/1500 flagged, 0 unreadable, drift: ")
    assert first_run["message"] == run.state.message  # what the command line prints after the state
    assert {"mnist-demo", "flagged" if score["flagged"] else "clean"} <= set(run.tags)


def test_rerun_skips_finished_work_and_force_redoes_it(first_run, demo):
    from flows.entry import run

    again = run(str(demo))
    assert again["state"] == "Completed"
    assert again["dataset"]["cached"] is True and again["model"]["cached"] is True
    assert again["score"]["run"] != first_run["score"]["run"]  # every run scores into a new folder
    assert again["score"]["auroc"] == pytest.approx(first_run["score"]["auroc"])
    messages = _flow_run_logs(again["flow_run_id"], "skipped training")
    assert any("skipped training" in m for m in messages)  # the library's log, forwarded to Prefect
    assert any(m.startswith("skipped ingest: ") and "up to date" in m for m in messages)
    # The graph: each task waits for the one before; the steps that found their work done say so.
    states = _task_runs(again["flow_run_id"])
    assert {n: states[n][0] for n in ("ingest", "train", "calibrate")} == {n: "Skipped" for n in
                                                                          ("ingest", "train", "calibrate")}
    assert states["train"][1] == "skipped: the data and settings are unchanged" and states["score"][0] == "Completed"
    for before, after in (("ingest", "train"), ("train", "calibrate"), ("calibrate", "score"), ("score", "report")):
        assert states[before][2] in states[after][3], f"{after} does not wait for {before}"
    forced = run(str(demo), force=True)
    assert forced["dataset"]["cached"] is False and forced["model"]["cached"] is False


def test_artifacts_link_to_the_console_over_http(first_run, demo, tmp_path):
    """With [output] console_url, the artifacts open the console (run page, report, thumbnails of the
    top flagged items), and those links resolve in the console serving the output folder."""
    import re

    from prefect.artifacts import Artifact
    from starlette.testclient import TestClient

    from anomaly_ae.ui.app import create_app
    from flows.pipeline import score_batch_flow

    doc = tomllib.loads(Path(demo).read_text())
    doc["output"]["console_url"] = "http://inspection-pc:8765"
    linked = write_pipeline(tmp_path / "mnist-demo.toml", doc)
    result = score_batch_flow(pipeline=str(linked))
    summary = Artifact.get("mnist-demo-batch-summary").data
    assert "file://" not in summary
    thumbs = re.findall(r"!\[[^\]]*\]\((http://inspection-pc:8765/runs/[0-9a-f]{12}/thumb/[^)]+)\)", summary)
    assert len(thumbs) == min(5, result["flagged"]) and thumbs
    link = re.fullmatch(r"\[[^\]]+\]\((.+)\)", Artifact.get("mnist-demo-batch-report").data).group(1)
    assert link.startswith("http://inspection-pc:8765/runs/") and link.endswith("/files/report.html")
    console = TestClient(create_app([Path(doc["output"]["folder"])]))
    for url in [link, *thumbs, re.search(r"Run: \[[^\]]+\]\(([^)]+)\)", summary).group(1)]:
        r = console.get(url.removeprefix("http://inspection-pc:8765"))
        assert r.status_code == 200, url


def test_reviewed_false_alarms_raise_the_threshold_of_the_next_run(first_run, demo, tmp_path):
    """[review] calibrate: a false alarm reviewed in a run joins the calibration normals at the next
    pipeline run (whose calibrate task then runs), and a run after that has nothing new to add."""
    import shutil

    import pyarrow.parquet as pq

    from anomaly_ae import reviews, steps
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.pipeline import load_pipeline
    from flows.entry import run as run_pipeline

    doc = tomllib.loads(Path(demo).read_text())
    doc["review"] = {"calibrate": True}
    path = write_pipeline(tmp_path / "mnist-demo.toml", doc)
    p = load_pipeline(path)
    before = AutoencoderDetector.load(p.model_dir)
    # A run of the pipeline's at a loose operating point: normal digits among the flagged.
    run_dir = p.runs_dir / "loose-run"
    steps.score(p.dataset_dir, p.model_dir, run_dir, split="test", target_fpr=0.3, report=False)
    rows = pq.read_table(run_dir / "scores.parquet").to_pylist()
    false_alarms = sorted((r for r in rows if r["flagged"] and not r["is_anomaly"]), key=lambda r: -r["score"])[:2]
    assert false_alarms, "the demo model flags no normal digit"
    for r in false_alarms:
        reviews.record(run_dir, r["image_id"], reviews.FALSE_ALARM)
    try:
        second = run_pipeline(str(path))
        assert second["calibrate"]["cached"] is False and second["calibrate"]["reviewed_false_alarms"] == len(false_alarms)
        after = AutoencoderDetector.load(p.model_dir)
        assert len(after.calibration_scores_) == len(before.calibration_scores_) + len(false_alarms)
        assert after.threshold_ >= before.threshold_
        third = run_pipeline(str(path))
        assert third["calibrate"]["cached"] is True
    finally:  # the module's other tests share the model and its runs
        shutil.rmtree(run_dir)
        steps_calibrate_back(p.model_dir, before)


def steps_calibrate_back(model_dir: Path, before) -> None:
    """Put the model's calibration back as it was before reviews were added."""
    from anomaly_ae.detector import AutoencoderDetector

    det = AutoencoderDetector.load(model_dir)
    det.meta_.pop("reviewed_false_alarms", None)
    det.meta_.pop("calibration_base", None)
    det.calibrate_scores(before.calibration_scores_, before.threshold_info_["target_fpr"])
    det.threshold_info_["source"] = before.threshold_info_["source"]
    det.save(model_dir)


def test_dask_runner_gives_the_same_scores(first_run, demo):
    from anomaly_ae import steps
    from anomaly_ae.pipeline import batch_input, load_pipeline
    from flows.pipeline import score_batch_flow

    fanned = score_batch_flow(pipeline=str(demo), task_runner="dask", partitions=3)
    p = load_pipeline(demo)
    source, split = batch_input(p)
    single = steps.score(source, p.model_dir, p.output / "single", split=split, report=False)
    a = pq.read_table(Path(fanned["run"]) / "scores.parquet").sort_by("image_id")
    b = pq.read_table(Path(single["run"]) / "scores.parquet").sort_by("image_id")
    assert a["image_id"].equals(b["image_id"])
    # Float32 scores depend on batch composition and the CPU's kernels: equal within RTOL, and
    # flagged alike except where a score lies within that tolerance of the threshold.
    sa, sb = a["score"].to_numpy(), b["score"].to_numpy()
    np.testing.assert_allclose(sa, sb, rtol=RTOL, atol=0)
    threshold = single["threshold"]
    borderline = np.abs(sb - threshold) <= RTOL * abs(threshold)
    fa, fb = a["flagged"].to_numpy(zero_copy_only=False), b["flagged"].to_numpy(zero_copy_only=False)
    assert np.array_equal(fa[~borderline], fb[~borderline])
    assert abs(fanned["flagged"] - single["flagged"]) <= borderline.sum()


def test_dask_runner_scores_a_folder_like_one_process(first_run, demo, mnist_folder):
    """Folder partitions decode inside Dask's (daemonic) workers, where no process pool may start."""
    from anomaly_ae import steps
    from anomaly_ae.pipeline import load_pipeline
    from flows.pipeline import score_batch_flow

    fanned = score_batch_flow(pipeline=str(demo), input=str(mnist_folder), task_runner="dask", partitions=2)
    p = load_pipeline(demo)
    single = steps.score(mnist_folder, p.model_dir, p.output / "single-folder", report=False)
    a = pq.read_table(Path(fanned["run"]) / "scores.parquet")
    b = pq.read_table(Path(single["run"]) / "scores.parquet")
    assert a.num_rows == 1500 and a["image_id"].equals(b["image_id"])
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=1e-6)


def test_bad_pipeline_file_fails_before_any_run(tmp_path):
    from anomaly_ae.errors import ConfigError
    from flows.entry import run

    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nsource = "sample:mnist5k"\nnormall = ["0"]\n')
    with pytest.raises(ConfigError, match=r"bad.toml \[data\]: unknown key 'normall' \(did you mean 'normal'\?\)"):
        run(str(bad))
    with pytest.raises(ConfigError, match="task-runner must be one of local, dask"):
        run(str(ROOT / "pipelines" / "mnist-demo.toml"), task_runner="ray")


def test_temporary_server_that_does_not_start_is_a_clear_error(demo, monkeypatch):
    """No server configured and Prefect's temporary one never answers: one exit-2 error, after
    waiting long enough for a loaded machine (not Prefect's 20 s), and no stray server process."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from anomaly_ae.errors import AnomalyAEError
    from flows.entry import run
    from flows.tempserver import PrefectServerError

    waited, stopped = [], []

    def never_answers(self, timeout=None):
        waited.append(timeout)
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(SubprocessASGIServer, "_instances", {})  # not the test harness's server
    monkeypatch.setattr(SubprocessASGIServer, "start", never_answers)
    monkeypatch.setattr(SubprocessASGIServer, "stop", lambda self: stopped.append(self))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(PrefectServerError, match=r"temporary Prefect server did not answer within 180 s"):
            run(str(demo))
    assert issubclass(PrefectServerError, AnomalyAEError)  # the CLI prints it in one line, exit code 2
    assert waited == [180] and len(stopped) == 1


def test_temporary_server_is_started_once_and_shared(monkeypatch):
    """Every client of the process (flow engine, logs, events, artifacts) uses the one server."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.tempserver import ensure_temporary_server

    starts = []

    def fake_start(self, timeout=None):
        starts.append(timeout)
        self.running, self.port = True, 1

    monkeypatch.setattr(SubprocessASGIServer, "_instances", {})
    monkeypatch.setattr(SubprocessASGIServer, "start", fake_start)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert ensure_temporary_server() == "http://127.0.0.1:1/api"
        assert ensure_temporary_server() == "http://127.0.0.1:1/api"
        assert SubprocessASGIServer().api_url == "http://127.0.0.1:1/api"
    assert len(starts) == 1
    assert ensure_temporary_server() is None  # a configured server (the test harness's) is used as is


def _no_server_start(monkeypatch) -> list:
    """Make the temporary server's start a stand-in that never answers; returns its calls."""
    from prefect.server.api.server import SubprocessASGIServer

    starts = []

    def never_answers(self, timeout=None):
        starts.append(timeout)
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(SubprocessASGIServer, "_instances", {})  # not the test harness's server
    monkeypatch.setattr(SubprocessASGIServer, "start", never_answers)
    monkeypatch.setattr(SubprocessASGIServer, "stop", lambda self: None)
    return starts


def test_a_prefect_home_that_cannot_be_made_fails_at_once(monkeypatch, tmp_path):
    """No server configured and no folder for the temporary server's database (a service account
    without a home): one error naming the folder and PREFECT_HOME, before any server starts,
    not a wait for one that can only exit."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.tempserver import PrefectServerError, ensure_temporary_server

    starts = _no_server_start(monkeypatch)
    (tmp_path / "a-file").write_text("")
    homes = {tmp_path / "no-such" / "x" / ".prefect": r"cannot be created \(its folder .*no-such/x does not exist\)",
             tmp_path / "a-file": "does not exist or is not a folder"}
    for home, why in homes.items():
        with temporary_settings(updates={PREFECT_HOME: str(home)},
                                restore_defaults={PREFECT_API_URL, PREFECT_API_DATABASE_CONNECTION_URL}):
            with pytest.raises(PrefectServerError, match=rf"The Prefect home {home} {why}; .* Set PREFECT_HOME"):
                ensure_temporary_server()
    assert not (tmp_path / "no-such").exists() and starts == []
    elsewhere = tmp_path / "gone" / "prefect.db"
    with temporary_settings(updates={PREFECT_HOME: str(tmp_path / "home"),
                                     PREFECT_API_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{elsewhere}"},
                            restore_defaults={PREFECT_API_URL}):
        with pytest.raises(PrefectServerError, match=r"The Prefect database folder .*gone does not exist"):
            ensure_temporary_server()
    assert starts == []
    with temporary_settings(updates={PREFECT_HOME: str(tmp_path / "home")},
                            restore_defaults={PREFECT_API_URL, PREFECT_API_DATABASE_CONNECTION_URL}):
        with pytest.raises(PrefectServerError, match="did not answer"):  # a home that can be made: the server starts
            ensure_temporary_server()
    assert (tmp_path / "home").is_dir() and len(starts) == 1


def test_a_server_that_keeps_exiting_at_startup_is_given_up(monkeypatch):
    """Prefect starts a server that exits with code 3 again, on another port; after a few starts
    the command gives up rather than wait out the timeout."""
    from flows.tempserver import MAX_STARTS, PrefectServerError, _WatchedSubprocess

    class Real:
        def Popen(self, args, *rest, **kwargs):  # noqa: N802
            return args

    watched = _WatchedSubprocess(Real())
    for _ in range(MAX_STARTS):
        watched.Popen(["python", "-m", "uvicorn"])
    with pytest.raises(PrefectServerError, match=rf"exited at startup {MAX_STARTS} times"):
        watched.Popen(["python", "-m", "uvicorn"])


def test_an_inbox_run_of_a_pipeline_without_inbox_fails_before_any_run(tmp_path, monkeypatch):
    """No [inbox] table: the one-line error at once, before the server or a flow run starts."""
    import flows.inbox
    import flows.tempserver
    from anomaly_ae.errors import ConfigError
    from flows.entry import inbox

    def must_not_start(*args, **kwargs):
        raise AssertionError("started before the pipeline file was checked")

    monkeypatch.setattr(flows.tempserver, "ensure_temporary_server", must_not_start)
    monkeypatch.setattr(flows.inbox, "inbox_flow", must_not_start)
    path = write_pipeline(tmp_path / "p.toml", {"pipeline": {"name": "p"},
                                                "data": {"source": "sample:digits", "normal": ["0"]},
                                                "output": {"folder": str(tmp_path / "out")}})
    with pytest.raises(ConfigError, match=r"p.toml: no \[inbox\] table; add one with folder"):
        inbox(str(path))
    assert not (tmp_path / "out").exists()


def test_missing_inbox_fails_before_any_work(tmp_path):
    """Every path the pipeline names is checked first: no ingest, no training, exit code 2."""
    import subprocess
    import sys

    from anomaly_ae.errors import DataError
    from flows.entry import inbox, run

    out = tmp_path / "out"
    path = write_pipeline(tmp_path / "p.toml", {
        "pipeline": {"name": "p"}, "data": {"source": "sample:digits", "normal": ["0"]},
        "output": {"folder": str(out)}, "inbox": {"folder": str(tmp_path / "no-such-inbox")}})
    with pytest.raises(DataError, match=r"p.toml: \[inbox\] folder .*no-such-inbox does not exist"):
        inbox(str(path))
    assert not out.exists()  # nothing was ingested or trained
    proc = subprocess.run([str(Path(sys.executable).with_name("anomaly-ae")), "inbox", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "[inbox] folder" in proc.stderr and "Traceback" not in proc.stderr
    missing = write_pipeline(tmp_path / "q.toml", {
        "pipeline": {"name": "q"}, "data": {"source": str(tmp_path / "no-such-source"), "normal": ["good"]},
        "output": {"folder": str(out)}})
    with pytest.raises(DataError, match=r"q.toml: \[data\] source .*no-such-source does not exist"):
        run(str(missing))
    (tmp_path / "a-file").write_text("")
    blocked = write_pipeline(tmp_path / "r.toml", {
        "pipeline": {"name": "r"}, "data": {"source": "sample:digits", "normal": ["0"]},
        "output": {"folder": str(tmp_path / "a-file" / "out")}})
    with pytest.raises(DataError, match=r"a-file is in the way: a file where the pipeline needs the folder"):
        run(str(blocked))
    assert not out.exists()


def test_a_run_links_to_its_prefect_page_only_when_there_is_a_prefect_ui(monkeypatch):
    """Without a Prefect UI (the temporary server's case) Prefect still builds "None/flow-runs/...":
    no link is recorded then, rather than a dead one in run.json and the console."""
    from prefect.runtime import flow_run

    from flows.tasks import flow_run_links

    monkeypatch.setattr(flow_run, "ui_url", "None/flow-runs/flow-run/x", raising=False)
    assert flow_run_links() == {}
    monkeypatch.setattr(flow_run, "ui_url", "http://127.0.0.1:4200/flow-runs/flow-run/x", raising=False)
    assert flow_run_links() == {"flow_run_url": "http://127.0.0.1:4200/flow-runs/flow-run/x"}


def test_flow_runs_are_named_after_the_pipelines_name(monkeypatch, tmp_path):
    from prefect.runtime import flow_run

    from flows.pipeline import run_name

    path = tmp_path / "file-name.toml"
    path.write_text('[pipeline]\nname = "line-x"\n[data]\nsource = "sample:digits"\n')
    monkeypatch.setattr(flow_run, "parameters", {"pipeline": str(path)}, raising=False)
    assert run_name().startswith("line-x-")
    monkeypatch.setattr(flow_run, "parameters", {"pipeline": str(tmp_path / "gone.toml")}, raising=False)
    assert run_name().startswith("gone-")
