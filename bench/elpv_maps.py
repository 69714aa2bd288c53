"""ELPV: do the models' anomaly maps gain from normalising them against normal cells, or from
fusing them with a whole-cell score? Image AUROC side by side, on all test cells and on each label.

    python -m bench.elpv_maps [--data-root ../shared/data] [--kinds draem,ae] [--side 128]

Each kind is trained with the defaults (`AutoencoderDetector(DetectorConfig(model=kind))`) on the
905 fit cells of `bench.quality`'s split, resized to `side`; its held-out (226 good cells) and
test scores and maps (mean-pooled to 32x32) are kept in bench/.work, so a second run only scores.
Scores compared, per kind:
- the model's own score; the maximum and the mean of its map;
- per-position z-score of the map against the held-out cells' maps (mean of the top 1 / 10);
- the score standardised by the scores of the 5 / 10 / 30 held-out cells nearest in appearance
  (16x16 pixels), and the per-position z-score against those cells' maps (top 10);
- reconstruction kinds: the map of where the cell is darker than its reconstruction (a defect
  polarity known from the imaging: electroluminescence shows defects dark), top 10 and z-scored;
- fusions: the mean of scores standardised on the held-out cells, with the whole-cell score
  (distance to the nearest fit cell at 16x16 pixels), weights 0.3 / 0.5 / 0.7 on the model.
ELPV labels a cell defective with probability 1 (`defect_p100`) or 2/3 (`defect_p067`); the
AUROC is reported on all test cells and on the good cells against each label alone.
The results go to bench/results/elpv-maps.{json,md}. Training takes about 3 (draem) and 6-11
(ae) minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import write_results
from bench.elpv_pixels import auroc_rows, auroc_table
from bench.quality import SHARED, WORK, _load_task, resize_images

MAP_SIDE = 32


def _model_outputs(kind: str, side: int, fit, held, test) -> dict:
    """{held_s, test_s, held_m, test_m, fit_s}, and held_d, test_d (darker-than-reconstruction
    maps) for reconstruction kinds: scores and pooled maps of one kind (cached)."""
    from anomaly_ae.config import DetectorConfig, ModelConfig
    from anomaly_ae.detector import AutoencoderDetector

    cache = WORK / f"elpv-maps-{kind}-{side}.npz"
    if cache.exists():
        return dict(np.load(cache))
    det = AutoencoderDetector(DetectorConfig(model=ModelConfig(kind=kind)))
    t0 = time.perf_counter()
    det.fit(resize_images(fit, side))
    out = {"fit_s": np.array(time.perf_counter() - t0)}
    for name, x in (("held", held), ("test", test)):
        x = resize_images(x, side)
        scores, maps, dark = [], [], []
        for i in range(0, len(x), 64):
            s, recon, m = det.score_with_maps(x[i: i + 64])
            scores.append(s)
            maps.append(_pool(m))
            if kind != "draem":  # where the cell is darker than its reconstruction
                dark.append(_pool(np.clip(recon.mean(-1) - x[i: i + 64].mean(-1) / 255, 0, None)))
        out[f"{name}_s"], out[f"{name}_m"] = np.concatenate(scores), np.concatenate(maps)
        if dark:
            out[f"{name}_d"] = np.concatenate(dark)
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def _pool(maps: np.ndarray) -> np.ndarray:
    import torch
    from torch.nn import functional as F

    return F.adaptive_avg_pool2d(torch.from_numpy(maps.astype(np.float32))[:, None], MAP_SIDE)[:, 0].numpy()


def _standard(s, ref):
    return (s - ref.mean()) / ref.std()


def scores(kind: str, out: dict, looks: dict, whole: tuple) -> dict:
    """{name: test scores} of every variant above for one kind's outputs; `whole` is the whole-cell
    score of the (test, held-out) cells."""
    import torch

    hs, ts = torch.from_numpy(out["held_s"]), torch.from_numpy(out["test_s"])
    hm, tm = torch.from_numpy(out["held_m"]).flatten(1), torch.from_numpy(out["test_m"]).flatten(1)
    res = {f"{kind}: own score": ts, f"{kind}: map max": tm.max(1).values, f"{kind}: map mean": tm.mean(1)}
    z = (tm - hm.mean(0)) / (hm.std(0) + 1e-6)
    for q in (1, 10):
        res[f"{kind}: map z against held-out maps, top {q}"] = z.topk(q, 1).values.mean(1)
    near = torch.cdist(looks["test"], looks["held"]).topk(30, largest=False).indices
    for k in (5, 10, 30):
        ns, nm = hs[near[:, :k]], hm[near[:, :k]]
        res[f"{kind}: score standardised by the {k} nearest held-out cells"] = (ts - ns.mean(1)) / (ns.std(1) + 1e-6)
        sd = nm.std(1)
        res[f"{kind}: map z against the {k} nearest held-out cells, top 10"] = (
            ((tm - nm.mean(1)) / (sd + sd.mean())).topk(10, 1).values.mean(1))
    if "test_d" in out:
        hd, td = torch.from_numpy(out["held_d"]).flatten(1), torch.from_numpy(out["test_d"]).flatten(1)
        res[f"{kind}: darker than its reconstruction, top 10"] = td.topk(10, 1).values.mean(1)
        res[f"{kind}: darker than its reconstruction, z against held-out, top 10"] = (
            ((td - hd.mean(0)) / (hd.std(0) + 1e-6)).topk(10, 1).values.mean(1))
    for w in (0.3, 0.5, 0.7):
        res[f"{kind}: fused with the whole-cell score, weight {w}"] = (
            w * _standard(ts, hs) + (1 - w) * _standard(*whole))
    return {k: np.asarray(v) for k, v in res.items()}


def main(argv=None) -> None:
    import torch
    from torch.nn import functional as F

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=SHARED)
    p.add_argument("--kinds", default="draem,ae")
    p.add_argument("--side", type=int, default=128)
    args = p.parse_args(argv)
    fit, held, test, y, _, classes = _load_task(str(args.data_root / "elpv"), {}, "good", with_classes=True)

    def look(a):
        return F.adaptive_avg_pool2d(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255, 16).flatten(1)

    looks = {"fit": look(fit), "held": look(held), "test": look(test)}
    nearest = {k: torch.cdist(looks[k], looks["fit"]).min(1).values.numpy() for k in ("held", "test")}
    whole = (nearest["test"], nearest["held"])
    res = {"whole cell: distance to the nearest fit cell, 16x16": nearest["test"]}
    outs = {}
    for kind in args.kinds.split(","):
        outs[kind] = _model_outputs(kind, args.side, fit, held, test)
        print(f"{kind}: fit {float(outs[kind]['fit_s']):.0f} s", flush=True)
        res.update(scores(kind, outs[kind], looks, whole))
    if len(outs) > 1:
        fused = sum(_standard(o["test_s"], o["held_s"]) for o in outs.values()) + _standard(*whole)
        res[f"{' + '.join(outs)} + whole cell, standardised, equal weights"] = fused
    labels, rows = auroc_rows(res, y, classes)
    fit_s = {k: round(float(o["fit_s"]), 1) for k, o in outs.items()}
    md = (f"# ELPV: model maps normalised and fused (images resized to {args.side})\n\n"
          f"Fit seconds: {fit_s}. Test cells: {int((~y).sum())} good, "
          + ", ".join(f"{int((classes == c).sum())} {c}" for c in labels) + ".\n\n"
          + auroc_table(labels, rows))
    _, m = write_results("elpv-maps", {"fit_s": fit_s, "auroc": {r[0]: r[1:] for r in rows},
                                       "columns": ["all", *labels]}, md)
    print(m.read_text())


if __name__ == "__main__":
    main()
