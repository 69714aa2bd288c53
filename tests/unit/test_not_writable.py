"""An output folder this user may not write (a read-only mount, another user's folder): one line,
exit code 2, the folder named, nothing written; a file the command only reads is not blamed.

One test mounts a real read-only folder (in a user and mount namespace) and runs the command line,
where that is possible; the others make the writes fail through a mock.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anomaly_ae import steps
from anomaly_ae.diskfull import raise_if_not_writable
from anomaly_ae.errors import NotWritableError
from tests.conftest import noise_workspace


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    return noise_workspace(tmp_path_factory.mktemp("ro"))


def refuse_writes_in(folder: Path, monkeypatch, code: int = errno.EACCES) -> None:
    """Creating a folder or opening a file for writing inside `folder` fails with `code`."""
    mkdir, open_ = Path.mkdir, os.open

    def inside(p) -> bool:
        return Path(os.path.abspath(p)).parent == folder

    def fake_mkdir(self, *args, **kwargs):
        if inside(self):
            raise OSError(code, os.strerror(code), str(self))
        return mkdir(self, *args, **kwargs)

    def fake_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), str(path))
        return open_(path, flags, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "open", fake_open)


def test_ingest_into_a_folder_that_is_not_writable(work, tmp_path, monkeypatch):
    refuse_writes_in(tmp_path, monkeypatch)
    with pytest.raises(NotWritableError, match=f"Cannot write {tmp_path / 'ds'}: {tmp_path} is not writable by this "
                                               "user; nothing was written"):
        steps.ingest(str(work["input"]), tmp_path / "ds")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_score_into_a_read_only_folder_names_the_run_folder(work, tmp_path, monkeypatch):
    refuse_writes_in(tmp_path, monkeypatch, errno.EROFS)
    with pytest.raises(NotWritableError, match=f"Run folder {tmp_path / 'run'}: cannot take its lock .*"
                                               f"{tmp_path} is on a read-only file system; nothing was written"):
        steps.score(work["input"], work["model"], tmp_path / "run", report=False, device="cpu")


def test_calibrating_a_model_on_a_read_only_mount(work, tmp_path, monkeypatch):
    model = tmp_path / "m"
    shutil.copytree(work["model"], model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    refuse_writes_in(tmp_path, monkeypatch, errno.EROFS)
    with pytest.raises(NotWritableError, match=f"Model folder {model}: .* read-only file system"):
        steps.calibrate(model, target_fpr=0.2)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_a_file_the_command_reads_is_not_blamed(tmp_path):
    """Only errors about the output (itself, inside it, folders above it, its own hidden temporary
    and lock beside it) are told as 'cannot write'; any other stays what it was."""
    out = tmp_path / "run"
    for name in (out, out / "scores.parquet", tmp_path, tmp_path / ".run.tmp-1", tmp_path / ".run.lock"):
        with pytest.raises(NotWritableError, match="nothing was written"):
            raise_if_not_writable(PermissionError(errno.EACCES, "Permission denied", str(name)), out)
    for name in (tmp_path / "images" / "a.png", tmp_path / "model" / "model.pt", tmp_path / ".other.lock"):
        raise_if_not_writable(PermissionError(errno.EACCES, "Permission denied", str(name)), out)  # no raise
    raise_if_not_writable(PermissionError(errno.EACCES, "Permission denied"), out)  # no file named: no raise
    raise_if_not_writable(OSError(errno.EIO, "I/O error", str(out)), out)  # another error


def _read_only_works(folder: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    folder.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind '{folder}' '{folder}' && "
                            f"mount -o remount,ro,bind '{folder}' && touch '{folder}/probe'"], capture_output=True)
    return probe.returncode != 0 and b"Read-only file system" in probe.stderr


DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys
    exe, ro, work = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = {
        "ingest": ["ingest", f"{work}/imgs", "--out", f"{ro}/ds"],
        "train": ["train", f"{work}/ds", "--out", f"{ro}/m", "--epochs", "1", "--allow-collapsed", "--device", "cpu"],
        "score": ["score", f"{work}/imgs", "--model", f"{work}/model", "--out", f"{ro}/run", "--device", "cpu"],
        "export": ["export", f"{work}/model", "--out", f"{ro}/exported"],
        "calibrate": ["calibrate", f"{ro}/model", "--target-fpr", "0.2"],
    }
    out = {}
    for name, args in runs.items():
        p = subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
        out[name] = {"rc": p.returncode, "stderr": p.stderr, "left": sorted(os.listdir(ro))}
    print(json.dumps(out))
""")


def test_commands_on_a_real_read_only_mount(work, tmp_path):
    """ingest, train, score, export and calibrate with their output on a read-only mount: one
    line naming the folder, exit code 2, no traceback, the mount as it was."""
    ro = tmp_path / "ro"
    if not _read_only_works(ro):
        pytest.skip("cannot mount a read-only folder here (needs unshare and user namespaces)")
    shutil.copytree(work["model"], ro / "model")
    exe = Path(sys.executable).with_name("anomaly-ae")
    script = (f"mount --bind '{ro}' '{ro}' && mount -o remount,ro,bind '{ro}' && "
              f"exec '{sys.executable}' -c \"$0\" \"$@\"")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, DRIVER, str(exe), str(ro), str(work["root"])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name, r in json.loads(proc.stdout).items():
        assert r["rc"] == 2, f"{name}: {r['stderr']}"
        assert "is on a read-only file system; nothing was written" in r["stderr"], f"{name}: {r['stderr']}"
        assert "Traceback" not in r["stderr"] and len(r["stderr"].strip().splitlines()) == 1, r["stderr"]
        assert r["left"] == ["model"], f"{name} left {r['left']}"
