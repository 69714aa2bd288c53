"""Decode image files in worker processes: in input order, with a bounded number in flight.

Ingest and scoring both decode through `decode_chunks`, so a file is read, hashed and turned
into working-size pixels by exactly the same code wherever it enters the product.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
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
    read_file_bytes,
    sha256_hex,
    to_pixels,
)
from anomaly_ae.locks import close_inherited_locks

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


@dataclass
class Chunk:
    """The decoded files of one chunk, packed for a cheap trip between processes.

    `reasons` has one entry per file (None when decoded); every other list has one entry per
    decoded file, and `pixels` / `masks` hold their bytes back to back (a zero mask where a
    file has none).
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

    @classmethod
    def pack(cls, decoded: list[Decoded], mask_size: int) -> Chunk:
        """One Chunk from per-file results."""
        ok = [d for d in decoded if d.reason is None]
        return cls([d.reason for d in decoded], b"".join(d.pixels for d in ok),
                   b"".join(d.mask or bytes(mask_size) for d in ok) if any(d.mask for d in ok) else b"",
                   [d.mask is not None for d in ok], [d.orig_height for d in ok], [d.orig_width for d in ok],
                   [d.orig_mode for d in ok], [d.sha256 for d in ok], [d.gray for d in ok])

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
    try:
        data = read_file_bytes(path)
        img = open_image(data, max_pixels)
        mask = None
        if mask_path is not None:
            try:
                mask = mask_pixels(read_file_bytes(mask_path), policy, max_pixels).tobytes()
            except Rejected as exc:
                raise Rejected(f"its mask {os.fsdecode(mask_path)!r} is unusable: {exc}") from None
        pixels = to_pixels(img, policy)
        return Decoded(pixels.tobytes(), mask, img.height, img.width, img.mode,
                       sha256_hex(data), is_gray(img))
    except Rejected as exc:
        return Decoded(None, None, 0, 0, "", "", False, str(exc))
    except MemoryError:
        return Decoded(None, None, 0, 0, "", "", False, "not enough memory to decode this image")


def _decode_chunk(jobs, policy_dict, max_pixels) -> Chunk:
    policy = Preprocess.from_dict(policy_dict)
    return Chunk.pack([decode_one(path, mask, policy, max_pixels) for path, mask in jobs],
                      policy.height * policy.width)


def _worker_init() -> None:
    """In each decode worker: drop the parent's lock descriptors, and leave as soon as the parent
    is gone (killed with SIGKILL, say), instead of waiting forever for work that will not come."""
    close_inherited_locks()
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _make_pool(workers: int) -> ProcessPoolExecutor:
    # fork on Linux: workers start at once and never re-run the caller's script (as spawn and
    # forkserver do when a script lacks a __main__ guard). Workers only decode with Pillow and
    # numpy; they never touch torch, whose threads a fork would not carry over.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_worker_init)


def decode_chunks(
    jobs: Iterable[tuple], policy: Preprocess, *, max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None, chunk: int | None = None, n_jobs: int | None = None,
) -> Iterator[tuple[list, Chunk]]:
    """Decode `(path, mask_path)` jobs, yielding (the chunk's jobs, its Chunk) in the order of `jobs`.

    Memory stays bounded: at most ``2 * workers`` chunks are in flight. With one worker, or
    fewer than MIN_FILES_FOR_POOL jobs (when `n_jobs` says so), decoding runs in this process.
    """
    workers = workers or default_workers()
    # About CHUNK_BYTES of pixels per chunk (fewer, larger messages for small images).
    chunk = chunk or int(np.clip(CHUNK_BYTES // (policy.height * policy.width * policy.n_channels), 4, 256))
    # A daemonic process (a Dask or multiprocessing worker) may not start children: decode here.
    if workers <= 1 or multiprocessing.current_process().daemon or (n_jobs is not None and n_jobs < MIN_FILES_FOR_POOL):
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


def _decode_pooled(jobs, policy, max_pixels, workers, chunk) -> Iterator[Decoded]:
    pdict = policy.to_dict()
    pending: deque = deque()
    pool = _make_pool(workers)
    try:
        for block in _chunks(jobs, chunk):
            try:
                fut = pool.submit(_decode_chunk, block, pdict, max_pixels)
            except BrokenProcessPool:  # an earlier chunk killed a worker: start afresh
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _make_pool(workers)
                fut = pool.submit(_decode_chunk, block, pdict, max_pixels)
            pending.append((block, fut))
            if len(pending) >= 2 * workers:
                block0, fut0 = pending.popleft()
                yield block0, _result_or_retry(block0, fut0, policy, max_pixels)
        while pending:
            block0, fut0 = pending.popleft()
            yield block0, _result_or_retry(block0, fut0, policy, max_pixels)
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _result_or_retry(block, fut, policy, max_pixels) -> Chunk:
    """A chunk's results; if its worker died (a decoder crash), isolate the file that did it."""
    try:
        return fut.result()
    except BrokenProcessPool:
        log.warning("a decode worker died; retrying %d files one by one", len(block))
        return Chunk.pack([_decode_isolated(path, mask, policy, max_pixels) for path, mask in block],
                          policy.height * policy.width)


def _decode_isolated(path, mask, policy, max_pixels) -> Decoded:
    with _make_pool(1) as pool:
        try:
            return pool.submit(decode_one, path, mask, policy, max_pixels).result()
        except BrokenProcessPool:
            return Decoded(None, None, 0, 0, "", "", False, "the image decoder crashed on this file")
