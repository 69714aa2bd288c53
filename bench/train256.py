"""Training a reconstruction autoencoder on 700 gray 256x256 images on this machine: network widths
against fit time and image AUROC, side by side in one run.

    python -m bench.train256 [--widths 8/128,16/128,32/256] [--data-root ../shared/data]

The set: 700 good ELPV solar cells (300x300, resized to 256x256), a seeded draw from its training
split; as `anomaly-ae train` does, 20% of them are held out for the threshold and the detector holds
back 10% of the rest for early stopping. Every width trains with the defaults otherwise (30 epochs,
early stopping) and is scored on the whole ELPV test split (377 good, 464 defective) at 256x256.
Widths are base/max channels; "auto" is whatever the configuration's defaults resolve to at this size.
Fit seconds include calibration scoring; run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from bench.common import md_table, write_results
from bench.quality import SHARED, _load_task, resize_images

SIDE = 256
N_IMAGES = 700


def _split(data_root):
    fit, held, test, y, _ = _load_task(str(data_root / "elpv"), {}, "good")
    good = np.concatenate([fit, held])
    pick = np.random.default_rng(0).permutation(len(good))[:N_IMAGES]
    n_cal = int(round(0.2 * N_IMAGES))
    return (resize_images(good[pick[n_cal:]], SIDE), resize_images(good[pick[:n_cal]], SIDE),
            resize_images(test, SIDE), y)


def run(widths: str, fit, cal, test, y) -> dict:
    from sklearn.metrics import roc_auc_score

    from anomaly_ae.config import DetectorConfig
    from anomaly_ae.detector import AutoencoderDetector

    cfg = DetectorConfig()
    if widths != "auto":
        base, cap = (int(v) for v in widths.split("/"))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, base_channels=base, max_channels=cap))
    t0 = time.perf_counter()
    det = AutoencoderDetector(cfg).fit(fit)
    det.calibrate(cal)
    fit_s = time.perf_counter() - t0
    scores = det.score_samples(test)
    hist = det.history_
    model = det.config.model
    return {"widths": widths, "resolved": f"{model.base_channels}/{model.max_channels}",
            "auroc": float(roc_auc_score(y, scores)), "fit_s": fit_s, "epochs": len(hist["train_loss"]),
            "best_epoch": hist["best_epoch"] + 1, "stopped_early": hist["stopped_early"],
            "params": sum(p.numel() for p in det.model_.parameters())}


def main(argv=None) -> None:
    from pathlib import Path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="auto,32/256", help="comma-separated base/max channels, or auto")
    p.add_argument("--data-root", type=Path, default=SHARED)
    p.add_argument("--suffix", default="")
    args = p.parse_args(argv)
    data = _split(args.data_root)
    print(f"fit {len(data[0])}, held out {len(data[1])}, test {len(data[2])} at {SIDE}x{SIDE}", flush=True)
    rows = []
    for w in args.widths.split(","):
        r = run(w, *data)
        rows.append(r)
        print(f"widths {w:8s} ({r['resolved']}): AUROC {r['auroc']:.3f}  fit {r['fit_s']:.0f} s  "
              f"{r['epochs']} epochs (best {r['best_epoch']})  {r['params']:,} parameters", flush=True)
    base = rows[-1]["fit_s"]
    md = "# Training on 700 gray 256x256 images (ELPV good cells)\n\n" + md_table(
        ["widths", "resolved", "image AUROC", "fit s", f"time vs {rows[-1]['widths']}", "epochs (best)", "parameters"],
        [[r["widths"], r["resolved"], r["auroc"], round(r["fit_s"]), round(r["fit_s"] / base, 2),
          f"{r['epochs']} ({r['best_epoch']})", r["params"]] for r in rows])
    j, m = write_results(f"train256{args.suffix}", {"rows": rows}, md)
    print(m.read_text())


if __name__ == "__main__":
    main()
