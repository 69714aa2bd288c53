"""A full disk, told as such: which errors mean it, and which device it is."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from anomaly_ae.errors import NoSpaceError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# torch.save writing to a file reports a failed write only as a RuntimeError with these words;
# it is taken for a full disk when the disk is then (nearly) full.
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
_NEARLY_FULL_BYTES = 2**20


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
