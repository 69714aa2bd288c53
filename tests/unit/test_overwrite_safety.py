"""--overwrite and --force replace only a folder anomaly-ae wrote, of the kind the command writes.

Anything else named as --out (the input, the model in use, a dataset, a folder of the user's own
files) is refused with a message that says what it holds, and is left byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_ae import steps
from anomaly_ae.errors import DataError
from anomaly_ae.fsio import atomic_dir, folder_kind
from tests.conftest import TINY, noise_workspace


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A folder of images, its dataset, a model trained on it and a run folder, made once."""
    root = tmp_path_factory.mktemp("overwrite")
    paths = noise_workspace(root)
    steps.score(root / "imgs", root / "model", root / "run", report=False, device="cpu")
    return {**paths, "run": root / "run"}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder` (hidden ones too): file bytes, None for a folder."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), folder)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = Path(path).read_bytes()
    return out


def fresh_copies(work: dict[str, Path], foreign_names: list[str]) -> dict[str, Path]:
    """A new workspace: copies of the input, model, dataset and run, and a folder of the user's files."""
    base = Path(tempfile.mkdtemp(dir=work["root"], prefix="case-"))
    paths = {}
    for name in ("input", "model", "dataset", "run"):
        paths[name] = base / name
        shutil.copytree(work[name], paths[name])
    paths["foreign"] = base / "foreign"
    paths["foreign"].mkdir()
    for k, name in enumerate(foreign_names):
        (paths["foreign"] / name).write_bytes(f"the user's own file {k}".encode())
    return paths


# The user's own files: some named like anomaly-ae's own, and at least one that it never writes.
FOREIGN = st.lists(st.sampled_from(["run.json", "scores.parquet", "notes.txt", "photo.png", ".git",
                                    "model.pt", "images.parquet"]), min_size=1, unique=True).map(
    lambda names: names if any(n in ("notes.txt", "photo.png", ".git", "model.pt", "images.parquet")
                               for n in names) else [*names, "notes.txt"])


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["input", "model", "dataset", "foreign", "run"]),
       spelling=st.sampled_from(["plain", "dotted", "relative"]), foreign_names=FOREIGN)
def test_score_overwrite_replaces_only_a_run_folder(work, target, spelling, foreign_names):
    paths = fresh_copies(work, foreign_names)
    before = {name: snapshot(p) for name, p in paths.items()}
    out = paths[target]
    out = {"plain": out, "dotted": out.parent / "." / ".." / out.parent.name / out.name,
           "relative": Path(os.path.relpath(out))}[spelling]
    if target == "run":
        summary = steps.score(paths["input"], paths["model"], out, overwrite=True, report=False, device="cpu")
        assert summary["scored"] == 24 and folder_kind(paths["run"]) == "run"
        assert snapshot(paths["run"])["run.json"] != before["run"]["run.json"]  # replaced by the new run
    else:
        with pytest.raises(DataError, match="is not a run folder written by anomaly-ae: it holds"):
            steps.score(paths["input"], paths["model"], out, overwrite=True, report=False, device="cpu")
    for name, p in paths.items():
        if name != "run" or target != "run":
            assert snapshot(p) == before[name], f"{name} changed when scoring with --out {target} --overwrite"
    left = {n for n in os.listdir(paths["input"].parent) if not n.endswith(".lock")}
    assert left == set(before), "a temporary or another folder was left behind"


def test_messages_say_what_the_folder_holds(work):
    paths = fresh_copies(work, ["notes.txt"])
    for target, holds in [("input", "24 entries (img00.png, img01.png, img02.png, ...)"),
                          ("model", "a model folder"), ("dataset", "a dataset"), ("foreign", "1 entry (notes.txt)")]:
        with pytest.raises(DataError) as err:
            steps.score(paths["input"], paths["model"], paths[target], overwrite=True, report=False, device="cpu")
        assert f"it holds {holds}" in str(err.value)
    (paths["model"] / "onnx").mkdir()  # something put into a model folder is named first
    with pytest.raises(DataError, match="it holds a model folder's files and also onnx. Only a model folder"):
        steps.train(paths["dataset"], paths["model"], config=TINY, force=True)


def test_ingest_overwrite_onto_the_image_folder_is_refused(work):
    paths = fresh_copies(work, [])
    before = snapshot(paths["input"])
    with pytest.raises(DataError, match=r"is not a dataset written by anomaly-ae: it holds 24 entries"):
        steps.ingest(str(paths["input"]), paths["input"], overwrite=True)
    with pytest.raises(DataError, match="is not a dataset written by anomaly-ae: it holds a model folder"):
        steps.ingest(str(paths["input"]), paths["model"], force=True)
    assert snapshot(paths["input"]) == before
    with pytest.raises(DataError, match="out of date: it was ingested from"):  # another folder's dataset
        steps.ingest(str(paths["input"]), paths["dataset"], force=True)
    steps.ingest(str(paths["input"]), paths["dataset"], overwrite=True)  # a dataset is replaced
    assert folder_kind(paths["dataset"]) == "dataset"


def test_train_force_onto_the_image_folder_or_the_dataset_is_refused(work):
    paths = fresh_copies(work, [])
    before = {name: snapshot(p) for name, p in paths.items()}
    for target in ("input", "dataset", "run"):
        with pytest.raises(DataError, match="is not a model folder written by anomaly-ae: it holds"):
            steps.train(paths["dataset"], paths[target], config=TINY, force=True)
    assert {name: snapshot(p) for name, p in paths.items()} == before
    assert not list(paths["input"].parent.glob(".*.train-*.pt"))


def test_a_folder_of_the_right_kind_that_also_holds_user_files_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    for name in ("model.pt", "model.json", "thesis.tex"):
        (tmp_path / "out" / name).write_text(name)
    with pytest.raises(DataError, match=r"it holds a model folder.s files and also thesis.tex\. Only a model folder"), \
            atomic_dir(tmp_path / "out", overwrite=True, kind="model"):
        pass
    assert (tmp_path / "out" / "thesis.tex").read_text() == "thesis.tex"


def test_out_holding_what_the_command_reads_is_refused(tmp_path):
    """A run folder's own table given as the input (a .parquet path counts as a dataset)."""
    (tmp_path / "run").mkdir()
    for name in ("run.json", "scores.parquet", "examples.parquet"):
        (tmp_path / "run" / name).write_text(name)
    reads = tmp_path / "run" / "examples.parquet"
    with pytest.raises(DataError, match="would replace .*examples.parquet, which this command reads"), \
            atomic_dir(tmp_path / "run", overwrite=True, kind="run", protect=[reads]):
        pass
    assert reads.read_text() == "examples.parquet"


def test_cli_score_onto_its_input_exits_2_and_keeps_the_images(work):
    paths = fresh_copies(work, [])
    before = snapshot(paths["input"])
    exe = Path(sys.executable).with_name("anomaly-ae")
    proc = subprocess.run([str(exe), "score", str(paths["input"]), "--model", str(paths["model"]),
                           "--out", str(paths["input"]), "--overwrite", "--device", "cpu"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not a run folder written by anomaly-ae" in proc.stderr
    assert snapshot(paths["input"]) == before


def test_out_that_is_a_symbolic_link_is_refused_and_kept(work):
    """--out LINK (to a run folder, to nothing): the user's link is never replaced by a folder."""
    paths = fresh_copies(work, [])
    link, dangling = paths["run"].parent / "latest", paths["run"].parent / "dangling"
    link.symlink_to(paths["run"].name)
    dangling.symlink_to("nowhere")
    before = {name: snapshot(p) for name, p in paths.items()}
    for out, overwrite in [(link, True), (link, False), (dangling, True), (dangling, False)]:
        with pytest.raises(DataError, match=f"^{out} is a symbolic link \\(to {os.readlink(out)}\\), and a link is "
                                            "never replaced"):
            steps.score(paths["input"], paths["model"], out, overwrite=overwrite, report=False, device="cpu")
    with pytest.raises(DataError, match="is a symbolic link"):
        steps.ingest(str(paths["input"]), link, overwrite=True)
    assert os.readlink(link) == "run" and os.readlink(dangling) == "nowhere"
    assert {name: snapshot(p) for name, p in paths.items()} == before
    assert set(os.listdir(link.parent)) == {*before, "latest", "dangling"}


def test_a_symbolic_link_above_out_is_followed(work):
    paths = fresh_copies(work, [])
    (paths["run"].parent / "runs").symlink_to(paths["run"].parent)
    out = paths["run"].parent / "runs" / "run"
    summary = steps.score(paths["input"], paths["model"], out, overwrite=True, report=False, device="cpu")
    assert summary["scored"] == 24 and folder_kind(paths["run"]) == "run"
    assert (paths["run"].parent / "runs").is_symlink()


def test_cli_out_dot_and_out_link_exit_2_without_a_traceback(work, tmp_path):
    """`--out .` (or a folder above it) is refused as the folder the command runs in (its full path
    named); `--out LINK --overwrite` as a link."""
    paths = fresh_copies(work, ["notes.txt"])
    (tmp_path / "latest").symlink_to(paths["run"])
    before = {name: snapshot(p) for name, p in paths.items()}
    exe = Path(sys.executable).with_name("anomaly-ae")
    for cwd, out, message in [(paths["foreign"], ".", f"{paths['foreign']} is the folder this command runs in"),
                              (paths["foreign"], "./", f"{paths['foreign']} is the folder this command runs in"),
                              (paths["foreign"], "..", f"{paths['foreign'].parent} is the folder this command runs in "
                                                       "(or holds it)"),
                              (tmp_path, "latest", f"latest is a symbolic link (to {paths['run']})")]:
        proc = subprocess.run([str(exe), "score", str(paths["input"]), "--model", str(paths["model"]), "--out", out,
                               "--overwrite", "--device", "cpu"], capture_output=True, text=True, cwd=cwd,
                              env={**os.environ, "COLUMNS": "300"})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert message in " ".join(proc.stderr.split()), proc.stderr
    assert {name: snapshot(p) for name, p in paths.items()} == before
    assert (tmp_path / "latest").is_symlink()
