"""Would a coarse whole-image member help `auto`'s ensemble on large images?

On large images `auto` keeps the tiled reconstruction kind and the discriminative one, both at full
resolution: they see small local defects. Defects that span the image (dark regions, uneven
shading) are seen better on the whole image shrunk. This trains `auto` as the product does, then a
`draem` and an `ae` on the images shrunk to 64 pixels a side, standardises each one's score on the
same held-back images `auto` uses, and prints the test AUROC of each member, of `auto` as it is,
and of the members with a coarse one added (the mean of the standardised scores, as the ensemble
combines, and their maximum).

    python -m bench.coarse_member surfaces elpv      # generated 256-px surfaces (two draws), ELPV
    python -m bench.coarse_member piped deeppcb --coarse draem   # one coarse kind only
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

SIDE = 64


def _config(kind: str, epochs: int | None = None):
    from anomaly_ae.config import DetectorConfig

    c = DetectorConfig()
    c = dataclasses.replace(c, model=dataclasses.replace(c.model, kind=kind))
    return c if not epochs else dataclasses.replace(c, train=dataclasses.replace(c.train, epochs=epochs))


def measure(name: str, fit: np.ndarray, test: np.ndarray, y: np.ndarray, epochs: int | None = None,
            kinds: tuple[str, ...] = ("draem", "ae")) -> dict:
    from sklearn.metrics import roc_auc_score

    from anomaly_ae.arrays import split_validation
    from anomaly_ae.detector import AutoencoderDetector
    from bench.quality import resize_images

    t0 = time.perf_counter()
    ens = AutoencoderDetector(_config("auto", epochs)).fit(fit)
    out = {"auto": roc_auc_score(y, ens.score_samples(test)), "fit_auto": time.perf_counter() - t0}
    _, held_back = split_validation(fit, ens.config.train.val_fraction, ens.config.train.seed)  # auto's own
    z = {}
    for m, centre, scale in zip(ens.members_, ens.centres_, ens.scales_):
        z[m.config.model.kind + ("/tiled" if m.config.model.tile else "")] = (m.score_samples(test) - centre) / scale
    out.update({k: roc_auc_score(y, v) for k, v in z.items()})
    members = list(z.values())
    small = [resize_images(a, SIDE) for a in (fit, test, held_back)]
    out["max of auto's members"] = roc_auc_score(y, np.max(members, axis=0))
    for kind in kinds:
        t0 = time.perf_counter()
        coarse = AutoencoderDetector(_config(kind, epochs)).fit(small[0])
        out[f"fit_{kind}@{SIDE}"] = time.perf_counter() - t0
        ref = coarse.score_samples(small[2])
        zc = (coarse.score_samples(small[1]) - ref.mean()) / max(ref.std(), 1e-12)
        out[f"{kind}@{SIDE}"] = roc_auc_score(y, zc)
        out[f"mean with {kind}@{SIDE}"] = roc_auc_score(y, np.mean(members + [zc], axis=0))
        out[f"max with {kind}@{SIDE}"] = roc_auc_score(y, np.max(members + [zc], axis=0))
    print(name, json.dumps({k: round(v, 3) for k, v in out.items()}), flush=True)
    return out


def main(argv=None) -> None:
    which = list(sys.argv[1:] if argv is None else argv)
    kinds: tuple[str, ...] = ("draem", "ae")
    if "--coarse" in which:
        at = which.index("--coarse")
        kinds = tuple(which[at + 1].split(","))
        del which[at: at + 2]
    if "surfaces" in which:
        from tests.unit.test_draem import surfaces

        for s in (0, 1):
            train = surfaces(96, s, side=256)
            ok, bad = surfaces(60, 10 * s + 1, side=256), surfaces(60, 10 * s + 2, defect=True, side=256)
            measure(f"surfaces256 seed {s}", train, np.concatenate([ok, bad]), np.r_[np.zeros(60), np.ones(60)] > 0,
                    epochs=15, kinds=kinds)
    for label, fit, test, y in shared_tasks(which):
        measure(label, fit, test, y, kinds=kinds)


def shared_tasks(names: list[str]):
    """(name and task, fit images, test images, test is-anomaly) of every task of the named
    `bench.quality` datasets in ../shared/data ('surfaces', generated, is the caller's)."""
    from bench.quality import _datasets, _load_task

    tasks = _datasets(Path("../shared/data"), None)
    for name in names:
        if name == "surfaces":
            continue
        for task, source, options, normal in tasks[name]:
            fit, _, test, y, _ = _load_task(source, options, normal)
            yield f"{name} {task}", fit, test, y


if __name__ == "__main__":  # decode workers import this module: the work must not run again there
    main()
