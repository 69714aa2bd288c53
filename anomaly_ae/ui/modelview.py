"""What the console's model page shows of the model that scored a run: its summary and layer
table, its training curve, reconstructions of the run's example items, and a 2-D view of the
bottleneck codes of the run's items (normal-scored and flagged apart)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from anomaly_ae.fsio import read_json

MAX_POINTS = 1000  # items projected on the latent view (all flagged ones first, then a sample of the rest)
MAX_RECONSTRUCTIONS = 8


def model_folder(path: str | None, roots: list[Path]) -> Path | None:
    """The folder of the model file `path` (a run's summary's ``model``), when it lies under one of
    the console's roots."""
    if not path:
        return None
    folder = Path(path).parent
    if not (folder / "model.pt").is_file() or (folder / "model.pt").is_symlink():
        return None
    resolved = folder.resolve()
    return folder if any(resolved.is_relative_to(r) for r in roots) else None


@functools.lru_cache(maxsize=8)
def model_view(run_dir: Path, folder: Path, stamp: tuple) -> dict:
    """Everything the model page shows (cached per run and model file state `stamp`)."""
    from anomaly_ae import checkpoint
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.report.figures import training_figure

    ckpt = checkpoint.read(folder)
    info = {**checkpoint.summary(folder, ckpt, cached=False),
            **AutoencoderDetector.load(folder, device="cpu").layer_summary()}
    return {"info": info, "curve": training_figure(ckpt.get("history") or {}),
            "reconstructions": _reconstructions(run_dir, ckpt), "latent": _latent(run_dir, folder)}


def _reconstructions(run_dir: Path, ckpt: dict) -> list[dict]:
    """Original, reconstruction and heat map of the run's example items (its report's examples)."""
    from anomaly_ae.report.examples import example_panels, heat_lut
    from anomaly_ae.schema import read_parquet

    path = run_dir / "examples.parquet"
    if not path.exists():
        return []
    shape = read_json(run_dir / "run.json")["model"]["image_shape"]
    rows = sorted(read_parquet(path).to_pylist(), key=lambda e: -e["score"])[:MAX_RECONSTRUCTIONS]
    maps = [np.frombuffer(e["error_map"], "<f2").astype(np.float32) for e in rows if e.get("error_map")]
    vmax = float(np.quantile(np.concatenate(maps), 0.995)) if maps else 1.0
    lut, out = heat_lut(), []
    for e in rows:
        if not e.get("recon") or not e.get("error_map"):
            continue
        px = np.frombuffer(e["pixels"], np.uint8).reshape(shape)
        rec = np.frombuffer(e["recon"], np.uint8).reshape(shape)
        em = np.frombuffer(e["error_map"], "<f2").reshape(shape[:2])
        orig, recon, heat = example_panels(px, rec, em, None, vmax, lut)
        out.append({"path": e["path"], "score": e["score"], "flagged": e["flagged"], "orig": orig, "recon": recon,
                    "heat": heat})
    return out


def _latent(run_dir: Path, folder: Path) -> dict:
    """{"points": [{x, y, id, path, score, flagged}], "explained": [share, share]} from a PCA of the
    codes of up to MAX_POINTS of the run's items, or {"note": why there is none}."""
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.errors import ModelError
    from anomaly_ae.imaging import Preprocess
    from anomaly_ae.runitems import item_pixels
    from anomaly_ae.schema import read_parquet

    det = AutoencoderDetector.load(folder, device="cpu")
    t = read_parquet(run_dir / "scores.parquet", columns=["image_id", "path", "score", "flagged"]).to_pylist()
    flagged = [r for r in t if r["flagged"]]
    rest = [r for r in t if not r["flagged"]]
    rng = np.random.default_rng(0)
    take = flagged[:MAX_POINTS // 2]
    left = MAX_POINTS - len(take)
    if len(rest) > left:
        rest = [rest[i] for i in np.sort(rng.choice(len(rest), left, replace=False))]
    chosen = take + rest
    pixels = item_pixels(run_dir, [r["image_id"] for r in chosen], Preprocess.from_dict(det.meta_["preprocess"]))
    chosen = [r for r in chosen if r["image_id"] in pixels and pixels[r["image_id"]].shape == tuple(det.shape_)]
    if len(chosen) < 3:
        return {"note": "The run's images can no longer be read (or are too few), so there are no codes to show."}
    try:
        codes = det.encode(np.stack([pixels[r["image_id"]] for r in chosen])).astype(np.float64)
    except ModelError as exc:
        return {"note": str(exc)}
    centred = codes - codes.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    share = (s ** 2 / max((s ** 2).sum(), 1e-12))[:2].tolist()
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    unit = (xy - lo) / np.where(hi > lo, hi - lo, 1)
    return {"points": [{"x": float(u[0]), "y": float(u[1]), "id": r["image_id"], "path": r["path"],
                        "score": float(r["score"]), "flagged": bool(r["flagged"])} for u, r in zip(unit, chosen)],
            "explained": share}
