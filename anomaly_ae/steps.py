"""The pipeline's steps (ingest, info, train, calibrate, score, report): what the CLI and flows call.

Each step takes plain values, does one job through the modules below it and returns a plain,
JSON-able summary. Steps never import prefect or typer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from anomaly_ae.errors import DataError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def ingest(source: str, out: str | Path, *, root: str | None = None, download: bool = False,
           size: str | None = None, channels: str | None = None, resize: str = "bilinear",
           test_fraction: float | None = None, seed: int = 0, max_pixels: int | None = None,
           workers: int | None = None, overwrite: bool = False, force: bool = False,
           progress: Progress | None = None) -> dict:
    """Ingest `source` into the dataset folder `out`; skipped when `out` is already up to date.

    An existing dataset made from the same files with the same options is kept as it is
    (``cached: True`` in the summary) unless `force`; one made from something else is
    replaced only with `overwrite`.
    """
    from anomaly_ae import imaging
    from anomaly_ae.dataset import Dataset
    from anomaly_ae.ingest import fingerprint, ingest as run_ingest
    from anomaly_ae.sources import open_source

    request = imaging.PolicyRequest(imaging.parse_size(size), channels, resize)
    max_pixels = max_pixels or imaging.DEFAULT_MAX_PIXELS
    listing = open_source(source, root=root, download=download).list()
    out = Path(out)
    options = {"test_fraction": test_fraction, "seed": seed, "max_pixels": max_pixels}
    if (out / "images.parquet").exists() and not force:
        existing = Dataset(out).meta
        if existing.get("fingerprint") == fingerprint(listing, request, options):
            log.info("%s is up to date with %s; skipping ingest", out, source)
            return _dataset_summary(out, existing, cached=True)
    meta = run_ingest(listing, out, request=request, test_fraction=test_fraction, seed=seed,
                      max_pixels=max_pixels, workers=workers, overwrite=overwrite or force,
                      progress=progress)
    return _dataset_summary(out, meta, cached=False)


def _dataset_summary(out: Path, meta: dict, cached: bool) -> dict:
    return {"dataset": str(out), "cached": cached, "source": meta.get("source", {}).get("spec"),
            "image_shape": meta["image_shape"], "classes": meta.get("classes", []),
            "counts": meta["counts"], "preprocess": meta["preprocess"],
            "fingerprint": meta.get("fingerprint")}


def info(path: str | Path) -> dict:
    """What a dataset holds: counts per split and class, shape, masks, rejects."""
    from anomaly_ae.dataset import Dataset

    ds = Dataset(path)
    rejects = ds.rejects()
    summary = _dataset_summary(Path(path), ds.meta, cached=False)
    summary.pop("cached")
    summary["rejects"] = [{"source": s, "reason": r} for s, r in
                          zip(rejects["source"].to_pylist(), rejects["reason"].to_pylist())]
    summary["layout"] = ds.meta.get("source", {}).get("layout")
    summary["schema_version"] = ds.meta.get("schema_version")
    summary["rows"] = len(ds)
    if summary["rows"] != summary["counts"]["images"]:
        raise DataError(f"{path}: metadata says {summary['counts']['images']} images but the file "
                        f"holds {summary['rows']}; the dataset is damaged. Ingest it again.")
    return summary
