"""Integration fixtures: one Prefect test harness for the session, and tiny pipelines.

Prefect's offline settings and a temporary PREFECT_HOME are set by tests/conftest.py, which pytest
loads first, before anything imports prefect.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Small enough to train in seconds on two CPU cores; orchestration is under test, not accuracy.
TINY = {
    "model": {"latent_dim": 16, "base_channels": 8, "max_channels": 32},
    "train": {"epochs": 2, "min_steps_per_epoch": 5, "batch_size": 32, "patience": 2, "allow_collapsed": True},
}


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, installed with .ci/chromium.sh when missing; skips when it cannot be."""
    import shutil
    import subprocess

    found = shutil.which("chromium")
    if found is None:
        subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / ".ci" / "chromium.sh")], check=False,
                       timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("Chromium is not installed and .ci/chromium.sh could not install it (needs root and apt-get)")
    return found


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (SQLite) shared by every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def toml_text(doc: dict) -> str:
    """A TOML document from nested dicts: tables, and arrays of tables for list-of-dict values."""
    from anomaly_ae.configfile import dump_toml

    plain = {k: v for k, v in doc.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
    text = dump_toml(plain)
    for key, value in doc.items():
        if key not in plain:
            for entry in value:
                text += f"\n[[{key}]]\n" + dump_toml(entry)
    return text


def write_pipeline(path: Path, doc: dict) -> Path:
    """Write a pipeline file (tiny model and training settings unless `doc` sets them)."""
    doc = {**doc, **{k: {**TINY[k], **doc.get(k, {})} for k in TINY}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_text(doc))
    return path
