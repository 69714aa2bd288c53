"""The images of a run's items, found again from what the run recorded: a dataset's rows by image
id, or a folder's files by their paths under the run's input (an inbox run records its inbox).

Only items the run scored can be asked for, and a file whose content changed since (its SHA-256
differs from the one scored) is not returned: the picture must be the one the score is about.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def run_record(run_dir: str | Path) -> dict:
    """A run's run.json (DataError when it is damaged)."""
    from anomaly_ae.fsio import read_json

    return read_json(Path(run_dir) / "run.json")


def item_pixels(run_dir: str | Path, items: list[str], policy=None) -> dict[str, np.ndarray]:
    """image id -> uint8 pixels (h, w, c) for the `items` of the run whose images can still be read.

    `policy` (an `imaging.Preprocess`) turns files into the model's input; without it a file is
    read as it is (gray or RGB), for display.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    run = run_record(run_dir)
    table = pq.read_table(run_dir / "scores.parquet", columns=["image_id", "path", "sha256"])
    table = table.filter(pc.is_in(table["image_id"], value_set=pa.array(list(items), pa.string())))
    rows = table.to_pylist()
    if run.get("input_kind") == "dataset":
        return _from_dataset(Path(run["input"]), rows)
    return _from_files(Path(run["input"]), rows, policy)


def _from_dataset(folder: Path, rows: list[dict]) -> dict[str, np.ndarray]:
    from anomaly_ae.dataset import Dataset
    from anomaly_ae.errors import AnomalyAEError

    try:
        ds = Dataset(folder)
        index = ds.index()
    except (AnomalyAEError, OSError) as exc:  # a dataset since removed or replaced: no pictures, no failure
        log.info("the images of %s cannot be read again: %s", folder, exc)
        return {}
    position = {v: k for k, v in enumerate(index["image_id"].to_pylist())}
    wanted = [(r["image_id"], position[r["image_id"]]) for r in rows if r["image_id"] in position]
    if not wanted:
        return {}
    order = np.array([p for _, p in wanted])
    pixels = ds.load(np.sort(order))
    by_row = dict(zip(np.sort(order).tolist(), pixels))
    return {i: by_row[p] for i, p in wanted}


def _from_files(folder: Path, rows: list[dict], policy) -> dict[str, np.ndarray]:
    from anomaly_ae.errors import AnomalyAEError
    from anomaly_ae.imaging import open_image, sha256_hex, to_pixels

    out = {}
    for r in rows:
        file = folder / r["path"]
        try:
            data = file.read_bytes()
            if r.get("sha256") and sha256_hex(data) != r["sha256"]:
                continue  # changed since it was scored
            img = open_image(data)
            out[r["image_id"]] = to_pixels(img, policy) if policy is not None else _display_pixels(img)
        except (AnomalyAEError, OSError, ValueError) as exc:  # gone, unreadable: the item has no picture
            log.info("item %s of the run cannot be read again from %s: %s", r["image_id"], file, exc)
    return out


def _display_pixels(img) -> np.ndarray:
    a = np.asarray(img.convert("L" if img.mode in ("1", "L", "I;16", "I", "F", "LA") else "RGB"))
    return a[..., None] if a.ndim == 2 else a
