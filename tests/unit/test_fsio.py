"""Atomic folders and locks."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def run_folder(folder, text="old"):
    """Make `folder` a run folder whose run.json holds `text`."""
    folder.mkdir()
    (folder / "run.json").write_text(text)
    (folder / "scores.parquet").write_text("")
    return folder


def write_run(final, text="new", **kwargs):
    with atomic_dir(final, overwrite=True, kind="run", **kwargs) as tmp:
        (tmp / "run.json").write_text(text)
        (tmp / "scores.parquet").write_text("")


@pytest.mark.parametrize("spelling", [".", "./", "..", "sub/.", "sub/..", "sub/./"])
def test_dot_names_the_folder_it_leads_to(tmp_path, monkeypatch, spelling):
    """`--out .` (or `..`, `x/.`...) is refused or replaced as its resolved path is, not a crash."""
    (tmp_path / "sub" / "inner").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "sub" / "inner" if spelling.startswith("..") else tmp_path)
    target = Path("sub") if spelling in ("sub/.", "sub/./") else Path(spelling).resolve()
    if target != Path("sub"):  # the working folder, or a folder holding it: never swapped out from under the shell
        for kind in ("run", None):
            with pytest.raises(DataError, match=f"^{target} is the folder this command runs in"), \
                    atomic_dir(spelling, overwrite=kind is not None, kind=kind):
                pass
        return
    with pytest.raises(DataError, match=f"^{target} is not a run folder written by anomaly-ae: it holds"), \
            atomic_dir(spelling, overwrite=True, kind="run"):
        pass
    with pytest.raises(DataError, match=f"^{target} already exists"), atomic_dir(spelling, kind=None):
        pass


def test_the_folder_a_command_runs_in_is_never_replaced(tmp_path, monkeypatch):
    """Even a run folder: replacing it would leave the shell that ran the command in a deleted folder."""
    monkeypatch.chdir(run_folder(tmp_path / "run"))
    with pytest.raises(DataError, match="is the folder this command runs in: writing it would replace"):
        write_run(".")
    assert (tmp_path / "run" / "run.json").read_text() != "new" and os.listdir(tmp_path) == ["run"]
    assert os.path.samefile(".", tmp_path / "run")


@pytest.mark.parametrize("length", [200, 207, 220, 227, 240, 250, 255])
def test_long_names_get_short_hidden_names(tmp_path, length):
    """Temporaries and locks of a long (legal) name stay within the limit, unique to the name,
    start with it, and are found again by the clean-up."""
    from anomaly_ae.fsio import NAME_MAX, temp_name

    name = "r" * length
    final = tmp_path / name
    hidden = [temp_name(final), temp_name(final, "old"), temp_name(tmp_path / ("r" * (length - 1) + "s"))]
    assert all(len(p.name) <= NAME_MAX and p.name.startswith(".rrrrrrrrrr") for p in hidden)
    assert len({p.name.split(".tmp-")[0].split(".old-")[0] for p in hidden}) == 2  # one stem per name
    write_run(final, "first")
    write_run(final, "second")  # replaced
    with FileLock(tmp_path / f".{name}.lock", "Run folder"):
        assert len(os.listdir(tmp_path)) == 2
    assert os.listdir(tmp_path) == [name] and (final / "run.json").read_text() == "second"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = Path(str(temp_name(final)).replace(f"-{os.getpid()}-", f"-{dead.stdout.strip()}-"))
    stale.mkdir()
    assert remove_stale_temps(tmp_path) == 1 and os.listdir(tmp_path) == [name]


def test_multibyte_long_names_are_cut_between_characters(tmp_path):
    from anomaly_ae.fsio import NAME_MAX, temp_name

    final = tmp_path / ("ü" * 127)  # 254 bytes
    assert len(os.fsencode(temp_name(final).name)) <= NAME_MAX
    write_run(final)
    assert os.listdir(tmp_path) == [final.name]


def test_a_name_over_the_limit_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="Name too long: r+...r+ is 256 bytes; a file or folder name may have at most "
                                        "255"), atomic_dir(tmp_path / ("r" * 256)):
        pass
    with pytest.raises(DataError, match="Name too long"), atomic_write_text(tmp_path / "x" / ("r" * 300), "x"):
        pass
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("below", ["notes.txt", "notes.txt/deeper", "link"])
def test_out_below_a_file_is_a_one_line_error(tmp_path, below):
    from anomaly_ae.fsio import atomic_path

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "link").symlink_to("missing")
    blocker = "link" if below == "link" else "notes.txt"
    message = (f"^{tmp_path / blocker} is a broken symbolic link \\(to missing\\), not a folder" if below == "link"
               else f"^{tmp_path / blocker} is a file, not a folder, so nothing can be written into it")
    with pytest.raises(DataError, match=message), atomic_dir(tmp_path / below / "run"):
        pass
    with pytest.raises(DataError, match=message), atomic_path(tmp_path / below / "run.json"):
        pass
    with pytest.raises(DataError, match=message), FileLock(tmp_path / below / ".run.lock", "Run folder"):
        pass
    assert sorted(os.listdir(tmp_path)) == ["link", "notes.txt"]


def test_a_folder_that_takes_no_new_entries_is_a_one_line_error():
    from anomaly_ae.errors import NotWritableError

    probe = Path("/proc/.anomaly-ae-probe")
    try:
        probe.mkdir()
    except FileNotFoundError:
        pass
    except OSError:
        pytest.skip("no /proc here, or another refusal")
    else:
        probe.rmdir()
        pytest.skip("/proc takes new folders here")
    message = "/proc does not take new files or folders .*; nothing was written"
    with pytest.raises(NotWritableError, match=f"^Cannot write /proc/run: {message}"), atomic_dir("/proc/run"):
        pass
    with pytest.raises(NotWritableError, match=f"^Run folder /proc/run: cannot take its lock .*: {message}"), \
            FileLock("/proc/.run.lock", "Run folder /proc/run"):
        pass


CRASH = """
import os, sys
from pathlib import Path
from anomaly_ae import fsio

final, when = Path(sys.argv[1]), sys.argv[2]
if when == "between the renames":
    fsio._exchange = lambda a, b: False  # a system without renameat2's exchange
    rename = os.replace

    def replace(src, dst):
        rename(src, dst)
        if ".old-" in Path(dst).name:
            os._exit(9)  # killed: the old copy is aside, the new one not yet in place

    os.replace = replace
else:
    exchange = fsio._exchange

    def killed_after(a, b):
        if not exchange(a, b):
            sys.exit("no exchange here")
        os._exit(9)  # killed: the new copy is in place, the old one not yet removed

    fsio._exchange = killed_after
with fsio.atomic_dir(final, overwrite=True, kind="run") as tmp:
    (tmp / "run.json").write_text("new")
    (tmp / "scores.parquet").write_text("")
"""


def hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def test_replacing_a_folder_is_one_exchange(tmp_path, monkeypatch):
    """Where renameat2 can exchange, the old folder never leaves its name before the new one takes it."""
    from anomaly_ae import fsio

    final = run_folder(tmp_path / "run")
    results, renamed = [], []
    exchange, rename = fsio._exchange, os.replace
    monkeypatch.setattr(fsio, "_exchange", lambda a, b: results.append(exchange(a, b)) or results[-1])
    monkeypatch.setattr(os, "replace", lambda a, b: renamed.append((a, b)) or rename(a, b))
    write_run(final)
    if results != [True]:
        pytest.skip("renameat2 cannot exchange here (not Linux, or not on this file system)")
    assert renamed == [] and (final / "run.json").read_text() == "new" and os.listdir(tmp_path) == ["run"]


@pytest.mark.parametrize("code", [22, 38, 95])  # EINVAL, ENOSYS, EOPNOTSUPP
def test_without_exchange_two_renames_replace_the_folder(tmp_path, monkeypatch, code):
    import ctypes

    from anomaly_ae import fsio

    def unsupported(*args):
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(fsio, "_renameat2", lambda: unsupported)
    final = run_folder(tmp_path / "run")
    assert fsio._exchange(tmp_path / "a", final) is False
    write_run(final)
    assert (final / "run.json").read_text() == "new" and os.listdir(tmp_path) == ["run"]
    monkeypatch.setattr(fsio, "_renameat2", lambda: None)  # not Linux
    write_run(final, "newer")
    assert (final / "run.json").read_text() == "newer" and os.listdir(tmp_path) == ["run"]


def test_an_exchange_that_fails_otherwise_raises(tmp_path, monkeypatch):
    import ctypes
    import errno

    from anomaly_ae import fsio

    def refused(*args):
        ctypes.set_errno(errno.EACCES)
        return -1

    monkeypatch.setattr(fsio, "_renameat2", lambda: refused)
    with pytest.raises(PermissionError) as err:
        fsio._exchange(tmp_path / "a", tmp_path / "b")
    assert err.value.filename == str(tmp_path / "a") and err.value.filename2 == str(tmp_path / "b")


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    from anomaly_ae import fsio

    final = run_folder(tmp_path / "run")
    monkeypatch.setattr(fsio, "_exchange", lambda a, b: False)
    rename = os.replace

    def replace(src, dst):
        if ".tmp-" in Path(src).name and Path(dst) == final:
            raise OSError(5, "Input/output error", str(src))
        rename(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        write_run(final)
    assert (final / "run.json").read_text() == "old" and os.listdir(tmp_path) == ["run"]


@pytest.mark.parametrize("name", ["run", "r" * 240])
def test_a_crash_between_the_two_renames_loses_neither_copy(tmp_path, name):
    """Without an exchange, a kill between moving the old folder aside and the new one into place
    leaves no folder at its name: the next run puts the old copy back instead of deleting it."""
    final = run_folder(tmp_path / name)
    proc = subprocess.run([sys.executable, "-c", CRASH, str(final), "between the renames"], capture_output=True)
    assert proc.returncode == 9, proc.stderr
    assert not final.exists() and len(hidden(tmp_path)) == 2  # the old copy and the new one, both hidden
    remove_stale_temps(tmp_path)  # as another command writing beside it does
    if name == "run":
        assert os.listdir(tmp_path) == ["run"] and (final / "run.json").read_text() == "old"
    else:  # a shortened hidden name does not say the folder's name: the copy is kept for that folder
        assert not final.exists() and len(hidden(tmp_path)) == 1
    with pytest.raises(DataError, match="already exists"), atomic_dir(final, kind="run"):  # put back first
        pass
    assert os.listdir(tmp_path) == [name] and (final / "run.json").read_text() == "old"
    write_run(final, "again")
    assert os.listdir(tmp_path) == [name] and (final / "run.json").read_text() == "again"


def test_a_crash_after_the_exchange_leaves_the_new_folder(tmp_path):
    final = run_folder(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", CRASH, str(final), "after the exchange"], capture_output=True)
    if b"no exchange here" in proc.stderr:
        pytest.skip("renameat2 cannot exchange here")
    assert proc.returncode == 9, proc.stderr
    assert (final / "run.json").read_text() == "new" and len(hidden(tmp_path)) == 1  # the old copy
    assert remove_stale_temps(tmp_path) == 1 and os.listdir(tmp_path) == ["run"]


def test_a_folders_lock_is_beside_the_folder_it_names(tmp_path, monkeypatch):
    from anomaly_ae.locks import folder_lock

    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    for spelling in (".", "./", str(tmp_path / "run"), "../run/."):
        assert folder_lock(spelling, "Run folder").path.resolve() == tmp_path / ".run.lock"
    assert folder_lock(".", "Run folder").what == f"Run folder {tmp_path / 'run'}"
    long = folder_lock(tmp_path / ("r" * 252), "Run folder")
    assert len(long.path.name) <= 255 and long.path.name.startswith(".rrrr") and long.path.name.endswith(".lock")
    with long:
        assert long.path.exists()


def test_a_put_back_is_logged(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from anomaly_ae.fsio import _HOST

    run_folder(tmp_path / f".run.old-{_HOST}-{dead.stdout.strip()}-abcdef")
    assert remove_stale_temps(tmp_path) == 0
    assert os.listdir(tmp_path) == ["run"] and "run was put back from .run.old-" in caplog.text
