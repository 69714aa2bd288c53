"""Where images come from: image folders, torchvision datasets and the bundled samples.

A source lists `Item`s in a stable order. File items are decoded later, in worker
processes; array items already hold their pixels. `open_source` turns a user's spec
(``path/to/folder``, ``torchvision:MNIST``, ``sample:mnist5k``) into a source.
"""

from __future__ import annotations

from pathlib import Path

from anomaly_ae.sources.base import Item, Listing, Source, assign_test_split, require_items

__all__ = ["Item", "Listing", "Source", "assign_test_split", "open_source", "require_items"]


def open_source(spec: str, *, root: str | None = None, download: bool = False) -> Source:
    """The source a spec names.

    Args:
        spec: ``sample:<name>``, ``torchvision:<Dataset>`` or a folder path.
        root: where torchvision datasets live (torchvision's own layout under it).
        download: let torchvision download a missing dataset.

    Raises:
        DataError: unknown sample or dataset, or a path that does not exist.
    """
    if spec.startswith("sample:"):
        from anomaly_ae.sources.bundled import BundledSource

        return BundledSource(spec.split(":", 1)[1])
    if spec.startswith("torchvision:"):
        from anomaly_ae.sources.torchvision_source import TorchvisionSource

        return TorchvisionSource(spec.split(":", 1)[1], root=root, download=download)
    from anomaly_ae.sources.folder import FolderSource

    return FolderSource(Path(spec))
