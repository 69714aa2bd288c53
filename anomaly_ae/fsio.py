"""Files and folders that are never seen half-written, and locks that keep runs apart.

Everything is written under a hidden temporary name (``.<name>.tmp-<pid>-<rand>``) in the
destination folder and renamed into place when complete, so a reader sees the old version or
the new one, never a mixture. Temporaries left by killed processes are removed by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from anomaly_ae.errors import BusyError, DataError

# Lock descriptors this process holds; forked workers close their copies (close_inherited_locks),
# so a lock is released as soon as its holder dies, not when its last worker does.
_HELD_FDS: set[int] = set()

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]+$")
# Temporaries carry a short hash of the host name: a process id means nothing on another machine
# (or container) sharing the folder, so only this host's dead processes' leftovers are removed.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temp_name(path: Path) -> Path:
    """A hidden sibling name for `path`, unique to this process."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(3)}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError, IsADirectoryError), open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write bytes so that readers see the whole file or the previous one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj) -> None:
    """Write JSON (indented, keys in insertion order) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(final: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `final`, on error it is removed.

    Raises:
        DataError: `final` exists (and is not empty) while `overwrite` is False.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)
    _refuse_existing(final, overwrite)
    tmp = temp_name(final)
    tmp.mkdir()
    try:
        yield tmp
        _refuse_existing(final, overwrite)  # someone may have finished first
        if final.exists():
            old = temp_name(final)
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            _remove(tmp)


def _refuse_existing(final: Path, overwrite: bool) -> None:
    if final.exists() and not overwrite and (not final.is_dir() or any(final.iterdir())):
        raise DataError(f"{final} already exists. Pass --overwrite to replace it, or choose another --out.")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> int:
    """Delete temporaries in `folder` whose writing process is gone; returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for entry in os.scandir(folder):
            m = _TMP_RE.match(entry.name)
            if m and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
                _remove(Path(entry.path))
                removed += 1
    return removed


class FileLock:
    """An exclusive, non-blocking lock on `path` (flock); released when the holder dies.

    Raises:
        BusyError: on enter, when another process holds the lock.
    """

    def __init__(self, path: Path | str, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise BusyError(
                    f"{self.what} is in use by process {holder} (lock {self.path}). "
                    "Wait for that run to finish, or use another output folder."
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            _HELD_FDS.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def close_inherited_locks() -> None:
    """In a forked child: drop the copies of the parent's lock descriptors (never unlocking them)."""
    for fd in list(_HELD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()
