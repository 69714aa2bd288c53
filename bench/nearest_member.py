"""What does the nearest member add to `auto` on large images? The same training, with and without it.

On images larger than 64 a side `auto` keeps four members: the tiled reconstruction kind and the
discriminative one at full size, and the discriminative and nearest kinds on the whole image
shrunk. This trains `auto` as the product does, then scores the test images with every member
(each standardised as the ensemble standardises it) and prints the test AUROC of each member, of
the ensemble as it is (the highest of the four) and of the three without the nearest member (the
rule before it), so that the difference is the member's alone, not one training against another.

    python -m bench.nearest_member piped elpv deeppcb
    python -m bench.nearest_member surfaces           # generated 256-px surfaces: scratches, stains
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def measure(name: str, fit: np.ndarray, test: np.ndarray, y: np.ndarray, epochs: int | None = None) -> dict:
    from sklearn.metrics import roc_auc_score

    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.shrink import member_tag, shrink_images
    from bench.coarse_member import _config

    t0 = time.perf_counter()
    ens = AutoencoderDetector(_config("auto", epochs)).fit(fit)
    fit_s = time.perf_counter() - t0
    now = ens.score_samples(test)
    z = {member_tag(m.config.model.kind, ens.shape_, k) + ("/tiled" if m.config.model.tile else ""):
         (m.score_samples(shrink_images(test, k)) - c) / d
         for m, k, c, d in zip(ens.members_, ens.shrinks_, ens.centres_, ens.scales_)}
    before = [v for k, v in z.items() if not k.startswith("nearest")]
    out = {"auto now": roc_auc_score(y, now), "auto before (no nearest member)": roc_auc_score(y, np.max(before, axis=0)),
           **{k: roc_auc_score(y, v) for k, v in z.items()}, "fit_s": fit_s}
    print(name, json.dumps({k: round(v, 3) for k, v in out.items()}), flush=True)
    return out


def main(argv=None) -> None:
    which = list(sys.argv[1:] if argv is None else argv)
    rows = {}
    if "surfaces" in which:
        from tests.unit.test_draem import LARGE_SIDE, STAIN_DEPTH, stained, surfaces

        train = surfaces(96, 0, side=LARGE_SIDE)
        ok = surfaces(60, 1, side=LARGE_SIDE)
        for label, bad in (("scratches and pits", surfaces(60, 2, defect=True, side=LARGE_SIDE)),
                           ("stains", stained(60, 3, depth=STAIN_DEPTH))):
            rows[f"surfaces256 {label}"] = measure(f"surfaces256 {label}", train, np.concatenate([ok, bad]),
                                                   np.r_[np.zeros(60), np.ones(60)] > 0, epochs=15)
    from bench.coarse_member import shared_tasks

    for label, fit, test, y in shared_tasks(which):
        rows[label] = measure(label, fit, test, y)
    for key in ("auto now", "auto before (no nearest member)"):
        values = [r[key] for r in rows.values()]
        print(f"{key}: mean {np.mean(values):.3f}, lowest {np.min(values):.3f} over {len(values)} tasks", flush=True)


if __name__ == "__main__":  # decode workers import this module: the work must not run again there
    main()
