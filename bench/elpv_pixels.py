"""ELPV: how far do statistics of the raw pixels go? Image AUROC of simple one-class scores on the
split of `bench.quality` (905 good cells to fit, the 841 test cells to score), side by side.

    python -m bench.elpv_pixels [--data-root ../shared/data]

Scores, each on the cells shrunk to `side` x `side` by area averaging:
- knn: mean distance to the k nearest training cells (raw pixels, or each cell standardised);
- z: per-position z-score against the training cells, mean over the cell or mean of its top 1%;
- zdark: the same, counting only positions darker than usual (cracks and inactive regions are dark);
- zdark per cluster: zdark against the training cells of the nearest of K k-means clusters;
- zdark local: zdark against the mean and spread of the cell's k nearest training cells;
- tophat: a black top-hat (closing minus image: thin dark lines) pooled per position, z-scored.
ELPV labels a cell defective with probability 1 (`defect_p100`) or 2/3 (`defect_p067`): the
AUROC is reported on all test cells and on the good cells against each label alone.
Runs in about a minute on 2 CPU cores; the results go to bench/results/elpv-pixels.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import md_table, write_results
from bench.quality import SHARED, _load_task


def _top1(z):
    return z.topk(max(1, z.shape[1] // 100), 1).values.mean(1)


def scores(fit: np.ndarray, test: np.ndarray) -> dict:
    """{name: test scores} of every recipe above."""
    import torch
    from sklearn.cluster import KMeans
    from torch.nn import functional as F

    def tensor(a):
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255

    xf, xt = tensor(fit), tensor(test)
    out = {}
    for side in (16, 32, 64):
        a, b = F.adaptive_avg_pool2d(xf, side).flatten(1), F.adaptive_avg_pool2d(xt, side).flatten(1)
        for norm in ("raw", "standardised"):
            if norm == "standardised":
                a = (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)
                b = (b - b.mean(1, keepdim=True)) / b.std(1, keepdim=True)
            dist = torch.cdist(b, a)
            for k in (1, 5, 20):
                out[f"knn k={k}, {norm}, {side}px"] = dist.topk(k, largest=False).values.mean(1)
            mu, sd = a.mean(0), a.std(0) + 1e-3
            z, dark = ((b - mu) / sd).abs(), ((mu - b) / sd).clamp(min=0)
            out[f"z mean, {norm}, {side}px"], out[f"z top 1%, {norm}, {side}px"] = z.mean(1), _top1(z)
            out[f"zdark mean, {norm}, {side}px"], out[f"zdark top 1%, {norm}, {side}px"] = dark.mean(1), _top1(dark)
    for side in (16, 32):
        a, b = F.adaptive_avg_pool2d(xf, side).flatten(1), F.adaptive_avg_pool2d(xt, side).flatten(1)
        for k in (2, 4, 8):
            km = KMeans(k, n_init=4, random_state=0).fit(a.numpy())
            la, lb = km.labels_, km.predict(b.numpy())
            s = torch.zeros(len(b))
            for c in range(k):
                mu, sd = a[la == c].mean(0), a[la == c].std(0) + 1e-2
                s[lb == c] = _top1(((mu - b[lb == c]) / sd).clamp(min=0))
            out[f"zdark top 1% per cluster, K={k}, {side}px"] = s
        near = torch.cdist(b, a).topk(30, largest=False).indices
        for k in (10, 30):
            nb = a[near[:, :k]]
            out[f"zdark top 1% local, k={k}, {side}px"] = _top1(((nb.mean(1) - b) / (nb.std(1) + 0.02)).clamp(min=0))
    for res in (100, 150):
        for r in (1, 4):
            def tophat(x):
                x = F.adaptive_avg_pool2d(x, res)
                closed = -F.max_pool2d(-F.max_pool2d(x, 2 * r + 1, 1, r), 2 * r + 1, 1, r)
                return F.adaptive_avg_pool2d(closed - x, 32).flatten(1)
            a = torch.cat([tophat(xf[i: i + 128]) for i in range(0, len(xf), 128)])
            b = torch.cat([tophat(xt[i: i + 128]) for i in range(0, len(xt), 128)])
            out[f"tophat r={r} at {res}px, z max"] = ((b - a.mean(0)) / (a.std(0) + 1e-4)).clamp(min=0).max(1).values
    return {k: v.numpy() for k, v in out.items()}


def auroc_rows(scored: dict, y: np.ndarray, classes: np.ndarray) -> tuple[list[str], list[list]]:
    """(anomalous labels, rows of [name, AUROC on all, AUROC of good against each label]), best first."""
    from sklearn.metrics import roc_auc_score

    labels = sorted(set(classes[y]))
    rows = [[name, float(roc_auc_score(y, s)),
             *(float(roc_auc_score(y[~y | (classes == c)], s[~y | (classes == c)])) for c in labels)]
            for name, s in scored.items()]
    return labels, sorted(rows, key=lambda r: -r[1])


def auroc_table(labels: list[str], rows: list[list]) -> str:
    return md_table(["score", "image AUROC, all", *[f"good vs {c}" for c in labels]],
                    [[r[0], *(f"{v:.3f}" for v in r[1:])] for r in rows])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=SHARED)
    args = p.parse_args(argv)
    fit, _held, test, y, _, classes = _load_task(str(args.data_root / "elpv"), {}, "good", with_classes=True)
    labels, rows = auroc_rows(scores(fit, test), y, classes)
    md = "# ELPV: one-class scores on raw pixels\n\n" + auroc_table(labels, rows)
    _, m = write_results("elpv-pixels", {"auroc": {r[0]: r[1] for r in rows},
                                         "by_label": {r[0]: dict(zip(labels, r[2:])) for r in rows}}, md)
    print(m.read_text())


if __name__ == "__main__":
    main()
