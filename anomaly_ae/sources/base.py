"""What every source lists: `Item`s in a `Listing`, and the helpers sources and ingest share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from anomaly_ae.errors import DataError


@dataclass
class Item:
    """One image to ingest or score: a file (`path`) or an in-memory array (`array`)."""

    key: str  # relative path, or "<split>/<index>" for array datasets
    path: Path | str | None = None
    array: np.ndarray | None = None
    label: int | None = None
    class_name: str | None = None
    split: str | None = None
    mask_path: Path | None = None
    reject_reason: str | None = None  # set when listing already shows the item is unusable


@dataclass
class Listing:
    """A source's items and what describes them.

    The items may be given as a function that loads them: they are then loaded on first use, so
    that checking whether a dataset is up to date (which needs only the description and the
    fingerprint parts) does not load a bundled sample. The fingerprint parts may be a function
    too (a folder's file sizes and times: a system call per file), gathered on first use: it is
    given the facts already known, {path: (size, modification time in ns)}, and looks up only the
    others (ingest knows those of every file it read, from reading it).
    """

    _items: list[Item] | Callable[[], list[Item]]
    classes: list[str]
    description: dict = field(default_factory=dict)  # kind, spec, root, layout... (JSON-able)
    # Cheap facts that change with the data, or a function of the known file facts giving them.
    _fingerprint_parts: list | Callable[[dict], list] = field(default_factory=list)

    @property
    def items(self) -> list[Item]:
        """The items (loaded now if they were given as a function)."""
        if callable(self._items):
            self._items = self._items()
        return self._items

    @property
    def fingerprint_parts(self) -> list:
        """Facts that change when the data does (gathered now if they were given as a function)."""
        return self.fingerprint_parts_knowing({})

    def fingerprint_parts_knowing(self, known: dict) -> list:
        """The fingerprint parts, taking the file facts in `known` ({path: (size, modification
        time in ns)}, None where not known) instead of looking them up again."""
        if callable(self._fingerprint_parts):
            self._fingerprint_parts = self._fingerprint_parts(known)
        return self._fingerprint_parts


class Source(Protocol):
    """Anything that can list items."""

    def list(self) -> Listing: ...  # noqa: E704


def require_items(listing: Listing, where: str) -> Listing:
    """Raise a helpful error when a source lists nothing."""
    if not listing.items:
        raise DataError(f"No images found in {where}. Check the path: images are read from the folder itself, from "
                        "one sub-folder per class, or from train/ and test/ (`anomaly-ae ingest --help`).")
    return listing


def assign_test_split(items: list[Item], fraction: float, seed: int) -> None:
    """Mark a seeded, per-class share `fraction` of unsplit items as 'test', the rest 'train'."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"test fraction must be between 0 and 1 (exclusive), got {fraction}.")
    by_class: dict = {}
    for k, item in enumerate(items):
        by_class.setdefault(item.class_name, []).append(k)
    rng = np.random.default_rng(seed)
    for cls in sorted(by_class, key=lambda c: (c is None, str(c))):
        idx = np.asarray(by_class[cls])
        n_test = int(round(fraction * len(idx)))
        test = set(rng.permutation(idx)[:n_test].tolist())
        for k in idx.tolist():
            items[k].split = "test" if k in test else "train"
