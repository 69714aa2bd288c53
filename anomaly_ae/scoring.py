"""Batch scoring: a folder or Parquet dataset in, the run's tables out, in bounded memory.

Scoring runs in partitions (one by default; several when a task runner fans out), each
streaming bounded batches through the model and writing part files; `finalize` merges the
parts into the run folder:

- ``scores.parquet``: every item with score, p-value, flag and rank (1 = most anomalous);
- ``flagged.csv``: the flagged items by descending score;
- ``error_maps.parquet``: the per-pixel error map of every flagged item;
- ``examples.parquet``: top-scoring and borderline items with image, reconstruction and map;
- ``metrics.json`` (when labels are known), ``rejects.parquet`` and ``run.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomaly_ae.dataset import NORMAL_NAMES, Dataset
from anomaly_ae.errors import DataError
from anomaly_ae.imaging import Preprocess
from anomaly_ae.ingest import image_id
from anomaly_ae.metrics import PixelSamples
from anomaly_ae.parallel import decode_chunks
from anomaly_ae.schema import TableWriter, fixed_binary, rejects_columns, write_table

log = logging.getLogger(__name__)

EXAMPLES_PER_KIND = 16
META_COLUMNS = ("image_id", "path", "split", "label", "class_name", "sha256")
# Scoring a folder leaves a core to the decode workers (`_model_threads`). The model takes it back
# when decoding an image costs the workers at most DECODE_SHARE of the CPU that scoring it costs
# the model (large images through large networks: the decoders would leave their core idle);
# decided once, after DECIDE_AFTER seconds in the model, when its first call weighs little.
DECODE_SHARE = 0.5
DECIDE_AFTER = 2.0


@dataclass
class Partition:
    """A slice of the input as plain values, so it can be sent to another process."""

    kind: str  # "dataset" or "files"
    dataset: str | None = None
    rows: list[int] = field(default_factory=list)
    files: list[tuple] = field(default_factory=list)  # (key, path, mask_path, class, split, reject)
    masks: bool = False  # whether the whole input has masks (then pixel AUROC is measured)

    def __len__(self) -> int:
        return len(self.rows) if self.kind == "dataset" else len(self.files)


def is_dataset(path: Path | str) -> bool:
    """True for a dataset folder (or its images.parquet)."""
    p = Path(path)
    return (p / "images.parquet").exists() or (p.suffix == ".parquet" and p.exists())


def plan(path: Path | str, policy: Preprocess, n_partitions: int = 1, split: str | None = None,
         classes: list[str] | None = None, files: list[str] | None = None) -> list[Partition]:
    """Partitions covering a folder or dataset (optionally one split, some classes, or exactly the
    `files` given relative to the folder, unlabelled), in input order.

    Raises:
        DataError: no images, a dataset preprocessed differently from the model, or an
            unknown split.
    """
    n_partitions = max(1, int(n_partitions))
    if files is not None:
        from anomaly_ae.sources.folder import display_name

        listed = [(display_name(f), os.path.join(str(path), f), None, None, None, None) for f in files]
        if not listed:
            raise DataError(f"No files to score in {path}.")
        return [Partition("files", files=chunk) for chunk in _split(listed, n_partitions)]
    if is_dataset(path):
        ds = Dataset(path)
        differ = policy.differences(ds.policy)
        if differ:  # its pixels are not what the model's policy makes of the images: scores would mean nothing
            said = "; ".join(f"{name} {theirs} (the model: {ours})" for name, ours, theirs in differ)
            raise DataError(f"{path} was preprocessed unlike the model's images: {said}. Ingest the images again with "
                            f"{policy.ingest_options()}, or score the image folder itself.")
        if split is not None and not ds.has_split(split):
            raise DataError(f"{path} has no '{split}' split. Splits: {', '.join(ds.meta['counts']['by_split'])}.")
        rows = ds.rows(split=split, classes=classes).tolist()
        if not rows:
            raise DataError(f"{path} has no images to score.")
        masks = ds.meta["counts"].get("masks", 0) > 0
        return [Partition("dataset", dataset=str(path), rows=chunk, masks=masks) for chunk in _split(rows, n_partitions)]
    from anomaly_ae.sources.base import require_items
    from anomaly_ae.sources.folder import FolderSource

    listing = require_items(FolderSource(Path(path)).list(), str(path))
    splits = sorted({i.split for i in listing.items if i.split})
    if split is not None and split not in splits and splits:
        raise DataError(f"{path} has no '{split}' split. Splits: {', '.join(splits)}.")
    if split is not None and not splits:
        raise DataError(f"{path} has no splits (no train/ or test/ sub-folders): leave --split out.")
    files = [(i.key, str(i.path), str(i.mask_path) if i.mask_path else None, i.class_name, i.split, i.reject_reason)
             for i in listing.items if (split is None or i.split == split)
             and (classes is None or i.class_name in classes)]
    if not files:
        raise DataError(f"No images in {path} for split {split or 'any'} and classes {classes or 'any'}.")
    masks = any(f[2] for f in files)
    return [Partition("files", files=chunk, masks=masks) for chunk in _split(files, n_partitions)]


def _split(seq: list, n: int) -> list[list]:
    bounds = np.linspace(0, len(seq), min(n, len(seq)) + 1).round().astype(int)
    return [seq[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def batch_size_for(policy: Preprocess) -> int:
    """Images per batch: about 16M pixel values, within 8..256."""
    return int(np.clip(2**24 // (policy.height * policy.width * policy.n_channels), 8, 256))


def iter_batches(part: Partition, policy: Preprocess, batch_size: int, workers: int | None,
                 rejects: list, decode_cost: list | None = None) -> Iterator[tuple[dict, np.ndarray, list]]:
    """(metadata columns, pixels (n,h,w,c), masks (list of (h,w) or None)) per batch.

    Files that cannot be decoded are appended to `rejects` as (path, reason); `decode_cost`
    ([CPU seconds, files]) adds up what decoding the files cost the decoding processes.
    """
    if part.kind == "dataset":
        ds = Dataset(part.dataset)
        with_masks = ds.meta["counts"].get("masks", 0) > 0
        for index, pixels, masks in ds.iter_batches(np.asarray(part.rows), batch_size, with_masks):
            meta = {c: index[c].to_pylist() for c in ("image_id", "split", "label", "class_name", "sha256")}
            meta["path"] = index["source"].to_pylist()
            yield meta, pixels, masks if masks is not None else [None] * len(pixels)
        return
    usable = [f for f in part.files if f[5] is None]
    rejects.extend((f[0], f[5]) for f in part.files if f[5] is not None)
    chunks = decode_chunks(((f[1], f[2]) for f in usable), policy, workers=workers, n_jobs=len(usable))
    meta, pix, masks, pos = _empty_meta(), [], [], 0
    for jobs, chunk in chunks:
        files, pos = usable[pos: pos + len(jobs)], pos + len(jobs)
        if decode_cost is not None:
            decode_cost[0] += chunk.cpu_seconds
            decode_cost[1] += len(jobs)
        rejects.extend((f[0], r) for f, r in zip(files, chunk.reasons) if r is not None)
        ok = [f for f, r in zip(files, chunk.reasons) if r is None]
        for k, col in zip(META_COLUMNS, ([image_id(f[0]) for f in ok], [f[0] for f in ok], [f[4] for f in ok],
                                         [None] * len(ok), [f[3] for f in ok], chunk.sha256)):
            meta[k] += col
        pix.append(chunk.pixel_array(policy.shape))
        masks += chunk.mask_list(policy.shape[:2])
        while len(masks) >= batch_size:
            stacked = np.concatenate(pix)
            yield {k: v[:batch_size] for k, v in meta.items()}, stacked[:batch_size], masks[:batch_size]
            meta = {k: v[batch_size:] for k, v in meta.items()}
            pix, masks = [stacked[batch_size:]], masks[batch_size:]
    if masks:
        yield meta, np.concatenate(pix), masks


def _empty_meta() -> dict:
    return {k: [] for k in META_COLUMNS}


def labels_known(parts: list[Partition], normal: set[str]) -> bool:
    """Labels count as known when some input class is a normal class (or good/normal/ok)."""
    for part in parts:
        if part.kind == "files":
            if any(f[3] in normal for f in part.files):
                return True
        else:
            ds = Dataset(part.dataset)
            if any(c in normal for c in ds.classes):
                return True
    return False


def normal_names(model_normal: list[str]) -> set[str]:
    """Class names that count as normal: the model's normal classes plus good/normal/ok."""
    return set(model_normal) | set(NORMAL_NAMES)


class _Best:
    """Keep the `k` records with the largest key (bounded, order-independent on ties)."""

    def __init__(self, k: int):
        self.k, self.items = k, []

    def add(self, key: float, record: dict) -> None:
        self.items.append((key, record["image_id"], record))
        if len(self.items) > 4 * self.k:
            self.prune()

    def prune(self) -> list[dict]:
        self.items.sort(key=lambda t: (-t[0], t[1]))
        del self.items[self.k:]
        return [r for _, _, r in self.items]


_THREADS_LOCK = threading.Lock()
_THREADS_USERS = [0, 0]  # partitions scoring in this process, torch's thread count before the first


def model_threads(det, part: Partition) -> int | None:
    """The thread count `part` is scored with where scoring sets one (`_model_threads`): on the CPU,
    beside decode workers, one core fewer than torch has; None where torch's own count stays."""
    import torch

    from anomaly_ae.parallel import MIN_FILES_FOR_POOL, default_workers

    if not (det.device_.type == "cpu" and part.kind == "files" and len(part) >= MIN_FILES_FOR_POOL):
        return None
    with _THREADS_LOCK:  # (torch's count before any partition of this process changed it)
        before = _THREADS_USERS[1] if _THREADS_USERS[0] else torch.get_num_threads()
    return max(1, min(before, default_workers() - 1))


class _ModelThreads:
    """The model's thread count while one partition scores: `threads` (one core left to the
    decoders), or None where torch's own count stays. `review` gives the core back to the model
    once, when decoding turns out cheap beside scoring (DECODE_SHARE)."""

    def __init__(self, threads: int | None):
        self.threads, self.decided = threads, threads is None

    def review(self, decode_cost: list, model_seconds: float, scored: int) -> None:
        """After each batch: `decode_cost` as `iter_batches` adds it up, the seconds spent in the
        model so far and the items it scored."""
        if self.decided or model_seconds < DECIDE_AFTER or not scored or not decode_cost[1]:
            return
        import torch

        self.decided = True
        decode, model = decode_cost[0] / decode_cost[1], model_seconds * self.threads / scored
        with _THREADS_LOCK:
            if decode <= DECODE_SHARE * model and _THREADS_USERS[0] == 1 and _THREADS_USERS[1] > self.threads:
                torch.set_num_threads(_THREADS_USERS[1])
                log.debug("decoding costs %.2g CPU s an item, the model %.2g: the model now scores on %d threads",
                          decode, model, _THREADS_USERS[1])


@contextlib.contextmanager
def _model_threads(det, part: Partition):
    """On the CPU, leave one core to the decode workers: measured faster on 2 cores than letting
    the model's threads and the decoders contend for every core (15% on 2026-11-26, and again on
    2026-12-07: bench/README.md) where decoding costs about what the model does (small images). Torch's
    thread count is process-wide, so concurrent partitions share one setting, restored by the
    last to finish; it yields the partition's `_ModelThreads`."""
    import torch

    threads = model_threads(det, part)
    if threads is None:
        yield _ModelThreads(None)
        return
    with _THREADS_LOCK:
        if _THREADS_USERS[0] == 0:
            _THREADS_USERS[1] = torch.get_num_threads()
            torch.set_num_threads(threads)
        _THREADS_USERS[0] += 1
    try:
        yield _ModelThreads(threads)
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS[0] -= 1
            if _THREADS_USERS[0] == 0:
                torch.set_num_threads(_THREADS_USERS[1])


def score_partition(det, part: Partition, part_dir: Path, *, threshold: float, normal: set[str] | None,
                    batch_size: int | None = None, workers: int | None = None, progress=None) -> dict:
    """Score one partition into part files in `part_dir`; returns counts and timings.

    `normal` is the set of normal class names, or None when labels are unknown.
    """
    policy = Preprocess.from_dict(det.meta_["preprocess"])
    rejects: list = []
    decode_cost = [0.0, 0]
    batches = iter_batches(part, policy, batch_size or batch_size_for(policy), workers, rejects, decode_cost)
    timing = {"decode": 0.0, "model": 0.0}
    with (_model_threads(det, part) as threads, contextlib.closing(batches),
          _PartWriter(part_dir, threshold, part.masks) as out):
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            timing["decode"] += time.perf_counter() - t0
            if batch is None:
                break
            meta, px, masks = batch
            t0 = time.perf_counter()
            scores, recon, maps = det.score_with_maps(px)
            timing["model"] += time.perf_counter() - t0
            anomalous = [None if normal is None or c is None else c not in normal for c in meta["class_name"]]
            out.add(meta, anomalous, scores, det.p_values(scores), px, recon, maps, masks)
            threads.review(decode_cost, timing["model"], out.done)
            if progress:
                progress(out.done, len(part))
        out.finish(rejects)
    return {"scored": out.done, "rejects": len(rejects), "seconds": timing}


class _PartWriter:
    """A partition's part files: scores, flagged error maps, example candidates, pixel samples."""

    def __init__(self, part_dir: Path, threshold: float, with_masks: bool):
        part_dir.mkdir(parents=True, exist_ok=True)
        self.dir, self.threshold, self.with_masks = part_dir, threshold, with_masks
        self.top, self.border = _Best(EXAMPLES_PER_KIND), _Best(EXAMPLES_PER_KIND)
        self.pixels, self.done = PixelSamples(), 0

    def __enter__(self) -> _PartWriter:
        self.scores_w = TableWriter(self.dir / "scores.parquet", "scores")
        self.maps_w = TableWriter(self.dir / "error_maps.parquet", "error_maps")
        return self

    def __exit__(self, *exc) -> None:
        self.scores_w.close()
        self.maps_w.close()

    def add(self, meta, anomalous, scores, pvals, px, recon, maps, masks) -> None:
        """One scored batch."""
        flagged = scores > self.threshold
        self.scores_w.write({**meta, "is_anomaly": anomalous, "score": scores, "p_value": pvals,
                             "flagged": flagged, "rank": np.zeros(len(scores), np.int64)})
        f_idx = np.flatnonzero(flagged)
        if len(f_idx):
            self.maps_w.write({"image_id": [meta["image_id"][k] for k in f_idx],
                               "path": [meta["path"][k] for k in f_idx], "score": scores[f_idx],
                               "error_map": fixed_binary(maps[f_idx].astype("<f2").tobytes(), len(f_idx))})
        if self.with_masks:  # pixel AUROC: defect pixels of masked images against every normal image's pixels
            for k in range(len(scores)):
                if masks[k] is not None or anomalous[k] is False:
                    mask = masks[k] if masks[k] is not None else np.zeros(maps[k].shape, np.uint8)
                    self.pixels.add(meta["image_id"][k], maps[k], mask)
        for k in _candidates(scores, self.threshold):
            rec = _example(meta, k, scores, pvals, flagged, anomalous, px, recon, maps, masks)
            self.top.add(scores[k], rec)
            self.border.add(-abs(scores[k] - self.threshold), rec)
        self.done += len(scores)

    def finish(self, rejects: list) -> None:
        """The example candidates, pixel samples and rejects."""
        examples = ([dict(r, kind="top") for r in self.top.prune()]
                    + [dict(r, kind="borderline") for r in self.border.prune()])
        write_table(self.dir / "examples.parquet", "examples", _columns(examples, "examples"))
        np.savez(self.dir / "pixels.npz", *self.pixels.arrays())
        write_table(self.dir / "rejects.parquet", "rejects", rejects_columns(rejects))


def _candidates(scores: np.ndarray, threshold: float) -> set[int]:
    k = EXAMPLES_PER_KIND
    return set(np.argsort(-scores, kind="stable")[:k].tolist()) | set(
        np.argsort(np.abs(scores - threshold), kind="stable")[:k].tolist())


def _example(meta, k, scores, pvals, flagged, anomalous, px, recon, maps, masks) -> dict:
    return {"image_id": meta["image_id"][k], "path": meta["path"][k], "class_name": meta["class_name"][k],
            "is_anomaly": anomalous[k], "score": float(scores[k]), "p_value": float(pvals[k]),
            "flagged": bool(flagged[k]), "pixels": px[k].tobytes(),
            "recon": np.clip(np.rint(recon[k] * 255), 0, 255).astype(np.uint8).tobytes(),
            "error_map": maps[k].astype("<f2").tobytes(),
            "mask": masks[k].tobytes() if masks[k] is not None else None}


def _columns(records: list[dict], table: str) -> dict:
    from anomaly_ae.schema import SCHEMAS

    return {name: [r.get(name) for r in records] for name in SCHEMAS[table][1].names}
