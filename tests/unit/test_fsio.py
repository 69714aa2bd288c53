"""Atomic folders and locks."""

import os
import signal
import subprocess
import sys
import time

import pytest

from anomaly_ae.errors import BusyError, DataError
from anomaly_ae.fsio import atomic_dir, atomic_write_text, remove_stale_temps
from anomaly_ae.locks import FileLock


def test_atomic_dir_appears_only_when_complete(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "run.json").write_text("done")
        (tmp / "scores.parquet").write_text("")
    assert (tmp_path / "out" / "run.json").read_text() == "done"
    with pytest.raises(DataError, match="already exists"), atomic_dir(tmp_path / "out"):
        pass
    with atomic_dir(tmp_path / "out", overwrite=True, kind="run") as tmp:
        (tmp / "run.json").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from anomaly_ae.fsio import _HOST

    stale = tmp_path / f".out.tmp-{_HOST}-{dead.stdout.strip()}-abcdef"
    stale.mkdir()
    mine = tmp_path / f".x.tmp-{_HOST}-{os.getpid()}-abcdef"
    mine.mkdir()
    other_host = tmp_path / f".y.tmp-000000-{dead.stdout.strip()}-abcdef"  # another machine's: kept
    other_host.mkdir()
    assert remove_stale_temps(tmp_path) == 1 and not stale.exists() and mine.exists() and other_host.exists()


def test_atomic_write_replaces_whole_files(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "one")
    atomic_write_text(tmp_path / "f.txt", "two")
    assert (tmp_path / "f.txt").read_text() == "two" and len(list(tmp_path.iterdir())) == 1


def test_lock_is_exclusive_between_processes(tmp_path):
    code = "import sys, time\nfrom anomaly_ae.locks import FileLock\nFileLock(sys.argv[1], 'x').__enter__()\n" \
           "print('ready', flush=True)\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "l")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    with pytest.raises(BusyError, match=f"process {proc.pid}"):
        FileLock(tmp_path / "l", "Thing").__enter__()
    proc.kill()
    proc.wait()
    with FileLock(tmp_path / "l", "Thing"):
        pass


def test_lock_is_released_when_its_holder_dies_while_decode_workers_live(tmp_path):
    code = ("import sys, time\nfrom anomaly_ae.locks import FileLock\nfrom anomaly_ae.parallel import _make_pool\n"
            "FileLock(sys.argv[1], 'x').__enter__()\npool = _make_pool(2)\n"
            "futures = [pool.submit(time.sleep, 30) for _ in range(2)]\nprint('ready', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "l")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # let the workers start
    os.kill(proc.pid, signal.SIGKILL)  # the holder only; its workers sleep on
    proc.wait()
    with FileLock(tmp_path / "l", "Thing"):
        pass


def test_lock_that_cannot_record_its_holder_is_released_and_says_why(tmp_path, monkeypatch):
    """A full disk after flock (writing the pid): the lock is released, not leaked, so a retry is
    not refused as busy; and the failure names the full disk."""
    import errno

    from anomaly_ae.errors import NoSpaceError

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    for call in ("ftruncate", "pwrite"):
        monkeypatch.setattr(os, call, no_space)
        with pytest.raises(NoSpaceError, match=f"No space left on .* while writing {tmp_path / 'l'}"):
            FileLock(tmp_path / "l", "Thing").__enter__()
        monkeypatch.undo()
        with FileLock(tmp_path / "l", "Thing"):
            pass


def test_existing_folders_are_replaced_only_when_of_the_kind_written(tmp_path):
    from anomaly_ae.fsio import describe, folder_kind

    (tmp_path / "ds").mkdir()
    for name in ("images.parquet", "dataset.json", ".images.parquet.tmp-abcdef-1-ff"):
        (tmp_path / "ds" / name).write_text(name)
    assert folder_kind(tmp_path / "ds") == "dataset" and describe(tmp_path / "ds") == "a dataset"
    with pytest.raises(DataError, match="is not a model folder written by anomaly-ae: it holds a dataset"), \
            atomic_dir(tmp_path / "ds", overwrite=True, kind="model"):
        pass
    with atomic_dir(tmp_path / "ds", overwrite=True, kind="dataset") as tmp:
        (tmp / "images.parquet").write_text("new")
        (tmp / "dataset.json").write_text("new")
    assert sorted(os.listdir(tmp_path / "ds")) == ["dataset.json", "images.parquet"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="it holds a file, not a folder"), \
            atomic_dir(tmp_path / "file", overwrite=True, kind="run"):
        pass
    assert (tmp_path / "file").read_text() == "x"


def test_lock_files_do_not_outlive_their_run(tmp_path):
    from anomaly_ae.errors import BusyError
    from anomaly_ae.locks import FileLock

    path = tmp_path / ".run.lock"
    with pytest.raises(RuntimeError, match="failed"), FileLock(path, "Run folder x"):
        assert path.exists()
        with pytest.raises(BusyError, match="in use by process"), FileLock(path, "Run folder x"):
            pass
        raise RuntimeError("the run failed")
    assert not path.exists()  # a failed attempt leaves no lock file behind
    with FileLock(path, "Run folder x"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_lock_taken_on_a_file_its_holder_removed_is_taken_again(tmp_path):
    import fcntl
    import os

    from anomaly_ae.locks import FileLock

    path = tmp_path / ".run.lock"
    stale = os.open(path, os.O_RDWR | os.O_CREAT)  # opened before the holder let go...
    os.unlink(path)  # ...which removed the file
    lock = FileLock(path, "Run folder x")
    with lock:
        assert lock._still_at_path(lock._fd)
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old file is not the lock any more
    os.close(stale)
