"""Files and folders that are never seen half-written.

Everything is written under a hidden temporary name (``.<name>.tmp-<host>-<pid>-<rand>``) in
the destination folder and renamed into place when complete, so a reader sees the old version or
the new one, never a mixture. Temporaries left by killed processes are removed by the next run.
Hidden names derived from a long name start with a prefix of it and a digest of all of it
(`hidden_name`), so that they stay within the file system's limit on a name.
An existing folder is replaced only when it is of the kind being written (FOLDER_KINDS), is not
what the command reads and is not a symbolic link; a full disk is reported as NoSpaceError
(anomaly_ae.diskfull), with the temporary removed. Locks that keep runs apart are anomaly_ae.locks'.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from anomaly_ae.diskfull import no_space, raise_if_user_fixable
from anomaly_ae.errors import DataError, NoSpaceError

log = logging.getLogger(__name__)

# A temporary being written (tmp), or the previous copy of a folder being replaced (old).
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<role>tmp|old)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]+$")
# Temporaries carry a short hash of the host name: a process id means nothing on another machine
# (or container) sharing the folder, so only this host's dead processes' leftovers are removed.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]

# What anomaly-ae writes into each kind of folder: (names it always holds, names it may hold).
# An existing folder is replaced only when it holds the first and nothing outside both.
FOLDER_KINDS = {
    "dataset": ({"images.parquet", "dataset.json"}, {"rejects.parquet"}),
    "model": ({"model.pt", "model.json"}, {"config.toml"}),
    "run": ({"run.json", "scores.parquet"}, {"flagged.csv", "error_maps.parquet", "examples.parquet",
                                            "metrics.json", "rejects.parquet", "report.html",
                                            "ledger.parquet", "inbox.json"}),
    "export": ({"model.onnx", "model.json"}, set()),
}
KIND_NAMES = {"dataset": "dataset", "model": "model folder", "run": "run folder", "export": "model export"}


# The longest name most file systems allow, in bytes (ext4, xfs, btrfs, tmpfs...).
NAME_MAX = 255
# Room kept for the longest ending put after a hidden name's stem: ".tmp-<host>-<pid>-<rand>"
# (at most 27 bytes), ".lock", a training's ".train-<digest>-<kind>.pt".
_ENDING_ROOM = 48
_DIGEST_CHARS = 12
_SHORTENED_RE = re.compile(rf"~[0-9a-f]{{{_DIGEST_CHARS}}}$")


def hidden_name(path: Path | str, ending: str) -> Path:
    """The hidden sibling ``.<name><ending>`` of `path` (its temporary, its lock...).

    A name too long to take an ending within NAME_MAX is cut to a prefix of it, ``~`` and a digest
    of the whole name, so that hidden names stay recognisable (the prefix) and distinct (the digest).
    """
    path = Path(path)
    return path.with_name(_hidden_stem(path.name) + ending)


def _hidden_stem(name: str) -> str:
    stem = "." + name
    room = NAME_MAX - _ENDING_ROOM
    if len(os.fsencode(stem)) <= room:
        return stem
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:_DIGEST_CHARS]
    while len(os.fsencode(stem)) > room - 1 - _DIGEST_CHARS:  # characters may take several bytes
        stem = stem[:-1]
    return f"{stem}~{digest}"


def temp_name(path: Path, role: str = "tmp") -> Path:
    """A hidden sibling name for `path`, unique to this process (`role` "old": the previous copy of
    a folder being replaced)."""
    return hidden_name(path, f".{role}-{_HOST}-{os.getpid()}-{secrets.token_hex(3)}")


def output_folder(path: Path | str) -> Path:
    """`path` as a folder to write: ``.``, ``..`` and names ending in them are taken as the folders
    they are (resolved), since a folder is replaced through its name in the folder above it."""
    path = Path(path)
    return path.resolve() if path.name in ("", "..") else path


def check_name_lengths(path: Path | str) -> None:
    """Raise DataError when a name in `path` is longer than a file system allows (NAME_MAX bytes)."""
    for part in Path(path).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise DataError(f"Name too long: {part[:24]}...{part[-8:]} is {size} bytes; a file or folder name may "
                            f"have at most {NAME_MAX}. Choose a shorter --out.")


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
    check_name_lengths(path)
    tmp = temp_name(path)
    creating = True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        creating = False
        yield tmp
        with contextlib.suppress(FileNotFoundError, IsADirectoryError), open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        raise_if_user_fixable(exc, path, probe=tmp, creating=creating)
        raise
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
    atomic_write_text(path, json_text(obj))


def json_text(obj) -> str:
    """`obj` as indented JSON text (numpy values and paths as plain values)."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Write several files, each atomically, replacing none of them unless all were written in
    full (a full disk then leaves every old file as it was)."""
    with contextlib.ExitStack() as stack:
        tmps = {path: stack.enter_context(atomic_path(path)) for path in files}
        for path, data in files.items():
            tmps[path].write_bytes(data)


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(final: Path | str, *, overwrite: bool = False, kind: str | None = None,
               protect: Iterable[Path | str] = ()) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `final`, on error it is removed.

    Args:
        final: the folder to create.
        overwrite: replace an existing `final`, which must then be a folder of `kind`.
        kind: what `final` holds ("dataset", "model" or "run", see FOLDER_KINDS); an existing
            folder of another kind, or one holding anything anomaly-ae did not write, is never
            replaced.
        protect: paths the caller reads (its input, its model): `final` may be none of them and
            may not hold one.

    Raises:
        DataError: `final` exists (and is not empty) while `overwrite` is False, is not a folder
            of `kind`, would replace a protected path, is a symbolic link, lies below a file, or
            has a name longer than a file system allows.
        NoSpaceError: the disk filled up; the temporary folder was removed.
    """
    final = output_folder(final)
    if overwrite and kind is None:
        raise ValueError("atomic_dir(overwrite=True) needs the kind of folder it may replace")
    check_name_lengths(final)
    _refuse_the_working_folder(final)
    tmp, creating = None, True
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final.parent, final)
        _refuse_existing(final, overwrite, kind, protect)
        tmp = temp_name(final)
        tmp.mkdir()
        creating = False
        yield tmp
        _refuse_existing(final, overwrite, kind, protect)  # someone may have finished first
        _swap_in(tmp, final)
    except NoSpaceError:
        raise no_space(final) from None  # name the folder, not a file inside its temporary
    except BaseException as exc:
        raise_if_user_fixable(exc, final, probe=tmp, creating=creating)
        raise
    finally:
        if tmp is not None and tmp.exists():
            _remove(tmp)


def _refuse_the_working_folder(final: Path) -> None:
    """A folder is written by replacing it: the folder a command runs in (or one holding it) would be
    swapped out from under the shell that started it."""
    here = Path.cwd().resolve()
    where = final.resolve()
    if where == here or where in here.parents:
        raise DataError(f"{final} is the folder this command runs in{'' if where == here else ' (or holds it)'}: "
                        f"writing it would replace that folder. Choose a new folder, e.g. --out {final / 'out'}.")


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`, removing what `final` held.

    An existing `final` is exchanged with `tmp` in one step where the system can (Linux's
    renameat2 with RENAME_EXCHANGE), so that a crash at any moment leaves `final` whole, old or
    new; the old copy, now at `tmp`'s name, is then removed (by the next run when this one dies
    first). Elsewhere (another system, a file system without it) it takes two renames: `final` to a
    hidden ``.old-`` name, then `tmp` to `final`. A crash between the two leaves no `final`; the next
    run's `remove_stale_temps` then puts the old copy back rather than remove it.
    """
    if final.exists():
        if _exchange(tmp, final):
            fsync_dir(final.parent)
            _remove(tmp)
            return
        old = temp_name(final, "old")
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        fsync_dir(final.parent)
        _remove(old)
    else:
        os.replace(tmp, final)
        fsync_dir(final.parent)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# What renameat2 answers where the kernel or the file system cannot exchange.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


@functools.cache
def _renameat2():
    """libc's renameat2, or None (not Linux, or a C library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries at `a` and `b` in one step; False where the system cannot (nothing changed)."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _refuse_existing(final: Path, overwrite: bool, kind: str | None, protect: Iterable[Path | str]) -> None:
    if final.is_symlink():  # replacing it would replace the user's link, not the folder it leads to
        raise DataError(f"{final} is a symbolic link (to {os.readlink(final)}), and a link is never replaced: pass "
                        "the folder it leads to as --out, or choose another --out.")
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return
    if kind is not None and folder_kind(final) != kind:
        what = KIND_NAMES[kind]
        raise DataError(f"{final} is not a {what} written by anomaly-ae: it holds {describe(final)}. "
                        f"Only a {what} is ever replaced; choose another --out, or move it away yourself.")
    _refuse_protected(final, protect)
    if not overwrite:
        raise DataError(f"{final} already exists. Pass --overwrite to replace it, or choose another --out.")


def _refuse_protected(final: Path, protect: Iterable[Path | str]) -> None:
    target = final.resolve()
    for path in protect:
        path = Path(path).resolve()
        if target == path or target in path.parents:
            raise DataError(f"Writing to {final} would replace {path}, which this command reads. "
                            "Choose another --out.")


def folder_kind(folder: Path | str) -> str | None:
    """'dataset', 'model' or 'run' for a folder that holds only what anomaly-ae writes there, else None."""
    try:
        names = {n for n in os.listdir(folder) if not _TMP_RE.match(n)}
    except OSError:  # not a folder, or one that cannot be read: nothing to replace
        return None
    for kind, (required, optional) in FOLDER_KINDS.items():
        if required <= names and names <= required | optional:
            return kind
    return None


def read_json(path: Path | str) -> dict:
    """A JSON file anomaly-ae wrote (run.json, metrics.json...), or DataError naming it when it is
    damaged (a missing file raises FileNotFoundError, for callers that allow none)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is damaged: it is not valid JSON ({exc}). Write it again (score the run again, "
                        "or `anomaly-ae report` for a report's files), or restore it.") from None


def describe(path: Path | str) -> str:
    """What a path holds, in words, for messages: 'a model folder', '3 entries (a.png, b.png, c)'..."""
    path = Path(path)
    if not path.is_dir():
        return "a file, not a folder" if path.exists() else "nothing"
    kind = folder_kind(path)
    if kind is not None:
        return f"a {KIND_NAMES[kind]}"
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        return f"a folder that cannot be listed ({exc.strerror})"
    for kind, (required, optional) in FOLDER_KINDS.items():
        extra = [n for n in names if n not in required | optional and not _TMP_RE.match(n)]
        if required <= set(names) and extra:  # one of anomaly-ae's folders, with something else put in it
            return f"a {KIND_NAMES[kind]}'s files and also {', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}"
    sample = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} {'entry' if len(names) == 1 else 'entries'} ({sample})"


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


def remove_stale_temps(folder: Path, final: Path | None = None) -> int:
    """Delete temporaries in `folder` whose writing process is gone; returns how many.

    The previous copy of a folder whose replacement was cut short (a ``.old-`` temporary, see
    `_swap_in`) is removed only when the folder is back in its place; otherwise it is put back.
    When its hidden name was shortened (`hidden_name`) it is put back only as `final` (a folder
    about to be written in `folder`), and kept until then.
    """
    removed = 0
    with contextlib.suppress(FileNotFoundError, PermissionError, NotADirectoryError):
        for entry in os.scandir(folder):
            m = _TMP_RE.match(entry.name)
            if not (m and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))):
                continue
            if m["role"] == "old" and not _old_copy_dropped(Path(entry.path), m["name"], final):
                continue
            _remove(Path(entry.path))
            removed += 1
    return removed


def _old_copy_dropped(old: Path, name: str, final: Path | None) -> bool:
    """Whether the old copy `old` of the folder `name` can go: that folder is in place. When it is
    missing, `old` is put back there (when its name is known) and kept."""
    if final is not None and _hidden_stem(final.name) == "." + name:
        target = final
    elif _SHORTENED_RE.search(name):  # the folder's full name is not known
        stem = "." + name
        return any(_hidden_stem(n) == stem for n in os.listdir(old.parent) if not _TMP_RE.match(n))
    else:
        target = old.with_name(name)
    if os.path.lexists(target):
        return True
    os.replace(old, target)
    log.warning("%s was put back from %s: a run replacing it was stopped after moving it aside.", target, old.name)
    return False
