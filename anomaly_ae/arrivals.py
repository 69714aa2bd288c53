"""What has arrived in an inbox: the settled image files, and the entries that can never be scored.

Image files (known extensions) anywhere under the inbox are read, except hidden names
(``.name``) and partial downloads (PARTIAL_SUFFIXES). A file counts once it has *settled*: its
last change (the later of mtime and ctime) is at least ``settle_seconds`` old.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from anomaly_ae.errors import DataError
from anomaly_ae.sources.folder import display_name

PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart")


@dataclass(frozen=True)
class InboxFile:
    """A settled entry of the inbox: its path relative to the inbox (with '/') and its stat;
    `reason` says why an entry that is no regular file (a link, a pipe, a folder) is rejected."""

    path: str
    size: int
    mtime_ns: int
    reason: str | None = None

    @property
    def key(self) -> str:
        """The path as the ledger and the run's tables show it (valid UTF-8)."""
        return display_name(self.path)


def is_candidate_name(name: str) -> bool:
    """True for an image name that is neither hidden nor a partial download."""
    from anomaly_ae.sources.folder import is_image_name

    lower = name.lower()
    return not name.startswith(".") and not lower.endswith(PARTIAL_SUFFIXES) and is_image_name(name)


def settled_files(folder: str | Path, settle_seconds: float, now: float | None = None) -> tuple[list[InboxFile], int]:
    """The inbox's settled image files (sorted by path) and how many are still settling.

    Entries with an image name that are no regular file are listed too, with the reason they
    are rejected: symbolic links (never followed), pipes and other special files, and folders
    named like an image that hold no files. Links to folders are listed whatever their name.

    Raises:
        DataError: the inbox folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Inbox {folder} does not exist or is not a folder. Create it, or fix [inbox] folder.")
    now = time.time() if now is None else now
    settled, pending = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):  # never follows directory links
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        entries = [(n, False) for n in filenames] + [(n, True) for n in dirnames]
        for name, is_dir in entries:
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full, follow_symlinks=False)
            except FileNotFoundError:
                continue
            reason = _entry_problem(full, st)
            if not (is_candidate_name(name) or (is_dir and reason)) or (is_dir and reason is None):
                continue
            if now - max(st.st_mtime, st.st_ctime) < settle_seconds:
                pending += 1
                continue
            rel = Path(os.path.relpath(full, folder)).as_posix()
            settled.append(InboxFile(rel, st.st_size, st.st_mtime_ns, reason))
    settled.sort(key=lambda f: f.path)
    return settled, pending


def _entry_problem(full: str, st: os.stat_result) -> str | None:
    """Why an inbox entry cannot be scored (None for a regular file, or a folder to walk into)."""
    import stat

    if stat.S_ISLNK(st.st_mode):
        if not os.path.exists(full):
            return "broken symbolic link (its target does not exist)"
        target = display_name(os.path.realpath(full))
        return f"symbolic link (to {target}): an inbox takes regular files only; deliver the file itself"
    if stat.S_ISDIR(st.st_mode):
        if is_candidate_name(os.path.basename(full)) and not any(files for _, _, files in os.walk(full)):
            return "is a directory, not an image file"
        return None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None
