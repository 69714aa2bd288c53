"""torchvision datasets, read through torchvision's own classes.

Without ``download`` the files must already lie under ``root`` in torchvision's layout (for
MNIST: ``root/MNIST/raw/train-images-idx3-ubyte`` and its siblings, uncompressed); a missing
file gets an error naming what was expected. With ``download`` torchvision fetches them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomaly_ae.errors import DataError
from anomaly_ae.sources.base import Item, Listing

# name -> how the class is called for each split ("train" flag or "split" argument)
DATASETS = {
    "MNIST": "train", "FashionMNIST": "train", "KMNIST": "train", "QMNIST": "train",
    "CIFAR10": "train", "CIFAR100": "train", "SVHN": "split",
}


def _lookup(name: str) -> str:
    for known in DATASETS:
        if known.lower() == name.lower():
            return known
    raise DataError(f"Unsupported torchvision dataset {name!r}. Supported: {', '.join(DATASETS)}.")


def expected_files(name: str, root: Path, split: str) -> list[str]:
    """The files torchvision looks for, so a missing-data error can name them."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    if name == "SVHN":
        return [str(root / cls.split_list[split][1])]
    if hasattr(cls, "base_folder") and hasattr(cls, "train_list"):  # CIFAR
        files = cls.train_list if split == "train" else cls.test_list
        return [str(root / cls.base_folder / f) for f, _ in files]
    resources = getattr(cls, "resources", [])
    raw = root / cls.__name__ / "raw"
    return [str(raw / os.path.splitext(os.path.basename(url))[0]) for url, *_ in resources]


class TorchvisionSource:
    """Both splits of a torchvision dataset, as uint8 arrays."""

    def __init__(self, name: str, root: str | None = None, download: bool = False):
        self.name = _lookup(name)
        self.root = Path(root).expanduser() if root else Path("data") / "torchvision"
        self.download = download

    def _open(self, split: str):
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.name)
        kwargs = {"split": split} if DATASETS[self.name] == "split" else {"train": split == "train"}
        try:
            return cls(str(self.root), download=self.download, **kwargs)
        except RuntimeError as exc:
            if self.download:
                raise DataError(f"torchvision could not prepare {self.name} in {self.root}: {exc}") from None
            missing = [f for f in expected_files(self.name, self.root, split) if not os.path.exists(f)]
            listed = "; ".join(missing or expected_files(self.name, self.root, split))
            raise DataError(
                f"{self.name} ({split}) not found under {self.root}: expected {listed}. "
                "Pass --download to fetch it, or --root to point at the folder that holds it."
            ) from None
        except OSError as exc:  # network errors during download, unreadable files
            raise DataError(f"Could not read or download {self.name} into {self.root}: {exc}") from None

    def list(self) -> Listing:
        """Items of the train split then the test split."""
        items: list[Item] = []
        classes: list[str] = []
        for split in ("train", "test"):
            ds = self._open(split)
            data, labels = _arrays(ds)
            classes = _class_names(ds, labels)
            items += [
                Item(key=f"{split}/{k}", array=data[k], label=int(labels[k]),
                     class_name=classes[int(labels[k])], split=split)
                for k in range(len(data))
            ]
        description = {"kind": "torchvision", "spec": f"torchvision:{self.name}",
                       "root": str(self.root.resolve()), "layout": "arrays"}
        return Listing(items, classes, description, [self.name, *_file_stats(self.root)])


def _arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):
        data = data.transpose(0, 2, 3, 1)  # SVHN stores N, C, H, W
    if labels.ndim > 1:  # QMNIST keeps extra columns; the first is the digit
        labels = labels[:, 0]
    return np.ascontiguousarray(data.astype(np.uint8, copy=False)), labels.astype(np.int64)


def _class_names(ds, labels: np.ndarray) -> list[str]:
    names = getattr(ds, "classes", None)
    if not names:
        return [str(k) for k in range(int(labels.max()) + 1)]
    return [str(n).split(" - ")[0] for n in names]


def _file_stats(root: Path) -> list:
    out = []
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            st = os.stat(os.path.join(dirpath, f))
            out.append((os.path.relpath(os.path.join(dirpath, f), root), st.st_size, st.st_mtime_ns))
    return sorted(out)
