"""A scoring run's results: partition outputs merged into the run folder's tables, and the run's record.

- ``scores.parquet`` ranked, ``flagged.csv``, ``error_maps.parquet``, ``examples.parquet``,
  ``rejects.parquet`` from the partitions' part files;
- the metrics and drift check (``metrics.json``, ``run.json``) and the summary a command prints.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly_ae.fsio import atomic_write_text
from anomaly_ae.runid import utc_now
from anomaly_ae.schema import TableWriter, write_table
from anomaly_ae.scoring import EXAMPLES_PER_KIND, _Best, _columns


def finalize(part_dirs: list[Path], out: Path, *, threshold_info: dict, cal_scores: np.ndarray) -> dict:
    """Merge partition outputs into the run's tables; returns {metrics, counts, drift}."""
    from anomaly_ae.metrics import detection_metrics, drift_check, per_class, pixel_auroc
    from anomaly_ae.threshold import f1_optimal_threshold

    table = pa.concat_tables([pq.read_table(d / "scores.parquet") for d in part_dirs])
    scores = table["score"].to_numpy()
    rank = np.empty(len(scores), np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    table = table.set_column(table.schema.get_field_index("rank"), "rank", pa.array(rank))
    write_table(out / "scores.parquet", "scores", table, extra={"threshold": threshold_info["threshold"]})
    flagged = table["flagged"].to_numpy(zero_copy_only=False)
    _write_flagged_csv(out / "flagged.csv", table.filter(pa.array(flagged)))
    _concat_parts(part_dirs, out, "error_maps")
    _concat_parts(part_dirs, out, "rejects")
    _merge_examples(part_dirs, out, threshold_info["threshold"])
    errors, pixel_labels = [], []
    for d in part_dirs:
        with np.load(d / "pixels.npz") as px:
            errors.append(px["arr_0"])
            pixel_labels.append(px["arr_1"])
    errors, pixel_labels = np.concatenate(errors), np.concatenate(pixel_labels)
    t = threshold_info["threshold"]
    # The rate normal images are expected to be flagged at: the conformal rank's own rate (it can
    # exceed the target when there are few calibration scores), else the calibration share.
    target = (threshold_info.get("guaranteed_fpr") or threshold_info.get("target_fpr")
              or float((cal_scores > t).mean()) or 1e-9)
    result = {"n_scored": len(scores), "n_flagged": int(flagged.sum()),
              "drift": drift_check(scores, cal_scores, int(flagged.sum()), target), "metrics": None}
    labels = table["is_anomaly"].to_pylist()
    known = np.array([v is not None for v in labels])
    if known.any():
        y = np.array([bool(v) for v in labels])[known]
        m = detection_metrics(y, scores[known], flagged[known], t)
        m["per_class"] = per_class(np.array(table["class_name"].to_pylist(), object)[known], y, scores[known], flagged[known])
        m["pixel_auroc"] = pixel_auroc(errors, pixel_labels)
        m["n_pixels_sampled"] = len(errors)
        m["f1_optimal"] = f1_optimal_threshold(scores[known], y) if 0 < y.sum() < len(y) else None
        normal_scores = scores[known][~y]
        m["drift_normal_only"] = drift_check(normal_scores, cal_scores, int(flagged[known][~y].sum()), target)
        result["metrics"] = m
    return result


def _write_flagged_csv(path: Path, flagged: pa.Table) -> None:
    flagged = flagged.sort_by([("rank", "ascending")])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "path", "score", "p_value", "class_name"])
    for row in zip(*(flagged[c].to_pylist() for c in ("rank", "path", "score", "p_value", "class_name"))):
        w.writerow([row[0], row[1], f"{row[2]:.6g}", f"{row[3]:.6g}", row[4] or ""])
    atomic_write_text(path, buf.getvalue())


def _concat_parts(part_dirs: list[Path], out: Path, name: str) -> None:
    """Stream the parts' `name` tables into one file, row group by row group; a single part's table
    is moved into place as it is (it was written as the run's own table is: the same schema and
    footer), which saves copying every flagged item's error map once more."""
    if len(part_dirs) == 1:
        os.replace(part_dirs[0] / f"{name}.parquet", out / f"{name}.parquet")
        return
    writer = TableWriter(out / f"{name}.parquet", name)
    for d in part_dirs:
        pf = pq.ParquetFile(d / f"{name}.parquet")
        for g in range(pf.num_row_groups):
            writer.write(pf.read_row_group(g))
    writer.close()


def _merge_examples(part_dirs: list[Path], out: Path, threshold: float) -> None:
    table = pa.concat_tables([pq.read_table(d / "examples.parquet") for d in part_dirs])
    rows = table.to_pylist()
    seen_top, seen_border = _Best(EXAMPLES_PER_KIND), _Best(EXAMPLES_PER_KIND)
    for r in rows:
        (seen_top if r["kind"] == "top" else seen_border).add(
            r["score"] if r["kind"] == "top" else -abs(r["score"] - threshold), r)
    write_table(out / "examples.parquet", "examples", _columns(seen_top.prune() + seen_border.prune(), "examples"))


def run_record(det, model, input, split, th, parts, results, merged, timings, normal, run_id: str) -> dict:
    from anomaly_ae.checkpoint import model_file, versions
    from anomaly_ae.tiles import is_tiled

    for key in ("decode", "model"):
        timings[key] = sum(r["seconds"][key] for r in results)
    n_items = sum(len(p) for p in parts)
    m = det.meta_
    return {
        "run_id": run_id, "created": utc_now(),
        "input": str(Path(input).resolve()), "input_kind": parts[0].kind, "split": split,
        "model": {"path": str(model_file(model).resolve()), "kind": det.kind,
                  "score_method": det.score_method,
                  "normal_classes": m.get("normal_classes"),
                  "tile": det.config.model.tile if is_tiled(det.shape_, det.config.model.tile) else 0,
                  "classes": m.get("classes"), "image_shape": list(det.shape_),
                  "dataset": m.get("data", {}).get("dataset"), "trained": getattr(det, "created_", None),
                  "collapse": getattr(det, "collapse_", None), "selection": m.get("selection")},
        "threshold": th, "labels_known": normal is not None,
        "counts": {"items": n_items, "scored": merged["n_scored"], "flagged": merged["n_flagged"],
                   "rejects": sum(r["rejects"] for r in results)},
        "drift": merged["drift"], "drift_normal_only": (merged["metrics"] or {}).get("drift_normal_only"),
        "quality": _quality(merged["metrics"]), "timings": timings, "versions": versions(), "partitions": len(parts),
        "calibration_scores": det.calibration_scores_.tolist(), "history": det.history_,
    }


def _quality(metrics: dict | None) -> dict | None:
    """The headline metrics (metrics.json has them all), for readers that list many runs."""
    if not metrics:
        return None
    return {k: metrics.get(k) for k in ("auroc", "auprc", "fpr", "tpr", "f1", "pixel_auroc")}


def score_summary(out: Path, run: dict, merged: dict) -> dict:
    m = merged["metrics"] or {}
    return {"run": str(out), "scored": run["counts"]["scored"], "flagged": run["counts"]["flagged"],
            "rejects": run["counts"]["rejects"], "threshold": run["threshold"]["threshold"],
            "target_fpr": run["threshold"].get("target_fpr"),
            # Too few calibration images for the target: the false-alarm rate they can promise.
            "guaranteed_fpr": run["threshold"].get("guaranteed_fpr") if run["threshold"].get("limited") else None,
            "n_calibration": run["threshold"].get("n_calibration"), "auroc": m.get("auroc"),
            "auprc": m.get("auprc"), "fpr": m.get("fpr"), "tpr": m.get("tpr"), "f1": m.get("f1"),
            "pixel_auroc": m.get("pixel_auroc"),
            # With labels, anomalies are expected to score high: judge drift on the normal items.
            "drift": (m.get("drift_normal_only") or run["drift"])["drift"],
            "report": run.get("report"), "seconds": run["timings"]["total"]}
