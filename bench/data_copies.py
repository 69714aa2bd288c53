"""Byte-identical images across the splits of the shared benchmark sets: a test image that is a
copy of a training image is one the model learned, and flatters the test AUROC.

    python -m bench.data_copies                 # every set under ../shared/data
    python -m bench.data_copies --root DIR piped/PA_GLA01_TL
    python -m bench.data_copies --methods ae,auto   # AUROC with and without them, one model each

With `--methods`, every PIPED type whose test split holds copies is trained once per method (as
`bench.quality` does) and its test AUROC given on all test images and without the copies.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
from pathlib import Path

from bench.quality import SHARED

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def copies_across_splits(folder: Path) -> list[list[str]]:
    """Groups of byte-identical images (paths relative to `folder`) found in more than one split
    (the first path part); ground-truth masks are left out."""
    by_hash = collections.defaultdict(list)
    for root, _, files in os.walk(folder):
        if "ground_truth" in Path(root).relative_to(folder).parts:
            continue
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES):
                path = Path(root) / name
                by_hash[hashlib.sha256(path.read_bytes()).hexdigest()].append(str(path.relative_to(folder)))
    return [sorted(g) for g in by_hash.values() if len({p.split(os.sep)[0] for p in g}) > 1]


def auroc_without_copies(methods: list[str], root: Path) -> None:
    """For each PIPED type with copies in its test split: AUROC of each method on all test images
    and without the copies, from the same trained model."""
    import json

    from anomaly_ae.metrics import auroc
    from bench.quality import _datasets, _load_task, _our_method

    for task, source, options, normal in _datasets(root, None).get("piped", []):
        fit, cal, test, y, _, copies = _load_task(source, options, normal, with_copies=True)
        if not copies.any():
            continue
        for spec in methods:
            scores = _our_method(spec).fit(fit, cal).score(test)
            print(json.dumps({"task": task, "method": spec, "test": len(test), "copies": int(copies.sum()),
                              "auroc_all": round(float(auroc(y, scores)), 4),
                              "auroc_without_copies": round(float(auroc(y[~copies], scores[~copies])), 4)}),
                  flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="*", help="folders under --root (default: every PIPED type, deeppcb, elpv)")
    p.add_argument("--root", type=Path, default=SHARED)
    p.add_argument("--methods", default=None, help="comma-separated method specs of bench.quality (e.g. ae,auto)")
    args = p.parse_args(argv)
    if args.methods:
        auroc_without_copies(args.methods.split(","), args.root)
        return
    sets = args.sets or ([f"piped/{d}" for d in sorted(os.listdir(args.root / "piped"))] + ["deeppcb", "elpv"])
    for name in sets:
        folder = args.root / name
        if not folder.is_dir():
            continue
        groups = copies_across_splits(folder)
        test_copies = sum(1 for g in groups for q in g if q.startswith("test" + os.sep))
        print(f"{name}: {len(groups)} group(s) across splits, {test_copies} test image(s) that copy a training image")
        for g in groups:
            print("    " + " = ".join(g))


if __name__ == "__main__":
    main()
