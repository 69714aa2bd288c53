"""A scoring run's record: one UTC run id shared by the run folder's name, run.json and the report,
and the merged tables ranked by score."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq

from anomaly_ae import steps
from tests.conftest import noise_workspace

RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def test_the_run_id_is_the_callers_or_a_new_utc_one(tmp_path):
    ws = noise_workspace(tmp_path)
    steps.score(ws["input"], ws["model"], tmp_path / "named", run_id="20261130T000000Z-abcdef", report=False)
    run = json.loads((tmp_path / "named" / "run.json").read_text())
    assert run["run_id"] == "20261130T000000Z-abcdef" and run["created"].endswith("+00:00")
    steps.score(ws["input"], ws["model"], tmp_path / "fresh", partitions=3, report=False)
    assert RUN_ID.fullmatch(json.loads((tmp_path / "fresh" / "run.json").read_text())["run_id"])
    table = pq.read_table(tmp_path / "fresh" / "scores.parquet")
    order = np.argsort(table["rank"].to_numpy())
    assert np.all(np.diff(table["score"].to_numpy()[order]) <= 0)  # rank 1 is the highest score


def test_the_command_lines_default_run_folder_is_named_by_the_runs_id(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    ws = noise_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["score", str(ws["input"]), "--model", str(ws["model"]), "--no-report"])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "data" / "runs").iterdir()
    run_id = json.loads((folder / "run.json").read_text())["run_id"]
    assert RUN_ID.fullmatch(run_id) and folder.name == f"imgs-{run_id}"
