"""Image arrays as the detector takes them: uint8 (n, height, width, channels), and the seeded share of
them held back to decide when training stops."""

from __future__ import annotations

import numpy as np

from anomaly_ae.errors import DataError


def split_validation(images: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(training images, early-stopping images): a seeded `fraction` of `images` held back, or
    (images, None) when that would leave fewer than 1 held back or 2 to train on."""
    n_val = int(round(fraction * len(images)))
    if n_val < 1 or len(images) - n_val < 2:
        return images, None
    perm = np.random.default_rng(seed + 1).permutation(len(images))
    return images[np.sort(perm[n_val:])], images[np.sort(perm[:n_val])]


def check_images(images, shape: tuple | None = None) -> np.ndarray:
    """`images` as a numpy array, checked to be uint8 (n, height, width, channels) of `shape` if given."""
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4:
        raise DataError(f"Images must be a uint8 array (n, height, width, channels), got {a.dtype} {a.shape}.")
    if shape is not None and tuple(a.shape[1:]) != tuple(shape):
        raise DataError(f"Images are {a.shape[1:]} but the model expects {tuple(shape)} (height, width, channels).")
    return a
