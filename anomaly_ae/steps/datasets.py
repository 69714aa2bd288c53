"""Dataset steps: ingest a source into a Parquet dataset, and say what a dataset holds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from anomaly_ae.errors import DataError

log = logging.getLogger(__name__)

# Called with (done, total) as work advances.
Progress = Callable[[int, int], None]


def ingest(source: str, out: str | Path, config=None, *, root: str | None = None, download: bool = False,
           workers: int | None = None, overwrite: bool = False, force: bool = False,
           progress: Progress | None = None, **settings) -> dict:
    """Ingest `source` into the dataset folder `out`; skipped when `out` is already up to date.

    `config` (an `IngestConfig`; default its defaults) says how the images become the dataset;
    `settings` replace single fields of it (``size="256"``, ``crop=(0, 0, 200, 200)``...).
    An existing dataset made from the same files with the same settings is kept as it is
    (``cached: True`` in the summary) unless `force`; one made from something else (or with
    other settings) is replaced only with `overwrite`, and only when it is a dataset (never the
    source itself or a folder holding anything else). A damaged one is replaced by either.
    """
    from anomaly_ae.parallel import leave_if_importing_script

    leave_if_importing_script()  # a worker importing a script without a main guard
    import dataclasses

    from anomaly_ae.config import IngestConfig
    from anomaly_ae.fsio import output_folder
    from anomaly_ae.ingest import fingerprint
    from anomaly_ae.ingest import ingest as run_ingest
    from anomaly_ae.sources import open_source

    config = dataclasses.replace(config or IngestConfig(), **settings)
    listing = open_source(source, root=root, download=download).list()
    out = output_folder(out)
    existing = _readable_meta(out, replace=force or overwrite)
    if existing is not None:
        same = (existing.get("fingerprint") == fingerprint(listing, config)
                or _compare(existing, listing, config) == (True, [])) and not _crop_left_out(existing)
        if same and not force:
            return _told(_dataset_summary(out, existing, cached=True), out)
        if not same and not overwrite:  # `force` redoes this dataset; only `overwrite` replaces another
            raise DataError(f"{out} already exists and is out of date: {_why_changed(existing, listing, config)}. "
                            "Pass --overwrite to ingest it again, or choose another --out.")
    protect = tuple(Path(p) for p in (source, root) if p and Path(p).exists())
    meta = run_ingest(listing, out, config, workers=workers, overwrite=overwrite or force, progress=progress,
                      protect=protect)
    return _told(_dataset_summary(out, meta, cached=False), out)


def _compare(existing: dict, listing, config) -> tuple[bool | None, list[str]]:
    """(whether the dataset was made from these very files, None when it cannot be told; the
    settings that differ, as 'crop was not set, now 0,0,9,9'). Naming the size or channels the
    dataset had inferred (``--size 40`` for images it stored at 40x40) is no difference: the same
    dataset would be written again."""
    import dataclasses

    from anomaly_ae.config import IngestConfig
    from anomaly_ae.imaging import Preprocess, parse_size
    from anomaly_ae.imaging import setting_text as shown
    from anomaly_ae.ingest import fingerprint

    try:
        then = IngestConfig(**existing["options"])
        policy = Preprocess.from_dict(existing["preprocess"])
    except Exception:  # made before its settings were recorded, or by another version: not comparable
        return None, []

    inferred = {"size": config.size is not None and parse_size(config.size) == (policy.height, policy.width),
                "channels": config.channels == policy.channels}
    changed = [f"{f.name} was {shown(getattr(then, f.name))}, now {shown(getattr(config, f.name))}"
               for f in dataclasses.fields(config)
               if shown(getattr(then, f.name)) != shown(getattr(config, f.name)) and not inferred.get(f.name)]
    return fingerprint(listing, then) == existing.get("fingerprint"), changed


def _crop_left_out(existing: dict) -> bool:
    """True for a dataset ingested with --crop and --size and --channels all given by a version that
    left the crop region out of its preprocessing (and so cut nothing)."""
    return bool((existing.get("options") or {}).get("crop")) and not existing.get("preprocess", {}).get("crop")


def _why_changed(existing: dict, listing, config) -> str:
    """What differs between a dataset's making and this ingest: the source, the settings (each
    named, as it was and as it is now), the files, or both."""
    was, spec = existing.get("source", {}).get("spec"), listing.description.get("spec")
    if was != spec:
        return f"it was ingested from {was}"
    if _crop_left_out(existing):
        return "its images were not cut to the crop region it was asked for (an earlier version left the region out)"
    same_files, changed = _compare(existing, listing, config)
    n_then = existing.get("counts", {}).get("images", 0) + existing.get("counts", {}).get("rejects", 0)
    count = f"{n_then} files then, {len(listing.items)} now; " if n_then != len(listing.items) else ""
    files = (f"files were added, removed or rewritten in {spec} since it was made ({count}a copy that gives the "
             "files new times counts too)")
    if same_files is None:  # no record of its settings to compare with
        return f"the files in {spec} or the ingest settings changed since it was made"
    if not changed:
        return files
    return "other settings: " + "; ".join(changed) + ("" if same_files else f"; and {files}")


def _readable_meta(out: Path, replace: bool) -> dict | None:
    """The metadata of the dataset at `out` (None when there is none, or when it is damaged and
    is to be replaced anyway)."""
    from anomaly_ae.dataset import Dataset
    from anomaly_ae.fsio import check_name_lengths

    check_name_lengths(out)
    if not (out / "images.parquet").exists():
        return None
    try:
        return Dataset(out).meta
    except Exception:  # damaged: ingesting again with --force or --overwrite replaces it
        if replace:
            return None
        raise


def _told(summary: dict, out: Path) -> dict:
    """Log the ingest's line (rejected files by name) and return its summary."""
    from anomaly_ae import facts

    rejects = []
    if summary["counts"]["rejects"] and not summary["cached"]:
        from anomaly_ae.dataset import Dataset  # (pyarrow.compute with it: a twentieth of a second)

        table = Dataset(out).rejects().slice(0, facts.MAX_NAMED)
        rejects = list(zip(table["source"].to_pylist(), table["reason"].to_pylist()))
    log.info(facts.ingest(summary, rejects))
    return summary


def _dataset_summary(out: Path, meta: dict, cached: bool) -> dict:
    return {"dataset": str(out), "cached": cached, "source": meta.get("source", {}).get("spec"),
            "image_shape": meta["image_shape"], "classes": meta.get("classes", []),
            "counts": meta["counts"], "preprocess": meta["preprocess"],
            "fingerprint": meta.get("fingerprint")}


def _refuse_other_things(path: Path) -> None:
    """A one-line answer for what `info` may be pointed at by mistake: an image, a run, an export."""
    from anomaly_ae.fsio import folder_kind
    from anomaly_ae.sources.folder import is_image_name

    if not path.exists():
        raise DataError(f"{path} does not exist. Check the path.")
    if path.is_file() and is_image_name(path.name):
        raise DataError(f"{path} is an image file; info reads a dataset or a model folder (`anomaly-ae score {path} "
                        "--model MODEL` scores it).")
    kind = folder_kind(path)
    if kind == "run":
        raise DataError(f"{path} is a run folder (what `anomaly-ae score` writes): open its report.html, or rebuild "
                        f"it with `anomaly-ae report {path}`; info reads a dataset or a model folder.")
    if kind == "export":
        raise DataError(f"{path} is a model export (model.onnx and model.json, whose threshold and preprocessing "
                        "it holds); info reads a dataset or the model folder it was exported from.")


def info(path: str | Path) -> dict:
    """What a dataset holds: counts per split and class, shape, masks, rejects."""
    from anomaly_ae.dataset import Dataset

    _refuse_other_things(Path(path))
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
