"""prefect.yaml as shipped: `prefect deploy --all` creates every deployment, the schedules whose data a
fresh checkout lacks are inactive, and a process worker runs a deployment to Completed."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.integration.conftest import write_pipeline

ROOT = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")
pytestmark = pytest.mark.usefixtures("prefect_harness")
POOL = "line-test-pool"  # not the default: the pool is named by the environment


def test_the_pool_defaults_to_local_process_in_the_project_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    view = subprocess.run([str(PREFECT), "config", "view", "--show-sources"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert view.returncode == 0, view.stderr
    assert "PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME='local-process' (from pyproject.toml)" in view.stdout


def test_deploy_all_then_a_worker_runs_the_demo(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import local_server

    doc = tomllib.loads((ROOT / "pipelines" / "mnist-demo.toml").read_text())
    doc["output"] = {"folder": str(tmp_path / "out")}
    doc["train"] = {"epochs": 2}
    tiny = write_pipeline(tmp_path / "mnist-demo.toml", doc)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}), local_server() as url:
        env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "prefect-home"),
               "PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME": POOL}

        def prefect(*args: str) -> str:
            proc = subprocess.run([str(PREFECT), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            return proc.stdout

        prefect("work-pool", "create", POOL, "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            deployed = {d.name: d for d in client.read_deployments()}
            assert set(deployed) == {"mnist-demo-pipeline", "fashion-mnist-pipeline", "line-a-inbox",
                                     "line-a-pipeline"}
            assert {d.work_pool_name for d in deployed.values()} == {POOL}
            for name in ("fashion-mnist-pipeline", "line-a-inbox", "line-a-pipeline"):
                assert deployed[name].schedules and not any(s.active for s in deployed[name].schedules), name
            prefect("deployment", "run", "anomaly-pipeline/mnist-demo-pipeline", "--param", f"pipeline={tiny}")
            prefect("worker", "start", "--pool", POOL, "--run-once")
            runs = client.read_flow_runs()
        (run,) = [r for r in runs if r.deployment_id == deployed["mnist-demo-pipeline"].id]
        assert run.state.is_completed(), (run.state.name, run.state.message)
        assert (tmp_path / "out" / "model" / "model.pt").exists() and any((tmp_path / "out" / "runs").iterdir())

