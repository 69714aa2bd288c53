"""Files and folders that are never seen half-written.

Everything is written under a hidden temporary name (``.<name>.tmp-<pid>-<rand>``) in the
destination folder and renamed into place when complete, so a reader sees the old version or
the new one, never a mixture. Temporaries left by killed processes are removed by the next run.
An existing folder is replaced only when it is of the kind being written (FOLDER_KINDS) and is not
what the command reads; a full disk is reported as NoSpaceError (anomaly_ae.diskfull), with the
temporary removed. Locks that keep runs apart are anomaly_ae.locks'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from anomaly_ae.diskfull import no_space, raise_if_user_fixable
from anomaly_ae.errors import DataError, NoSpaceError

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]+$")
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
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with contextlib.suppress(FileNotFoundError, IsADirectoryError), open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        raise_if_user_fixable(exc, path, probe=tmp)
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
            of `kind`, or would replace a protected path.
        NoSpaceError: the disk filled up; the temporary folder was removed.
    """
    final = Path(final)
    if overwrite and kind is None:
        raise ValueError("atomic_dir(overwrite=True) needs the kind of folder it may replace")
    tmp = temp_name(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final.parent)
        _refuse_existing(final, overwrite, kind, protect)
        tmp.mkdir()
        yield tmp
        _refuse_existing(final, overwrite, kind, protect)  # someone may have finished first
        _swap_in(tmp, final)
    except NoSpaceError:
        raise no_space(final) from None  # name the folder, not a file inside its temporary
    except BaseException as exc:
        raise_if_user_fixable(exc, final, probe=tmp)
        raise
    finally:
        if tmp.exists():
            _remove(tmp)


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`, removing what `final` held."""
    if final.exists():
        old = temp_name(final)
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def _refuse_existing(final: Path, overwrite: bool, kind: str | None, protect: Iterable[Path | str]) -> None:
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


