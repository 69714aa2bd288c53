"""Check every path a pipeline names before any work starts.

A flow run that finds a missing inbox only after ingest and training ran wastes minutes and
says nothing useful. `check_paths` looks at the folders the flow will read (the data source,
the batch input, the inbox) and the ones it will write (the dataset, model, runs and inbox
state under ``[output]``), and raises a DataError naming the table and key to fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from anomaly_ae.errors import ConfigError, DataError
from anomaly_ae.pipeline import Pipeline

FLOWS = ("pipeline", "inbox", "serve")


def check_paths(p: Pipeline, flow: str) -> None:
    """Check the paths that `flow` ("pipeline", "inbox" or "serve") reads and writes.

    Raises:
        ConfigError: an inbox run of a pipeline that has no [inbox] table.
        DataError: a folder to read does not exist, or a folder to write cannot be created.
    """
    assert flow in FLOWS, flow
    if flow == "inbox":
        require_inbox(p)
    reads_inbox = flow == "inbox" or (flow == "serve" and p.inbox is not None and bool(p.schedules_for("inbox")))
    runs_pipeline = flow == "pipeline" or (flow == "serve" and not reads_inbox) or (
        flow == "serve" and bool(p.schedules_for("pipeline")))
    if reads_inbox and p.inbox is not None:
        _must_be_folder(p, "[inbox] folder", p.inbox.folder, "create it, or fix folder in the pipeline's [inbox] table")
    # The source is read by every full run, and by an inbox run whose model is still to be trained.
    if runs_pipeline or not (p.model_dir / "model.pt").exists():
        _check_source(p)
    if runs_pipeline and p.batch.input:
        _must_exist(p, "[batch] input", p.batch.input)
    for folder in (p.output, p.dataset_dir, p.model_dir, p.runs_dir, p.inbox_state_dir):
        _creatable(p, Path(folder))


def require_inbox(p: Pipeline) -> None:
    """Raise ConfigError when the pipeline has no [inbox] table (an inbox run has nothing to read)."""
    if p.inbox is None:
        raise ConfigError(f"{p.path}: no [inbox] table; add one with folder = \"...\" to score an inbox.")


def _check_source(p: Pipeline) -> None:
    source = p.data.source
    if source.startswith(("sample:", "torchvision:")):
        if p.data.root and Path(p.data.root).exists() and not Path(p.data.root).is_dir():
            raise DataError(f"{p.path}: [data] root {p.data.root} is not a folder; fix root in the [data] table.")
        return
    _must_be_folder(p, "[data] source", source, "fix source in the pipeline's [data] table")


def _must_be_folder(p: Pipeline, key: str, folder: str | Path, fix: str) -> None:
    if not Path(folder).is_dir():
        raise DataError(f"{p.path}: {key} {folder} does not exist or is not a folder; {fix}.")


def _must_exist(p: Pipeline, key: str, path: str | Path) -> None:
    if not Path(path).exists():
        raise DataError(f"{p.path}: {key} {path} does not exist or is not a folder; fix input in the [batch] table.")


def _creatable(p: Pipeline, folder: Path) -> None:
    """`folder` is a folder, or can be made one: its nearest existing ancestor is a writable folder."""
    ancestor = folder
    while not os.path.lexists(ancestor) and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if ancestor.is_dir():
        if ancestor != folder and not os.access(ancestor, os.W_OK | os.X_OK):
            raise DataError(f"{p.path}: cannot create {folder}: {ancestor} is not writable. "
                            "Fix its permissions, or choose another [output] folder.")
        return
    raise DataError(f"{p.path}: {ancestor} is in the way: a file where the pipeline needs the folder "
                    f"{folder}. Move it, or choose another [output] folder.")
