"""A full disk during ingest, train, calibrate, score or an inbox run: one clear message, nothing kept.

Most tests make the writes fail with ENOSPC through a mock; one fills a real, tiny tmpfs (in a
user and mount namespace) and runs the command line, where that is possible.
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

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from anomaly_ae import steps
from anomaly_ae.errors import NoSpaceError
from anomaly_ae.fsio import atomic_path
from tests.conftest import TINY, noise_workspace, write_png

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("full")
    return noise_workspace(root)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def assert_nothing_kept(folder: Path, expected: set[str]) -> None:
    """Only the `expected` entries (and lock files) are in `folder`: no output, no temporary."""
    assert {n for n in os.listdir(folder) if not n.endswith(".lock")} == expected


def test_ingest_on_a_full_disk(work, tmp_path, monkeypatch):
    monkeypatch.setattr(pq.ParquetWriter, "write_table", no_space)
    with pytest.raises(NoSpaceError, match=f"No space left on .* while writing {tmp_path / 'ds'}; nothing was kept"):
        steps.ingest(str(work["input"]), tmp_path / "ds")
    assert_nothing_kept(tmp_path, set())


def test_score_on_a_full_disk(work, tmp_path, monkeypatch):
    monkeypatch.setattr(pq.ParquetWriter, "write_table", no_space)
    with pytest.raises(NoSpaceError, match=f"while writing {tmp_path / 'run'}; nothing was kept"):
        steps.score(work["input"], work["model"], tmp_path / "run", report=False, device="cpu")
    assert_nothing_kept(tmp_path, set())


def test_a_report_that_finds_no_space_keeps_the_scores_and_says_so_in_a_line(work, tmp_path, monkeypatch, caplog):
    import logging

    from anomaly_ae import fsio

    write = fsio.atomic_write_text

    def full(path, *args, **kwargs):  # the disk fills up as the report is written, after the tables
        if Path(path).name != "report.html":
            return write(path, *args, **kwargs)
        raise NoSpaceError(f"No space left on the device while writing {path}; nothing was kept.")

    monkeypatch.setattr(fsio, "atomic_write_text", full)
    with caplog.at_level(logging.WARNING):
        s = steps.score(work["input"], work["model"], tmp_path / "run", device="cpu")
    assert s["report"] is None and (tmp_path / "run" / "scores.parquet").exists()
    said = [r for r in caplog.records if "report.html of" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None  # one line, no traceback
    assert said[0].getMessage() == (f"report.html of {tmp_path / 'run'} was not written (no space was left on its "
                                    f"disk); the scores are kept: rebuild it with `anomaly-ae report {tmp_path / 'run'}`")


def test_train_on_a_full_disk_where_torch_only_says_unexpected_pos(work, tmp_path, monkeypatch):
    """torch.save reports a failed file write as a RuntimeError; a disk then full makes it a full disk."""
    real_statvfs = os.statvfs

    def torch_save(*args, **kwargs):
        raise RuntimeError(TORCH_FULL)

    def full(path):
        st = real_statvfs(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, st.f_files, st.f_ffree,
                                  st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(os, "statvfs", full)
    with pytest.raises(NoSpaceError, match=f"while writing {tmp_path / 'm'}; nothing was kept"):
        steps.train(work["dataset"], tmp_path / "m", config=TINY)
    assert_nothing_kept(tmp_path, set())  # no model, no temporary, no resume state


def test_a_torch_write_error_with_space_left_is_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic_path(tmp_path / "x.pt"):
        raise RuntimeError(TORCH_FULL)
    assert_nothing_kept(tmp_path, set())


def test_calibrate_on_a_full_disk_keeps_the_model(work, tmp_path, monkeypatch):
    model = tmp_path / "m"
    shutil.copytree(work["model"], model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    monkeypatch.setattr(Path, "write_bytes", no_space)
    with pytest.raises(NoSpaceError, match="nothing was kept"):
        steps.calibrate(model, target_fpr=0.2)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert_nothing_kept(tmp_path, {"m"})


def test_inbox_run_on_a_full_disk_fails_and_frees_its_lock(tmp_path, monkeypatch):
    """Writing the lock holder's pid fails: the run must fail, not leave the lock held so that
    its retry reports the inbox busy and the run ends as if nothing were wrong."""
    from anomaly_ae.inbox import InboxRun

    (tmp_path / "inbox").mkdir()
    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(NoSpaceError, match="No space left on .* while writing .*lock"):
        InboxRun(tmp_path / "inbox", tmp_path / "state").__enter__()
    monkeypatch.undo()
    with InboxRun(tmp_path / "inbox", tmp_path / "state") as run:  # the retry is not "busy"
        assert run.new_files() == []


def _tmpfs_works(folder: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    folder.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k none '{folder}'"],
                           capture_output=True)
    return probe.returncode == 0


DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys
    exe, full, work = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = {
        "ingest": ["ingest", f"{work}/big", "--out", f"{full}/ds"],
        "train": ["train", f"{work}/bigds", "--out", f"{full}/m", "--epochs", "1", "--allow-collapsed",
                  "--device", "cpu"],
        "score": ["score", f"{work}/big", "--model", f"{work}/bigmodel", "--out", f"{full}/run",
                  "--device", "cpu"],
    }
    out = {}
    for name, args in runs.items():
        p = subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
        out[name] = {"rc": p.returncode, "stderr": p.stderr, "left": sorted(os.listdir(full))}
    print(json.dumps(out))
""")


def test_commands_on_a_real_full_disk(tmp_path):
    """A 64 KiB tmpfs: the command line says the disk is full, exits 2 and leaves nothing there."""
    full = tmp_path / "full"
    if not _tmpfs_works(full):
        pytest.skip("cannot mount a tmpfs here (needs unshare and user namespaces)")
    rng = np.random.default_rng(1)
    for k in range(40):
        write_png(tmp_path / "big" / f"img{k:02d}.png", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    steps.ingest(str(tmp_path / "big"), tmp_path / "bigds")
    steps.train(tmp_path / "bigds", tmp_path / "bigmodel", config=TINY)
    exe = Path(sys.executable).with_name("anomaly-ae")
    script = f"mount -t tmpfs -o size=64k none '{full}' && exec '{sys.executable}' -c \"$0\" \"$@\""
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, DRIVER, str(exe), str(full), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for name, r in result.items():
        assert r["rc"] == 2, f"{name}: {r['stderr']}"
        assert "No space left on the device" in r["stderr"] and "nothing was kept" in r["stderr"], r["stderr"]
        assert "Traceback" not in r["stderr"]
        assert [n for n in r["left"] if not n.endswith(".lock")] == [], f"{name} left {r['left']}"


def test_out_below_a_file_is_one_line_and_writes_nothing(work, tmp_path):
    """`--out notes.txt/run`: every command says which file is in the way (no FileExistsError)."""
    from anomaly_ae.errors import DataError

    (tmp_path / "notes.txt").write_text("mine")
    message = f"^{tmp_path / 'notes.txt'} is a file, not a folder, so nothing can be written into it"
    out = tmp_path / "notes.txt" / "deeper" / "out"
    with pytest.raises(DataError, match=message):
        steps.ingest(str(work["input"]), out)
    with pytest.raises(DataError, match=message):
        steps.train(work["dataset"], out, config=TINY)
    with pytest.raises(DataError, match=message):
        steps.score(work["input"], work["model"], out, report=False, device="cpu")
    assert os.listdir(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_score_into_proc_is_one_line(work):
    """/proc takes no new entries (creating one there fails with ENOENT): said so, as for /sys."""
    from anomaly_ae.errors import NotWritableError

    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    with pytest.raises(NotWritableError, match="/proc does not take new files or folders"):
        steps.score(work["input"], work["model"], "/proc/run", report=False, device="cpu")
    with pytest.raises(NotWritableError, match="^Cannot write /proc/ds: /proc does not take new files or folders"):
        steps.ingest(str(work["input"]), "/proc/ds")


def test_a_long_names_hidden_temporary_is_known_as_the_outputs(tmp_path):
    """A write refused on the shortened temporary of a long --out is told as not writable."""
    from anomaly_ae.diskfull import raise_if_user_fixable
    from anomaly_ae.errors import NotWritableError
    from anomaly_ae.fsio import temp_name

    out = tmp_path / ("r" * 240)
    tmp = temp_name(out)
    assert not tmp.name.startswith("." + out.name)  # shortened
    with pytest.raises(NotWritableError, match="is not writable by this user"):
        raise_if_user_fixable(PermissionError(errno.EACCES, "Permission denied", str(tmp / "x")), out, probe=tmp)
    raise_if_user_fixable(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".other.tmp")), out,
                          probe=tmp)  # another output's: no raise
