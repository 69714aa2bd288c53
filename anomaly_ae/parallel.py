"""Decode image files in worker processes: in input order, with a bounded number in flight.

Ingest and scoring both decode through `decode_files`, so a file is read, hashed and turned
into working-size pixels by exactly the same code wherever it enters the product.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator, NamedTuple

from anomaly_ae.fsio import close_inherited_locks
from anomaly_ae.imaging import (
    DEFAULT_MAX_PIXELS, Preprocess, Rejected, is_gray, mask_pixels, open_image, read_file_bytes,
    sha256_hex, to_pixels,
)

log = logging.getLogger(__name__)

# Below this many files a process pool costs more to start than it saves.
MIN_FILES_FOR_POOL = 48


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


def _decode_chunk(jobs, policy_dict, max_pixels) -> list[Decoded]:
    policy = Preprocess.from_dict(policy_dict)
    return [decode_one(path, mask, policy, max_pixels) for path, mask in jobs]


def _make_pool(workers: int) -> ProcessPoolExecutor:
    # fork on Linux: workers start at once and never re-run the caller's script (as spawn and
    # forkserver do when a script lacks a __main__ guard). Workers only decode with Pillow and
    # numpy; they never touch torch, whose threads a fork would not carry over.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=close_inherited_locks)


def decode_files(
    jobs: Iterable[tuple], policy: Preprocess, *, max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None, chunk: int = 32, n_jobs: int | None = None,
) -> Iterator[Decoded]:
    """Decode `(path, mask_path)` jobs, yielding `Decoded` results in the order of `jobs`.

    Memory stays bounded: at most ``2 * workers`` chunks are in flight. With one worker, or
    fewer than MIN_FILES_FOR_POOL jobs (when `n_jobs` says so), decoding runs in this process.
    """
    workers = workers or default_workers()
    if workers <= 1 or (n_jobs is not None and n_jobs < MIN_FILES_FOR_POOL):
        for path, mask in jobs:
            yield decode_one(path, mask, policy, max_pixels)
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
                yield from _result_or_retry(*pending.popleft(), policy, max_pixels)
        while pending:
            yield from _result_or_retry(*pending.popleft(), policy, max_pixels)
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _result_or_retry(block, fut, policy, max_pixels) -> list[Decoded]:
    """A chunk's results; if its worker died (a decoder crash), isolate the file that did it."""
    try:
        return fut.result()
    except BrokenProcessPool:
        log.warning("a decode worker died; retrying %d files one by one", len(block))
        return [_decode_isolated(path, mask, policy, max_pixels) for path, mask in block]


def _decode_isolated(path, mask, policy, max_pixels) -> Decoded:
    with _make_pool(1) as pool:
        try:
            return pool.submit(decode_one, path, mask, policy, max_pixels).result()
        except BrokenProcessPool:
            return Decoded(None, None, 0, 0, "", "", False, "the image decoder crashed on this file")
