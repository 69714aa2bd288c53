"""Decode image files in worker processes: in input order, with a bounded number in flight.

Ingest and scoring both decode through `decode_chunks`, so a file is read, hashed and turned
into working-size pixels by exactly the same code wherever it enters the product.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from anomaly_ae.imaging import (
    DEFAULT_MAX_PIXELS,
    Preprocess,
    Rejected,
    is_gray,
    mask_pixels,
    open_image,
    read_bit_depth,
    read_file,
    sha256_hex,
    to_pixel_bytes,
)

log = logging.getLogger(__name__)

# Below this many files a process pool costs more to start than it saves.
MIN_FILES_FOR_POOL = 48
CHUNK_BYTES = 8 * 2**20


class Decoded(NamedTuple):
    """One decoded file: pixels (bytes of H*W*C uint8) or, when rejected, `reason`."""

    pixels: bytes | None
    mask: bytes | None
    orig_height: int
    orig_width: int
    orig_mode: str
    sha256: str
    gray: bool
    reason: str | None = None
    over_range: bool = False  # a high bit-depth image brighter than the policy's bit depth holds (clipped)
    file_stat: tuple | None = None  # (size, modification time in ns) of the file as read; None if unread
    mask_stat: tuple | None = None  # the same for its mask file


@dataclass
class Chunk:
    """The decoded files of one chunk, packed for a cheap trip between processes.

    `reasons`, `file_stats` and `mask_stats` have one entry per file (a reason, or None when
    decoded; the (size, modification time) of the file and of its mask as read, or None); every
    other list has one entry per decoded file, and `pixels` / `masks` hold their bytes back to
    back (a zero mask where a file has none).
    """

    reasons: list = field(default_factory=list)
    pixels: bytes = b""
    masks: bytes = b""
    has_mask: list = field(default_factory=list)
    orig_height: list = field(default_factory=list)
    orig_width: list = field(default_factory=list)
    orig_mode: list = field(default_factory=list)
    sha256: list = field(default_factory=list)
    gray: list = field(default_factory=list)
    over_range: list = field(default_factory=list)
    file_stats: list = field(default_factory=list)
    mask_stats: list = field(default_factory=list)
    cpu_seconds: float = 0.0  # the decoding process's CPU time on the chunk (0 where not measured)

    @classmethod
    def pack(cls, decoded: list[Decoded], mask_size: int) -> Chunk:
        """One Chunk from per-file results."""
        ok = [d for d in decoded if d.reason is None]
        return cls([d.reason for d in decoded], b"".join(d.pixels for d in ok),
                   b"".join(d.mask or bytes(mask_size) for d in ok) if any(d.mask for d in ok) else b"",
                   [d.mask is not None for d in ok], [d.orig_height for d in ok], [d.orig_width for d in ok],
                   [d.orig_mode for d in ok], [d.sha256 for d in ok], [d.gray for d in ok],
                   [d.over_range for d in ok], [d.file_stat for d in decoded], [d.mask_stat for d in decoded])

    def pixel_array(self, shape: tuple) -> np.ndarray:
        """(decoded files, *shape) uint8 view of the pixels."""
        return np.frombuffer(self.pixels, np.uint8).reshape(-1, *shape)

    def mask_list(self, shape: tuple) -> list:
        """Per decoded file: its (h, w) mask, or None."""
        if not self.masks:
            return [None] * len(self.has_mask)
        arr = np.frombuffer(self.masks, np.uint8).reshape(-1, *shape)
        return [arr[k] if has else None for k, has in enumerate(self.has_mask)]


def default_workers() -> int:
    """Worker processes to use: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def decode_one(path, mask_path, policy: Preprocess, max_pixels: int) -> Decoded:
    """Read, hash and decode one file (and its mask) under `policy`; never raises for bad input."""
    stat = mask_stat = None
    try:
        data, stat = read_file(path)
        img = open_image(data, max_pixels)
        mask = None
        if mask_path is not None:
            try:
                mask_data, mask_stat = read_file(mask_path)
                mask = mask_pixels(mask_data, policy, max_pixels).tobytes()
            except Rejected as exc:
                raise Rejected(f"its mask {os.fsdecode(mask_path)!r} is unusable: {exc}") from None
        pixels = to_pixel_bytes(img, policy)
        bits = read_bit_depth(img, policy)  # (the maximum from NumPy: Pillow has none for big-endian 16-bit)
        over = bits is not None and img.mode[:1] == "I" and int(np.asarray(img).max(initial=0)) >= 2 ** bits
        return Decoded(pixels, mask, img.height, img.width, img.mode,
                       sha256_hex(data), is_gray(img), over_range=over, file_stat=stat, mask_stat=mask_stat)
    except Rejected as exc:
        return Decoded(None, None, 0, 0, "", "", False, str(exc), file_stat=stat, mask_stat=mask_stat)
    except MemoryError:
        return Decoded(None, None, 0, 0, "", "", False, "not enough memory to decode this image", file_stat=stat,
                       mask_stat=mask_stat)


def _decode_chunk(jobs, policy_dict, max_pixels) -> Chunk:
    start = time.process_time()
    policy = Preprocess.from_dict(policy_dict)
    chunk = Chunk.pack([decode_one(path, mask, policy, max_pixels) for path, mask in jobs],
                       policy.height * policy.width)
    chunk.cpu_seconds = time.process_time() - start
    return chunk


def _worker_init(owner) -> None:
    """In each decode worker: leave as soon as the process that owns the pool is gone (killed
    with SIGKILL, say: `owner` then reads end-of-file), instead of waiting for work that will
    not come. While the owner lives, a worker only leaves when the pool shuts down."""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            owner.recv_bytes()
        os._exit(0)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


_OWNER_LOCK = threading.Lock()
_owner: tuple | None = None  # (pid, reading end, writing end): the writing end lives as long as this process


def _owner_pipe():
    """The reading end of a pipe whose only writing end stays in this process, never closed: it
    reads end-of-file exactly when this process is gone (workers never see it close under them
    while they may still be sending a result)."""
    global _owner
    with _OWNER_LOCK:
        if _owner is None or _owner[0] != os.getpid():
            _owner = (os.getpid(), *multiprocessing.Pipe(duplex=False))
        return _owner[1]


def _make_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_worker_init,
                               initargs=(_owner_pipe(),))


def _context():
    """Workers start from a clean process, never by forking this one: a fork copies every lock
    that another thread (a web server, a runtime's thread pool, a log shipper) holds at that
    instant, and a worker that needs one waits forever. On Linux a fork server (started once,
    with this module loaded) forks them; elsewhere they are spawned. As with any spawned worker,
    a script that calls anomaly-ae must keep its top-level work under `if __name__ == "__main__":`."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - not POSIX
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])
    return ctx


def start_workers_early() -> None:
    """Start the process decode workers are forked from now, before a long listing: its start-up
    (an interpreter loading the decode modules) then runs beside the listing instead of after it.
    Costs one idle process when nothing comes to decode; does nothing where workers are spawned
    or cannot be started (a daemonic process)."""
    if multiprocessing.current_process().daemon or _workers_start is False:
        return
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def leave_if_importing_script() -> None:
    """Exit quietly if this process is a worker (or the fork server) still importing the user's
    script: a script without a main guard runs its top level there, and anomaly-ae's work must not
    run again in it. The script's own process then sees that workers cannot start and decodes
    images itself, with a warning that says how to fix the script."""
    # The flag multiprocessing itself sets while a child imports the parent's main module (and
    # checks before starting a process from there); absent everywhere else.
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(1)


def _close_pool(pool: ProcessPoolExecutor, finished: bool) -> None:
    """All work done: wait for the workers to exit. Interrupted (Ctrl-C, an error downstream):
    drop the queued chunks and return at once; the workers finish the chunk in hand and exit."""
    if finished:
        pool.shutdown(wait=True)
    else:
        pool.shutdown(wait=False, cancel_futures=True)


def decode_chunks(
    jobs: Iterable[tuple], policy: Preprocess, *, max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None, chunk: int | None = None, n_jobs: int | None = None,
) -> Iterator[tuple[list, Chunk]]:
    """Decode `(path, mask_path)` jobs, yielding (the chunk's jobs, its Chunk) in the order of `jobs`.

    Memory stays bounded: at most ``2 * workers`` chunks are in flight. With one worker, or
    fewer than MIN_FILES_FOR_POOL jobs (when `n_jobs` says so), decoding runs in this process.
    """
    leave_if_importing_script()
    workers = workers or default_workers()
    # About CHUNK_BYTES of pixels per chunk (fewer, larger messages for small images).
    chunk = chunk or int(np.clip(CHUNK_BYTES // (policy.height * policy.width * policy.n_channels), 4, 256))
    # A daemonic process (a Dask or multiprocessing worker) may not start children: decode here.
    if (workers <= 1 or multiprocessing.current_process().daemon or _workers_start is False
            or (n_jobs is not None and n_jobs < MIN_FILES_FOR_POOL)):
        for block in _chunks(iter(jobs), chunk):
            yield block, _decode_chunk(block, policy.to_dict(), max_pixels)
        return
    yield from _decode_pooled(iter(jobs), policy, max_pixels, workers, chunk)


def _chunks(it: Iterator, size: int) -> Iterator[list]:
    while True:
        block = [job for _, job in zip(range(size), it)]
        if not block:
            return
        yield block


def _decode_pooled(jobs, policy, max_pixels, workers, chunk) -> Iterator[tuple[list, Chunk]]:
    pdict = policy.to_dict()
    pending: deque = deque()
    pool = _make_pool(workers)
    finished = False
    try:
        for block in _chunks(jobs, chunk):
            pool, fut = _submit(pool, workers, block, pdict, max_pixels)
            pending.append((block, fut))
            if len(pending) >= 2 * workers:
                yield _collect(*pending.popleft(), policy, max_pixels)
        while pending:
            yield _collect(*pending.popleft(), policy, max_pixels)
        finished = True
    finally:
        for _, fut in pending:
            if fut is not None:
                fut.cancel()
        _close_pool(pool, finished)


def _submit(pool, workers, block, pdict, max_pixels):
    """Queue `block`; returns the pool (a fresh one if a worker's death broke the old one) and the
    block's future, or None for a block to decode here (no worker process can start)."""
    if _workers_start is False:
        return pool, None
    try:
        return pool, pool.submit(_decode_chunk, block, pdict, max_pixels)
    except BrokenProcessPool:  # an earlier chunk killed a worker: start afresh
        pool.shutdown(wait=False, cancel_futures=True)
        if not _workers_can_start():
            return pool, None
        pool = _make_pool(workers)
        return pool, pool.submit(_decode_chunk, block, pdict, max_pixels)


def _collect(block, fut, policy, max_pixels) -> tuple[list, Chunk]:
    """A block's results; if its worker died (a decoder crash), isolate the file that did it."""
    if fut is not None:
        try:
            return block, fut.result()
        except BrokenProcessPool:
            if _workers_can_start():
                log.warning("a decode worker died; retrying %d files one by one", len(block))
                return block, Chunk.pack([_decode_isolated(path, mask, policy, max_pixels)
                                          for path, mask in block], policy.height * policy.width)
    return block, _decode_chunk(block, policy.to_dict(), max_pixels)


# Whether decode workers can start in this process: None until a broken pool makes it a question.
_workers_start: bool | None = None


def _workers_can_start() -> bool:
    """Start one worker with nothing to do (once per process): a pool that breaks before any
    file reaches it means workers die as they start (a script that re-runs its work in every
    worker it imports), not that a file crashed a decoder. If so, decode here from then on."""
    global _workers_start
    if _workers_start is None:
        try:
            with _make_pool(1) as pool:
                pool.submit(os.getpid).result()
            _workers_start = True
        except BrokenProcessPool:
            _workers_start = False
            log.warning(
                "Decode worker processes cannot start, so images are decoded in this process (slower). "
                "In a Python script that calls anomaly-ae, put the script's work under "
                "`if __name__ == \"__main__\":` (each worker process imports the script).")
    return _workers_start


def _decode_isolated(path, mask, policy, max_pixels) -> Decoded:
    with _make_pool(1) as pool:
        try:
            return pool.submit(decode_one, path, mask, policy, max_pixels).result()
        except BrokenProcessPool:
            return Decoded(None, None, 0, 0, "", "", False, "the image decoder crashed on this file")
