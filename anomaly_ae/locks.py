"""Locks that keep runs apart: an flock per model, run folder or inbox, released when its holder dies."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from anomaly_ae.diskfull import raise_if_user_fixable
from anomaly_ae.errors import BusyError
from anomaly_ae.fsio import NAME_MAX, hidden_name, output_folder

# Tries to take a lock whose file its holder keeps replacing (each try is immediate).
LOCK_ATTEMPTS = 20


def folder_lock(folder: Path | str, what: str) -> FileLock:
    """The lock of an output folder, ``.<name>.lock`` beside it; `what` names the folder in messages
    ("Run folder"). ``.`` and ``..`` are the folders they lead to, as anomaly_ae.fsio writes them."""
    folder = output_folder(folder)
    return FileLock(folder.parent / f".{folder.name}.lock", f"{what} {folder}")


class FileLock:
    """An exclusive, non-blocking lock on `path` (flock); released when the holder dies.

    A hidden ``.<name>.lock`` whose name is longer than a file system allows is shortened as
    anomaly_ae.fsio.hidden_name shortens (a prefix of the name and a digest of all of it).

    Raises:
        BusyError: on enter, when another process holds the lock.
    """

    def __init__(self, path: Path | str, what: str):
        self.path = _short_enough(Path(path))
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        for _ in range(LOCK_ATTEMPTS):
            fd = self._open()
            self._lock(fd)
            if self._still_at_path(fd):
                break
            # The holder removed the file as it let go: this lock is on a file nobody else
            # will look at; take the one at the path now.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        else:
            raise BusyError(f"{self.what}: its lock {self.path} kept changing hands; try again.")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException as exc:
            # Unlock before failing: a descriptor left locked makes every later run of this
            # process report the folder busy.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise_if_user_fixable(exc, self.path, what=f"{self.what}: cannot take its lock {self.path}")
            raise
        self._fd = fd
        return self

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise_if_user_fixable(exc, self.path, what=f"{self.what}: cannot take its lock {self.path}", creating=True)
            raise

    def _still_at_path(self, fd: int) -> bool:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev)

    def _lock(self, fd: int) -> None:
        """Take the lock on `fd`, or close it and raise BusyError naming the holder."""
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

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            # Removed while still held, so no lock file outlives its run; a process that opened
            # it meanwhile sees it gone once it holds the lock, and takes a fresh one.
            with contextlib.suppress(FileNotFoundError):
                if self._still_at_path(self._fd):
                    os.unlink(self.path)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _short_enough(path: Path) -> Path:
    """`path`, or where its name is over NAME_MAX bytes, the name fsio.hidden_name gives it."""
    if len(os.fsencode(path.name)) <= NAME_MAX:
        return path
    stem, ending = os.path.splitext(path.name)  # ".<name>", ".lock"
    return hidden_name(path.with_name(stem.removeprefix(".") or stem), ending)
