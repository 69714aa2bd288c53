"""ELPV with its labels: what a detector trained on the defective cells themselves reaches.

Every detector in the product sees only good cells. This measures, on the same split as
`bench.quality`, what supervised classifiers reach when they are also given defective cells:
five folds over the test cells (stratified by label group); each fold trains on every good
training cell plus four fifths of the test cells, and scores the fifth it did not see. The
out-of-fold scores of all test cells give one AUROC against the good test cells, for both groups of
defects and for each group alone (``defect_p100``: certainly defective; ``defect_p067``: two of
three experts). Two classifiers: a logistic regression on the cell's pixels shrunk to 32x32, and
a small convolutional network trained from scratch on the cell shrunk to 75x75 (flips as
augmentation, both classes weighted equally). The product's `--model nearest` (good cells only)
is scored on the same test cells beside them.

    python -m bench.elpv_supervised [--epochs 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

GROUPS = ("defect_p100", "defect_p067")


def shrink(images: np.ndarray, factor: int) -> np.ndarray:
    """(n, h, w, 1) uint8 -> (n, h/factor, w/factor) float32 in [0, 1]: block means."""
    n, h, w = images.shape[:3]
    x = images[:, : h - h % factor, : w - w % factor, 0].astype(np.float32) / 255.0
    return x.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def folds(classes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number of every test cell, each label group spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(classes), np.int64)
    for c in np.unique(classes):
        idx = rng.permutation(np.flatnonzero(classes == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def logistic(train_x, train_y, test_x, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(train_x), train_y)
    return clf.decision_function(scaler.transform(test_x))


def cnn(train_x, train_y, test_x, seed: int, epochs: int) -> np.ndarray:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(a, b):
        return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]

    net = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), *block(64, 64),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))
    x = torch.from_numpy(train_x[:, None])
    y = torch.from_numpy(train_y.astype(np.float32))
    pos_weight = torch.tensor((y == 0).sum().item() / max(1.0, (y == 1).sum().item()))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            b = order[start: start + 64]
            xb = x[b]
            if torch.rand((), generator=gen) < 0.5:
                xb = xb.flip(-1)
            if torch.rand((), generator=gen) < 0.5:
                xb = xb.flip(-2)
            opt.zero_grad()
            loss_fn(net(xb).squeeze(1), y[b]).backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        t = torch.from_numpy(test_x[:, None])
        views = [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
        return torch.stack([net(v).squeeze(1) for v in views]).mean(0).numpy()


def aurocs(scores: np.ndarray, classes: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    good = classes == "good"
    out = {"all defects": roc_auc_score(~good, scores)}
    for g in GROUPS:
        sel = good | (classes == g)
        out[g] = roc_auc_score(classes[sel] == g, scores[sel])
    return {k: round(float(v), 3) for k, v in out.items()}


def main(argv=None) -> None:
    from pathlib import Path

    from bench.quality import _datasets, _load_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args(argv)

    [(_, source, options, normal)] = _datasets(Path("../shared/data"), None)["elpv"]
    fit, held, test, _, _, classes = _load_task(source, options, normal, with_classes=True)
    goods = np.concatenate([fit, held])
    print(f"elpv: {len(goods)} good training cells; test: "
          + ", ".join(f"{c} {int((classes == c).sum())}" for c in np.unique(classes)), flush=True)
    fold = folds(classes, args.folds, args.seed)
    test_y = (classes != "good").astype(np.int64)
    rows = {}
    for name, factor in (("logistic regression, pixels at 32x32", None), ("small CNN from scratch, 75x75", 4)):
        t0 = time.perf_counter()
        if factor is None:
            import torch
            from torch.nn import functional as F

            def prep(a):
                t = torch.from_numpy(a[..., 0].astype(np.float32) / 255.0)[:, None]
                return F.interpolate(t, size=(32, 32), mode="area")[:, 0].reshape(len(a), -1).numpy()
        else:
            def prep(a, f=factor):
                return shrink(a, f)
        g, t = prep(goods), prep(test)
        scores = np.zeros(len(test))
        for k in range(args.folds):
            tr, te = fold != k, fold == k
            train_x = np.concatenate([g, t[tr]])
            train_y = np.r_[np.zeros(len(g), np.int64), test_y[tr]]
            if factor is None:
                scores[te] = logistic(train_x, train_y, t[te], args.seed)
            else:
                scores[te] = cnn(train_x, train_y, t[te], args.seed + k, args.epochs)
        rows[name] = {**aurocs(scores, classes), "seconds": round(time.perf_counter() - t0, 1)}
        print(name, json.dumps(rows[name]), flush=True)

    from anomaly_ae.config import DetectorConfig, ModelConfig
    from anomaly_ae.detector import AutoencoderDetector

    det = AutoencoderDetector(DetectorConfig(model=ModelConfig(kind="nearest"))).fit(fit, held)
    name = "--model nearest (good cells only, as the product trains it)"
    rows[name] = aurocs(det.score_samples(test), classes)
    print(name, json.dumps(rows[name]), flush=True)


if __name__ == "__main__":  # decode workers import this module: the work must not run again there
    main()
