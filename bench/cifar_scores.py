"""Which score finds other classes in natural images? (CIFAR-10 one-class, the shared subset.)

For each normal class one autoencoder is trained as `anomaly-ae train` would (defaults, or the
model settings given), and its test images are scored several ways side by side:

- ``topk``, ``mse``: the reconstruction error (top share of the smoothed map; plain mean);
- ``latent-knn``: mean distance of the image's bottleneck code to its k nearest training codes;
- ``mse/complexity``: the mean error divided by the image's PNG-compressed bits per pixel (Serra
  et al., ICLR 2020: reconstruction and likelihood scores mostly measure how complex an image is);
- ``complexity``: the compressed bits per pixel alone (the confound, as its own baseline);
- ``rank-mean``: the mean of the ranks of ``mse`` and ``latent-knn`` (an ensemble).

    python -m bench.cifar_scores --classes airplane,cat,ship [--model latent_dim=64]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time

import numpy as np

from bench.quality import SHARED, _datasets, _load_task

K = 5


def png_bits_per_pixel(images: np.ndarray) -> np.ndarray:
    """Bits per pixel of each image saved as PNG (compression level 9): its complexity."""
    from PIL import Image

    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im.squeeze() if im.shape[2] == 1 else im).save(buf, format="PNG", compress_level=9)
        out.append(8 * len(buf.getvalue()) / (im.shape[0] * im.shape[1]))
    return np.array(out)


def knn_distance(codes: np.ndarray, reference: np.ndarray, k: int = K, self_excluded: bool = False) -> np.ndarray:
    d = np.sqrt(((codes[:, None, :] - reference[None, :, :]) ** 2).sum(-1))
    d.sort(axis=1)
    return d[:, 1: k + 1].mean(1) if self_excluded else d[:, :k].mean(1)


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)) / max(len(x) - 1, 1)


def run_class(task, model_settings: dict) -> dict:
    from anomaly_ae.config import DetectorConfig, ScoreConfig
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.metrics import auroc

    _, source, options, normal = task
    fit, cal, test, y, _ = _load_task(source, options, normal)
    cfg = DetectorConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_settings))
    t0 = time.perf_counter()
    det = AutoencoderDetector(cfg).fit(fit)
    fit_s = time.perf_counter() - t0
    scores = {"topk": det.score_samples(test)}
    det.config = dataclasses.replace(det.config, score=ScoreConfig(method="mse"))
    mse = det.score_samples(test)
    scores["mse"] = mse
    codes_fit, codes_test = det.encode(fit), det.encode(test)
    scores["latent-knn"] = knn_distance(codes_test, codes_fit)
    bpp = png_bits_per_pixel(test)
    scores["complexity"] = bpp
    scores["mse/complexity"] = mse / bpp
    scores["rank-mean"] = (ranks(mse) + ranks(scores["latent-knn"])) / 2
    row = {"class": task[0], "fit_s": round(fit_s, 1), **{k: round(float(auroc(y, v)), 4) for k, v in scores.items()}}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="airplane,cat,ship")
    p.add_argument("--model", default="", help="model settings, e.g. latent_dim=64,base_channels=16")
    p.add_argument("--data-root", default=str(SHARED))
    args = p.parse_args(argv)
    from pathlib import Path

    settings = {k: int(v) if v.isdigit() else v for k, v in (x.split("=") for x in args.model.split(",") if x)}
    tasks = {t[0]: t for t in _datasets(Path(args.data_root), None)["cifar10"]}
    rows = [run_class(tasks[c], settings) for c in args.classes.split(",")]
    means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0] if k != "class"}
    print(json.dumps({"mean": means, "model": settings}), flush=True)


if __name__ == "__main__":
    main()
