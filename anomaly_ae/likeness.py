"""Whether the images of a batch are like those a model was trained on, in size and colour.

Scoring prepares every image as the training images were (resized to the model's size, converted
to its channels), so an image of another shape or colour is scored without a word, though the
model never saw one like it: a camera swapped for one of another resolution, images of another
product. The model records the sizes and colour of its training images (``data.sources`` in
model.pt, `summarise`); a batch is compared with them (`unlike`), its files on a sample of their
headers (cheap: no pixels are decoded), a dataset's on its recorded original sizes.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from anomaly_ae.imaging import GRAY_MODES

# Modes Pillow opens colour images as (gray ones: imaging.GRAY_MODES; a palette image may be either:
# not judged).
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
# How many sizes a summary keeps (the most common), and how many files of a batch are opened.
KEEP_SIZES, SAMPLE = 8, 64
# A side or an aspect ratio this far (relative) from every training image's counts as another shape.
SCALE_TOLERANCE, ASPECT_TOLERANCE = 0.10, 0.02


def colour_of(mode: str) -> str | None:
    return "gray" if mode in GRAY_MODES else "colour" if mode in COLOUR_MODES else None


def summarise(heights, widths, modes) -> dict:
    """{"sizes": [[h, w, count], ...] (the most common first), "gray": n, "colour": n} of images;
    with more sizes than it keeps, "range": [least and most height, width, aspect ratio] too."""
    sizes = Counter(zip(map(int, heights), map(int, widths)))
    colours = Counter(colour_of(m) for m in modes)
    out = {"sizes": [[h, w, n] for (h, w), n in sizes.most_common(KEEP_SIZES)],
           "gray": colours.get("gray", 0), "colour": colours.get("colour", 0)}
    if len(sizes) > KEEP_SIZES:
        hs, ws = [h for h, _ in sizes], [w for _, w in sizes]
        aspects = [w / h for h, w in sizes]
        out["range"] = [min(hs), max(hs), min(ws), max(ws), min(aspects), max(aspects)]
    return out


def _near(a: float, b: float, tolerance: float) -> bool:
    return abs(math.log(a / b)) <= math.log1p(tolerance)


def _shape_known(size: tuple[int, int], trained: dict) -> bool:
    h, w = size
    if any(_near(w / h, kw / kh, ASPECT_TOLERANCE) and _near(h, kh, SCALE_TOLERANCE) for kh, kw, _ in trained["sizes"]):
        return True
    if "range" not in trained:
        return False
    lo_h, hi_h, lo_w, hi_w, lo_a, hi_a = trained["range"]
    slack_side, slack_aspect = 1 + SCALE_TOLERANCE, 1 + ASPECT_TOLERANCE
    return (lo_h / slack_side <= h <= hi_h * slack_side and lo_w / slack_side <= w <= hi_w * slack_side
            and lo_a / slack_aspect <= w / h <= hi_a * slack_aspect)


def unlike(trained: dict | None, batch: dict | None, crop: tuple[int, int, int, int] | None = None) -> list[str]:
    """Sentences (empty: nothing to say) on how the images summarised in `batch` (`summarise`)
    differ from the training images summarised in `trained` (either None: unknown, nothing said).
    `crop`: the model's crop region (top, left, height, width), cut out of every image at the same
    place instead of resizing it (None: images are resized)."""
    if not trained or not batch or not trained.get("sizes") or not batch.get("sizes"):
        return []
    out = []
    n = sum(c for *_, c in batch["sizes"])
    odd = [(h, w, c) for h, w, c in batch["sizes"] if not _shape_known((h, w), trained)]
    known = _shown(trained["sizes"])
    region = crop and f"crop region (top, left, height, width: {', '.join(map(str, crop))})"
    small = [s for s in odd if crop and (s[0] < crop[0] + crop[2] or s[1] < crop[1] + crop[3])]
    cut = [s for s in odd if s not in small]
    if cut:
        how = (f"the model's {region} is cut out of them at the same place, so it may frame another part of the scene"
               if crop else "they were resized to its size, so their details (and any defect) appear at another "
               "scale or stretched")
        out.append(f"{_count(cut)} of {n} images{batch.get('sampled', '')} are {_shown(cut)} (width x height); "
                   f"the model was trained on {known} images: {how}")
    if small:
        out.append(f"{_count(small)} of {n} images{batch.get('sampled', '')} are {_shown(small)} (width x height), "
                   f"too small for the model's {region}: they are rejected")
    if trained.get("colour") == 0 and batch.get("colour"):
        out.append(f"{batch['colour']} of {n} images{batch.get('sampled', '')} are colour; the model was trained on "
                   "gray images: they were converted to gray")
    elif trained.get("gray") == 0 and batch.get("gray"):
        out.append(f"{batch['gray']} of {n} images{batch.get('sampled', '')} are gray; the model was trained on "
                   "colour images: their gray was copied into every channel")
    return out


def _count(sizes: list) -> int:
    return sum(c for *_, c in sizes)


def _shown(sizes: list) -> str:
    return ", ".join(f"{w}x{h}" for h, w, _ in sizes[:3]) + (" ..." if len(sizes) > 3 else "")


def of_files(paths: list[Path | str], sample: int = SAMPLE) -> dict | None:
    """`summarise` of up to `sample` of `paths`, spread evenly, from their headers (unreadable ones
    left out: scoring rejects them with a reason); None when none could be opened."""
    from PIL import Image

    total = len(paths)
    if total > sample:
        paths = [paths[int(k * total / sample)] for k in range(sample)]
    heights, widths, modes = [], [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                heights.append(im.height)
                widths.append(im.width)
                modes.append(im.mode)
        except Exception:  # noqa: BLE001 - whatever cannot be opened is for scoring to reject
            continue
    if not heights:
        return None
    return {**summarise(heights, widths, modes), "sampled": f" sampled from the batch's {total}" if total > sample else ""}


def of_rows(ds, rows) -> dict | None:
    """`summarise` of the rows `rows` of the dataset `ds` (their recorded original sizes and modes)."""
    import numpy as np

    if not len(rows):
        return None
    table = ds.originals().take(np.asarray(rows))
    return summarise(*(table[c].to_pylist() for c in ("orig_height", "orig_width", "orig_mode")))


def of_parts(parts) -> dict | None:
    """`summarise` of a scoring plan's partitions (`anomaly_ae.scoring.plan`): its files from a
    sample of their headers, a dataset's from its index."""
    from anomaly_ae.dataset import Dataset

    # (the paths as planned: a Path made for each of a large batch's files would cost more than
    # reading the sample's headers)
    files = [f[1] for p in parts if p.kind == "files" for f in p.files if f[5] is None]
    if files:
        return of_files(files)
    rows = [r for p in parts if p.kind == "dataset" for r in p.rows]
    return of_rows(Dataset(parts[0].dataset), rows) if rows else None


def of_training(meta: dict) -> dict | None:
    """The training images' summary a model recorded; for a model that recorded none, its dataset's
    normal training images while the dataset is there unchanged (None otherwise)."""
    trained = meta.get("data") or {}
    if trained.get("sources"):
        return trained["sources"]
    from anomaly_ae.dataset import own_dataset, training_rows

    ds = own_dataset(meta)
    if ds is None:
        return None
    return of_rows(ds, training_rows(ds, trained, meta.get("normal_classes") or []))
