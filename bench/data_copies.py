"""Byte-identical images across the splits of the shared benchmark sets: a test image that is a
copy of a training image is one the model learned, and flatters the test AUROC.

    python -m bench.data_copies                 # every set under ../shared/data
    python -m bench.data_copies --root DIR piped/PA_GLA01_TL
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="*", help="folders under --root (default: every PIPED type, deeppcb, elpv)")
    p.add_argument("--root", type=Path, default=SHARED)
    args = p.parse_args(argv)
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
