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


def _flow_run_logs(flow_run_id: str, needle: str, timeout: float = 15.0) -> list[str]:
    """Messages of a flow run's logs (waiting for the asynchronous log shipping)."""
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


def test_rerun_skips_finished_work_and_force_redoes_it(first_run, demo):
    from flows.entry import run

    again = run(str(demo))
    assert again["state"] == "Completed"
    assert again["dataset"]["cached"] is True and again["model"]["cached"] is True
    assert again["score"]["run"] != first_run["score"]["run"]  # every run scores into a new folder
    assert again["score"]["auroc"] == pytest.approx(first_run["score"]["auroc"])
    messages = _flow_run_logs(again["flow_run_id"], "skipping training")
    assert any("skipping training" in m for m in messages)  # the library's log, forwarded to Prefect
    forced = run(str(demo), force=True)
    assert forced["dataset"]["cached"] is False and forced["model"]["cached"] is False


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
    np.testing.assert_array_equal(a["score"].to_numpy(), b["score"].to_numpy())
    assert a["flagged"].equals(b["flagged"]) and a["rank"].equals(b["rank"])
    assert fanned["flagged"] == single["flagged"]


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
