"""Writes that fail for a reason the user can fix, told as such: a full disk (which errors mean
it, and which device it is), a place this user may not write (permissions, a read-only file
system, a folder that takes no new entries such as /proc), and a file where the path to the
output needs a folder."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from anomaly_ae.errors import DataError, NoSpaceError, NotWritableError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# torch.save writing to a file reports a failed write only as a RuntimeError with these words;
# it is taken for a full disk when the disk is then (nearly) full.
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
_NEARLY_FULL_BYTES = 2**20
_PERMISSIONS = "Fix its permissions, or write somewhere else (another --out)."
_NOT_WRITABLE = {  # errno: (what the folder is, what to do)
    errno.EROFS: ("is on a read-only file system", "Write somewhere else (another --out), or mount it read-write."),
    errno.EACCES: ("is not writable by this user", _PERMISSIONS),
    errno.EPERM: ("does not permit the change (an immutable or protected folder)", _PERMISSIONS)}
# ENOENT when creating an entry in a folder that exists: a virtual file system (/proc).
_TAKES_NOTHING = ("does not take new files or folders (a virtual file system such as /proc)",
                  "Write somewhere else (another --out).")


def raise_if_no_space(exc: BaseException, path: Path | str, *, probe: Path | str | None = None) -> None:
    """Raise NoSpaceError naming `path` when `exc` means the disk is full (`probe`: where to look)."""
    if isinstance(exc, OSError):
        full = exc.errno in _NO_SPACE or "No space left on device" in str(exc)
    elif isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILED):
        full = _free_bytes(Path(probe or path)) < _NEARLY_FULL_BYTES
    else:
        full = False
    if full:
        raise no_space(Path(path)) from None


def raise_if_not_writable(exc: BaseException, path: Path | str, what: str | None = None, *,
                          probe: Path | str | None = None, creating: bool = False) -> None:
    """Raise NotWritableError when `exc` says that this user may not write where `path` (the
    output the user named: a folder, a file, or what `what` says it guards; `probe`: its
    temporary) was being written. With `creating` (`exc` came from making `path`'s folder or its
    temporary, in folders that exist), a missing entry means a folder that takes no new ones."""
    codes = {**_NOT_WRITABLE, **({errno.ENOENT: _TAKES_NOTHING} if creating else {})}
    if not (isinstance(exc, OSError) and exc.errno in codes and isinstance(exc.filename, (str, os.PathLike))
            and any(_is_output(Path(exc.filename), Path(p)) for p in (path, probe) if p is not None)):
        return  # another error, or one about a file the command reads: not this
    where = Path(exc.filename)
    while not where.is_dir() and where != where.parent:  # the folder the write was refused in
        where = where.parent
    reason, fix = codes[exc.errno]
    subject = what or f"Cannot write {path}"
    raise NotWritableError(f"{subject}: {where} {reason}; nothing was written. {fix}") from None


def raise_if_below_a_file(exc: BaseException, path: Path | str) -> None:
    """Raise DataError when `exc` (a folder that exists as a file, a path through a file) came from
    a file where a folder above `path` has to be."""
    if not (isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTDIR)):
        return
    for above in reversed(Path(path).parents):  # from the top down: the first one that is no folder
        if above.is_dir():
            continue
        if not os.path.lexists(above):
            return  # made or removed meanwhile: not this
        if above.is_symlink():
            raise DataError(f"{above} is a broken symbolic link (to {os.readlink(above)}), not a folder, so nothing "
                            f"can be written into it. Choose another --out, or make the folder it names.") from None
        raise DataError(f"{above} is a file, not a folder, so nothing can be written into it. Choose another --out, "
                        "or move that file away.") from None


def _is_output(name: Path, output: Path) -> bool:
    """Whether `name` is `output`, inside it, a folder above it, or a hidden file beside it that
    belongs to it (its temporary, its lock)."""
    name, output = Path(os.path.abspath(name)), Path(os.path.abspath(output))
    return (output.is_relative_to(name) or name.is_relative_to(output)
            or (name.parent == output.parent and name.name.startswith("." + output.name)))


def raise_if_user_fixable(exc: BaseException, path: Path | str, *, probe: Path | str | None = None,
                          what: str | None = None, creating: bool = False) -> None:
    """Raise NoSpaceError, NotWritableError or DataError when a failed write of `path` was one of
    those (see `raise_if_no_space`, `raise_if_not_writable` and `raise_if_below_a_file`; `probe`:
    its temporary); otherwise return, for the caller to re-raise."""
    raise_if_no_space(exc, path, probe=probe)
    raise_if_not_writable(exc, path, what, probe=probe, creating=creating)
    raise_if_below_a_file(exc, path)


def no_space(path: Path) -> NoSpaceError:
    """The error for a full disk met while writing `path`, naming the device."""
    return NoSpaceError(f"No space left on {_device(path)} while writing {path}; nothing was kept. "
                        "Free some space there, or write to another disk.")


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int:
    """Bytes this process may still write on the filesystem holding `path`."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return 2**63
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _device(path: Path) -> str:
    """The filesystem holding `path`, in words: 'the device /dev/sda1 (mounted at /home)'."""
    mount = _existing(path)
    with contextlib.suppress(OSError):
        dev = os.stat(mount).st_dev
        while mount != mount.parent and os.stat(mount.parent).st_dev == dev:
            mount = mount.parent
    source = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields, rest = line.split(" - ", 1)
            point = fields.split()[4].encode().decode("unicode_escape")
            if point == str(mount):
                source = rest.split()[1]
    return f"the device {source} (mounted at {mount})" if source else f"the disk mounted at {mount}"
