"""ELPV by label group, and the nearest kind's memory at full size against shrunk, in one run.

ELPV's defective test cells come in two groups: ``defect_p100`` (certainly defective) and
``defect_p067`` (likely defective, experts not sure). This trains the nearest kind as the product
does (``--model nearest``: every training cell kept, compared shrunk where they do not all fit at
full size) and as it did before (at full size, a seeded draw of the cells that fit the memory), on
the same split, and prints each one's test AUROC against the good test cells: both groups, each
group alone.

    python -m bench.elpv_groups
"""

from __future__ import annotations

import json
import time

import numpy as np


def measure(label: str, fit, held, test, classes, full_size: bool) -> dict:
    from sklearn.metrics import roc_auc_score

    from anomaly_ae import nearest
    from anomaly_ae.config import DetectorConfig, ModelConfig
    from anomaly_ae.detector import AutoencoderDetector

    rule = nearest.compare_factor
    if full_size:
        nearest.compare_factor = lambda n, shape: 1
    try:
        t0 = time.perf_counter()
        det = AutoencoderDetector(DetectorConfig(model=ModelConfig(kind="nearest"))).fit(fit, held)
        det.calibrate(held)
        fit_s = time.perf_counter() - t0
    finally:
        nearest.compare_factor = rule
    scores = det.score_samples(test)
    good = classes == "good"
    out = {"kept": int(det.model_.bank.shape[0]), "compared at": "x".join(map(str, det.model_.compared[:0:-1])),
           "score": det.config.score.method, "fit_s": round(fit_s, 1)}
    for name, group in (("all defects", ~good), ("defect_p100", classes == "defect_p100"),
                        ("defect_p067", classes == "defect_p067")):
        sel = good | group
        out[name] = round(float(roc_auc_score(group[sel], scores[sel])), 3)
    flagged = scores > det.threshold_
    out["FPR"], out["TPR"] = round(float(flagged[good].mean()), 3), round(float(flagged[~good].mean()), 3)
    print(label, json.dumps(out), flush=True)
    return out


def main() -> None:
    from pathlib import Path

    from bench.quality import _datasets, _load_task

    [(_, source, options, normal)] = _datasets(Path("../shared/data"), None)["elpv"]
    fit, held, test, _, _, classes = _load_task(source, options, normal, with_classes=True)
    print(f"elpv: {len(fit)} fit, {len(held)} held-out good cells; test: "
          + ", ".join(f"{c} {int((classes == c).sum())}" for c in np.unique(classes)), flush=True)
    measure("nearest, full size (a draw that fits the memory)", fit, held, test, classes, full_size=True)
    measure("nearest, as the product runs it", fit, held, test, classes, full_size=False)


if __name__ == "__main__":  # decode workers import this module: the work must not run again there
    main()
