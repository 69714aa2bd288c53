"""Source -> Parquet dataset: decoded once, streamed row group by row group, written atomically.

A dataset is a folder:

- ``images.parquet``: one row per image (schema ``images`` in schema.py), pixels at the
  working size; the footer holds the dataset metadata (shape, classes, preprocessing, counts);
- ``rejects.parquet``: every input that could not be used, with the reason;
- ``dataset.json``: the same metadata, for people.

The folder appears only when complete; the same ingest run twice gives the same rows, ids and order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from anomaly_ae import __version__
from anomaly_ae.config import IngestConfig
from anomaly_ae.errors import DataError
from anomaly_ae.fsio import atomic_dir, atomic_write_json
from anomaly_ae.imaging import (
    DECODE_VERSION,
    PolicyRequest,
    Preprocess,
    Rejected,
    array_to_pixels,
    sha256_hex,
)
from anomaly_ae.parallel import Chunk, Decoded, decode_chunks, decode_one
from anomaly_ae.schema import SCHEMAS, TableWriter, column, fixed_binary, rejects_columns, write_table
from anomaly_ae.sources.base import Item, Listing, assign_test_split, require_items

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
ROW_GROUP_BYTES = 16 * 2**20
UNSPLIT, UNLABELLED = "unsplit", "(unlabelled)"


class _Revise(Exception):
    """An image contradicts an inferred part of the policy: start again with `policy`."""

    def __init__(self, policy: Preprocess):
        self.policy = policy


def image_id(key: str) -> str:
    """Stable id of an image from its source key (relative path or split/index)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def rows_per_group(policy: Preprocess) -> int:
    """Rows per row group: about ROW_GROUP_BYTES of pixels, within 64..8192 rows."""
    return int(np.clip(ROW_GROUP_BYTES // (policy.height * policy.width * policy.n_channels), 64, 8192))


def fingerprint(listing: Listing, config: IngestConfig, known: dict | None = None) -> str:
    """A hash of what the dataset is made from: the files' names, sizes and times, and the settings.
    `known`: {path: (size, modification time in ns)} of files already looked at (not looked up again)."""
    parts = listing.fingerprint_parts_knowing(known or {})
    payload = json.dumps([DECODE_VERSION, listing.description.get("spec"), parts, *config.fingerprint_parts()],
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def ingest(
    listing: Listing, out: Path, config: IngestConfig = IngestConfig(), *, workers: int | None = None,
    overwrite: bool = False, progress: Progress | None = None, protect: tuple[Path, ...] = (),
) -> dict:
    """Write `listing`'s images as a Parquet dataset in folder `out`.

    Args:
        listing: what a source listed (see anomaly_ae.sources).
        out: the dataset folder to create.
        config: working size, channels, crop and resize (unset parts are inferred from the data), the
            seeded per-class test share for unsplit data, and the decompression-bomb guard.
        workers: decode processes (default: all cores).
        overwrite: replace an existing dataset at `out` (never a folder of anything else).
        progress: called with (done, total) as images are processed.
        protect: paths being read (the source folder): `out` may be none of them nor hold one.

    Returns:
        The dataset metadata (as written to dataset.json).

    Raises:
        DataError: no images, none readable, `out` exists without `overwrite`, or `out` is not a
            dataset or would replace a protected path.
        NoSpaceError: the disk filled up; nothing was kept.
    """
    require_items(listing, listing.description.get("spec", str(out)))
    request, max_pixels = PolicyRequest.of(config), config.max_pixels
    if config.test_fraction is not None:
        if all(i.split is None for i in listing.items):
            assign_test_split(listing.items, config.test_fraction, config.seed)
        else:
            log.warning("test_fraction ignored: the source already has its own splits")
    extra = {"options": dataclasses.asdict(config), "anomaly_ae_version": __version__, "source": listing.description}
    policy = _initial_policy(listing.items, request, max_pixels)
    with atomic_dir(out, overwrite=overwrite, kind="dataset", protect=protect) as tmp:
        for _ in range(3):  # at most a size and a channel revision
            try:
                meta = _write(tmp, listing, config, policy, request, max_pixels, workers, progress, extra)
                break
            except _Revise as rev:
                log.info("images differ from the first one; restarting with %s", rev.policy)
                policy = rev.policy
        atomic_write_json(tmp / "dataset.json", meta)
    return meta


def _initial_policy(items: list[Item], request: PolicyRequest, max_pixels: int) -> Preprocess:
    if request.size and request.channels:
        return request.resolve(*request.size, request.channels == "L")  # the image's own size and colour unused
    probe = Preprocess(1, 1, "L", request.resize)
    for item in items[:1000]:
        if item.reject_reason:
            continue
        if item.array is not None:
            a = item.array
            return request.resolve(a.shape[0], a.shape[1], a.ndim == 2 or a.shape[2] == 1)
        d = decode_one(item.path, None, probe, max_pixels)
        if d.reason is None:
            return request.resolve(d.orig_height, d.orig_width, d.gray)
    return request.resolve(*(request.size or (256, 256)), True)


def _chunk_stream(items: list[Item], policy: Preprocess, max_pixels, workers) -> Iterator[tuple[list, Chunk]]:
    """(items, their Chunk) in listing order: files decoded in worker processes, arrays here."""
    if items and items[0].array is not None:
        for lo in range(0, len(items), 512):
            block = items[lo: lo + 512]
            yield block, Chunk.pack([_decode_array(i.array, policy) for i in block], policy.height * policy.width)
        return
    pos = 0
    for jobs, chunk in decode_chunks(((i.path, i.mask_path) for i in items), policy, max_pixels=max_pixels,
                                     workers=workers, n_jobs=len(items)):
        yield items[pos: pos + len(jobs)], chunk
        pos += len(jobs)


def _decode_array(arr: np.ndarray, policy: Preprocess) -> Decoded:
    try:
        pixels = array_to_pixels(arr, policy).tobytes()
    except Rejected as exc:
        return Decoded(None, None, 0, 0, "", "", False, str(exc))
    gray = arr.ndim == 2 or arr.shape[2] == 1
    return Decoded(pixels, None, arr.shape[0], arr.shape[1], "L" if gray else "RGB",
                   sha256_hex(np.ascontiguousarray(arr).tobytes()), gray)


class _Rows:
    """The rows of one row group, gathered chunk by chunk; pixels stay in the chunks' blobs."""

    def __init__(self, policy: Preprocess):
        self.mask_size = policy.height * policy.width
        self.cols: dict = {k: [] for k in ("image_id", "source", "label", "class_name", "split", "orig_height",
                                           "orig_width", "orig_mode", "sha256")}
        self.blobs: list[bytes] = []
        self.masks: list = []

    def __len__(self) -> int:
        return len(self.cols["image_id"])

    def add(self, items: list[Item], chunk: Chunk) -> None:
        c = self.cols
        c["image_id"] += [image_id(i.key) for i in items]
        c["source"] += [i.key for i in items]
        c["label"] += [i.label for i in items]
        c["class_name"] += [i.class_name for i in items]
        c["split"] += [i.split for i in items]
        for key in ("orig_height", "orig_width", "orig_mode", "sha256"):
            c[key] += getattr(chunk, key)
        self.blobs.append(chunk.pixels)
        m = self.mask_size
        self.masks += [chunk.masks[k * m:(k + 1) * m] if has else None for k, has in enumerate(chunk.has_mask)]

    def table(self) -> pa.Table:
        """The row group as an Arrow table (pixels as one buffer, no per-image copies)."""
        n = len(self)
        pixels = fixed_binary(b"".join(self.blobs), n)
        masks = column(self.masks, pa.binary()) if any(m is not None for m in self.masks) else pa.nulls(n, pa.binary())
        cols = {k: column(v, SCHEMAS["images"][1].field(k).type) for k, v in self.cols.items()}
        return pa.table({**cols, "pixels": pixels, "mask": masks})


def _revision(request: PolicyRequest, policy: Preprocess, chunk: Chunk) -> Preprocess | None:
    """A corrected policy when a decoded image contradicts an inferred part of `policy`."""
    size = (policy.height, policy.width)
    for h, w, gray in zip(chunk.orig_height, chunk.orig_width, chunk.gray):
        if (h, w) != size or not gray:
            revised = request.revise(policy, h, w, gray)
            if revised is not None:
                return revised
    return None


def _write(tmp: Path, listing: Listing, config: IngestConfig, policy: Preprocess, request: PolicyRequest,
           max_pixels: int, workers, progress, extra: dict) -> dict:
    writer = TableWriter(tmp / "images.parquet", "images")
    try:
        counts, rejects, n_masks, known = _write_rows(writer, listing, policy, request, max_pixels, workers, progress)
        if writer.rows == 0:
            reasons = Counter(r for _, r in rejects).most_common(3)
            raise DataError(f"None of the {len(listing.items)} images could be used. Most common reasons: "
                            + "; ".join(f"{r} ({n})" for r, n in reasons))
        meta = {**_metadata(listing, policy, counts, n_masks, rejects, rows_per_group(policy)), **extra,
                "fingerprint": fingerprint(listing, config, known)}
        writer.set_metadata(meta)
    finally:
        writer.close()
    write_table(tmp / "rejects.parquet", "rejects", rejects_columns(rejects))
    return meta


def _write_rows(writer: TableWriter, listing: Listing, policy: Preprocess, request: PolicyRequest,
                max_pixels: int, workers, progress) -> tuple[Counter, list, int, dict]:
    """Stream the images into `writer` row group by row group; returns counts, rejects, masks and
    the files' facts as read ({path: (size, modification time in ns) or None})."""
    known: dict = {}
    counts: Counter = Counter()
    rejects = [(i.key, i.reject_reason) for i in listing.items if i.reject_reason]
    usable = [i for i in listing.items if not i.reject_reason]
    rows, total, done, n_masks = _Rows(policy), len(listing.items), len(rejects), 0
    depth = _BitDepth()
    stream = _chunk_stream(usable, policy, max_pixels, workers)
    with contextlib.closing(stream):
        for items, chunk in stream:
            revised = _revision(request, policy, chunk)
            if revised is not None:
                raise _Revise(revised)
            ok = [i for i, reason in zip(items, chunk.reasons) if reason is None]
            rejects += [(i.key, reason) for i, reason in zip(items, chunk.reasons) if reason is not None]
            rows.add(ok, chunk)
            depth.add(chunk, policy)
            counts.update((i.split or UNSPLIT, i.class_name or UNLABELLED) for i in ok)
            n_masks += sum(chunk.has_mask)
            known.update(zip((i.path for i in items), chunk.file_stats))
            if any(chunk.mask_stats):
                known.update((os.fspath(i.mask_path), st) for i, st in zip(items, chunk.mask_stats) if st)
            if len(rows) >= rows_per_group(policy):
                writer.write(rows.table())
                rows = _Rows(policy)
            done += len(items)
            if progress:
                progress(done, total)
    if len(rows):
        writer.write(rows.table())
    depth.tell(policy)
    return counts, rejects, n_masks, known


class _BitDepth:
    """Whether the 16-bit images use only the low bits of their range (12-bit cameras write such
    PNGs): scaled as 16-bit, as every 16-bit image is without a bit depth, they are stored nearly
    black. With a bit depth: whether images are brighter than it holds (clipped to white)."""

    # The brightest stored value (of 255) at or below which they used 12 bits or fewer (4095 / 257).
    LOW = 16

    def __init__(self):
        self.n, self.brightest, self.over, self.images, self.scaled = 0, 0, 0, 0, 0

    def add(self, chunk: Chunk, policy: Preprocess) -> None:
        if policy.bit_depth is not None:
            self.over += sum(chunk.over_range)
            self.images += len(chunk.orig_mode)
            self.scaled += sum(mode[:1] == "I" for mode in chunk.orig_mode)
            return
        deep = [k for k, mode in enumerate(chunk.orig_mode) if mode.startswith("I;16")]
        if deep:
            self.n += len(deep)
            self.brightest = max(self.brightest, int(chunk.pixel_array(policy.shape)[deep].max()))

    def tell(self, policy: Preprocess) -> None:
        if policy.bit_depth is not None and self.images and not self.scaled:
            log.warning("--bit-depth %d changed nothing: none of the %d images is a 16-bit gray image (8-bit and "
                        "colour images are read as they are). Leave it out for these images", policy.bit_depth,
                        self.images)
        if self.over:
            log.warning("%d images hold values above the %d-bit range of --bit-depth %d (up to %d): their brightest "
                        "parts are stored as white. Ingest again with the bit depth their camera writes",
                        self.over, policy.bit_depth, policy.bit_depth, 2 ** policy.bit_depth - 1)
        if self.n and self.brightest <= self.LOW:
            log.warning("%d images are 16-bit but use at most 12 bits of it (the brightest pixel of all of them is "
                        "stored as %d of 255): scaled from the 16-bit range, they are nearly black and keep about "
                        "%d grey levels. Ingest them with the bit depth their camera writes (e.g. --bit-depth 12)",
                        self.n, self.brightest, self.brightest + 1)


def _metadata(listing: Listing, policy: Preprocess, counts: Counter, n_masks: int,
              rejects: list, per_group: int) -> dict:
    by_split: dict = {}
    for (split, cls), n in sorted(counts.items()):
        by_split.setdefault(split, {})[cls] = n
    return {
        "image_shape": list(policy.shape), "preprocess": policy.to_dict(), "classes": listing.classes,
        "counts": {"images": sum(counts.values()), "by_split": by_split, "masks": n_masks,
                   "rejects": len(rejects),
                   "ignored_files": listing.description.get("ignored_files", 0)},
        "row_group_rows": per_group,
    }
