"""Parquet dataset -> uint8 arrays: whole selections resident in memory, or streamed in batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from anomaly_ae.errors import DataError
from anomaly_ae.imaging import Preprocess
from anomaly_ae.schema import read_meta

INDEX_COLUMNS = ("image_id", "source", "label", "class_name", "split", "sha256")
NORMAL_NAMES = ("good", "normal", "ok")


def binary_to_array(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Equal-length binary values -> (n, *shape) uint8, without copying when possible."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise DataError("pixel column has missing values; the dataset is damaged. Ingest it again.")
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset: chunk.offset + len(chunk) + 1]
        values = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
        parts.append(values.reshape(len(chunk), *shape))
    if not parts:
        return np.zeros((0, *shape), dtype=np.uint8)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Dataset:
    """A read handle on an ingested dataset folder (see anomaly_ae.ingest)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.file = self.path / "images.parquet" if self.path.is_dir() else self.path
        if not self.file.exists():
            raise DataError(f"{self.path} is not an anomaly-ae dataset (no images.parquet). "
                            "Create one with `anomaly-ae ingest`.")
        self.meta = read_meta(self.file, "images")
        self.policy = Preprocess.from_dict(self.meta["preprocess"])
        self.classes: list[str] = list(self.meta.get("classes", []))
        self._pf = pq.ParquetFile(self.file)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image."""
        return self.policy.shape

    def __len__(self) -> int:
        return self._pf.metadata.num_rows

    def index(self) -> pa.Table:
        """Every row's id, source, label, class and split (no pixels)."""
        return self._pf.read(columns=list(INDEX_COLUMNS))

    def originals(self) -> pa.Table:
        """Every row's original height, width and mode (as its file held it, before preprocessing)."""
        return self._pf.read(columns=["orig_height", "orig_width", "orig_mode"])

    def has_split(self, split: str) -> bool:
        """True when some rows belong to `split`."""
        return split in self.meta.get("counts", {}).get("by_split", {})

    def resolve_classes(self, wanted: Sequence[str]) -> list[str]:
        """Class names from names or label numbers; raises DataError naming what exists."""
        out = []
        for token in wanted:
            token = str(token)
            if token in self.classes:
                out.append(token)
            elif token.lstrip("-").isdigit() and 0 <= int(token) < len(self.classes):
                out.append(self.classes[int(token)])
            else:
                raise DataError(f"Class {token!r} is not in {self.path}. Classes: "
                                f"{', '.join(self.classes) or 'none (unlabelled dataset)'}.")
        return sorted(set(out), key=out.index)

    def default_normal(self) -> list[str]:
        """['good'] (or 'normal'/'ok') when the dataset has such a class, else []."""
        return [c for c in self.classes if c.lower() in NORMAL_NAMES][:1]

    def rows(self, split: str | None = None, classes: Sequence[str] | None = None,
             exclude_split: str | None = None) -> np.ndarray:
        """Row numbers matching a split and a set of class names (None = any)."""
        idx = self._pf.read(columns=["class_name", "split"])
        keep = pa.array(np.ones(idx.num_rows, dtype=bool))
        if split is not None:
            keep = pc.and_(keep, pc.fill_null(pc.equal(idx["split"], split), False))
        if exclude_split is not None:
            keep = pc.and_(keep, pc.fill_null(pc.not_equal(idx["split"], exclude_split), True))
        if classes is not None:
            keep = pc.and_(keep, pc.fill_null(pc.is_in(idx["class_name"], pa.array(list(classes), pa.string())), False))
        return np.flatnonzero(keep.to_numpy(zero_copy_only=False))

    def load(self, rows: np.ndarray | None = None, column: str = "pixels") -> np.ndarray:
        """Pixels (n, H, W, C) or masks (n, H, W) of `rows` (all when None), one row group at a time.

        Rows without a mask get an all-zero mask.
        """
        shape = self.shape if column == "pixels" else self.shape[:2]
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            order = np.argsort(rows, kind="stable")
            if not np.array_equal(order, np.arange(len(rows))):  # read in file order, return in the order asked
                out = np.empty((len(rows), *shape), dtype=np.uint8)
                out[order] = self.load(rows[order], column)
                return out
        rows = np.arange(len(self)) if rows is None else rows
        out = np.zeros((len(rows), *shape), dtype=np.uint8)
        start = 0
        for g in range(self._pf.num_row_groups):
            n = self._pf.metadata.row_group(g).num_rows
            lo, hi = np.searchsorted(rows, [start, start + n])
            if hi > lo:
                col = self._pf.read_row_group(g, columns=[column])[column]
                local = rows[lo:hi] - start
                out[lo:hi] = self._decode_column(col.take(pa.array(local)), shape, column)
            start += n
        return out

    @staticmethod
    def _decode_column(col: pa.ChunkedArray, shape, column: str) -> np.ndarray:
        if column == "pixels" or col.null_count == 0:
            return binary_to_array(col, shape)
        return np.stack([np.frombuffer(v, np.uint8).reshape(shape) if v is not None
                         else np.zeros(shape, np.uint8) for v in col.to_pylist()])

    def iter_batches(self, rows: np.ndarray | None = None, batch_size: int = 512,
                     with_masks: bool = False) -> Iterator[tuple[pa.Table, np.ndarray, list | None]]:
        """(index columns, pixels, masks) for `rows` in file order, at most `batch_size` at a time.

        Masks (when asked for) are a list of (h, w) arrays, None where an image has no mask.

        Reads one row group at a time, so memory does not grow with the dataset.
        """
        rows = np.arange(len(self)) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
        columns = [*INDEX_COLUMNS, "pixels"] + (["mask"] if with_masks else [])
        start = 0
        for g in range(self._pf.num_row_groups):
            n = self._pf.metadata.row_group(g).num_rows
            lo, hi = np.searchsorted(rows, [start, start + n])
            if hi > lo:
                table = self._pf.read_row_group(g, columns=columns).take(pa.array(rows[lo:hi] - start))
                for b in range(0, table.num_rows, batch_size):
                    part = table.slice(b, batch_size)
                    masks = [None if v is None else np.frombuffer(v, np.uint8).reshape(self.shape[:2])
                             for v in part["mask"].to_pylist()] if with_masks else None
                    yield (part.select(list(INDEX_COLUMNS)),
                           binary_to_array(part["pixels"], self.shape), masks)
            start += n

    def rejects(self) -> pa.Table:
        """The rejects table (source, reason); empty when there is none."""
        path = self.path / "rejects.parquet"
        return pq.read_table(path) if path.exists() else pa.table({"source": [], "reason": []})


def training_dataset(trained: dict, path: Path | str, split: str | None) -> Dataset | None:
    """The model's own dataset when `path` (`split` of it, or None for all of it) holds images the
    model trained and calibrated on: `path` is that dataset, or the folder it was ingested from
    (while the dataset is there to say so); else None. `trained` is the model's record of its data
    (``meta_["data"]``); a model trained on every split (split None) trained on each of them."""
    fingerprint = trained.get("dataset_fingerprint")
    if not fingerprint or (trained.get("split") is not None and split not in (None, trained["split"])):
        return None
    path = Path(path)
    try:
        if (path / "images.parquet").is_file() or (path.suffix == ".parquet" and path.is_file()):
            ds = Dataset(path)
            return ds if ds.meta.get("fingerprint") == fingerprint else None
        own = Path(trained.get("dataset") or "")
        if not trained.get("dataset") or not (own / "images.parquet").is_file() or not path.is_dir():
            return None
        ds = Dataset(own)
    except DataError:  # a damaged or unreadable dataset says nothing either way
        return None
    root = (ds.meta.get("source") or {}).get("root")
    same = ds.meta.get("fingerprint") == fingerprint and root is not None and Path(root).resolve() == path.resolve()
    return ds if same else None


def training_rows(ds: Dataset, trained: dict, normal_classes: list[str]) -> np.ndarray:
    """The rows of `ds` (the model's own dataset) that trained or calibrated the model: its normal
    classes (every row of a dataset without classes), in the split it trained on."""
    index = ds.index()
    keep = (pc.is_in(index["class_name"], value_set=pa.array(normal_classes, pa.string())) if normal_classes
            else pa.array(np.ones(index.num_rows, dtype=bool)))
    if trained.get("split") is not None:
        keep = pc.and_(keep, pc.equal(index["split"], trained["split"]))
    return np.flatnonzero(pc.fill_null(keep, False).to_numpy(zero_copy_only=False))


def training_hashes(ds: Dataset, trained: dict, normal_classes: list[str]) -> set[str]:
    """The sha256 of the images of `ds` that trained or calibrated the model (`training_rows`)."""
    return set(ds.index()["sha256"].take(training_rows(ds, trained, normal_classes)).to_pylist())


# A model keeps this many hex digits of the sha256 of each image that trained or calibrated it: 64
# bits, enough to tell a batch's images apart from a training set's, a few bytes per image.
SEEN_DIGITS = 16


def seen_hashes(hashes) -> list[str]:
    """What a model keeps of the sha256 of its training and calibration images (``seen_hashes``)."""
    return sorted({h[:SEEN_DIGITS] for h in hashes})


def seen_by(meta: dict) -> set[str] | None:
    """The images that trained or calibrated a model, as `seen_hashes` prefixes: those it keeps, or
    for a model that keeps none, those of its dataset while it is there unchanged; None: unknown."""
    if meta.get("seen_hashes") is not None:
        return set(meta["seen_hashes"])
    ds = own_dataset(meta)
    if ds is None:
        return None
    return set(seen_hashes(training_hashes(ds, meta.get("data") or {}, meta.get("normal_classes") or [])))


def own_dataset(meta: dict) -> Dataset | None:
    """The dataset a model (its metadata `meta`) was trained on, while it is there unchanged; else None."""
    trained = meta.get("data") or {}
    return training_dataset(trained, trained["dataset"], None) if trained.get("dataset") else None
