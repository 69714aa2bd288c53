"""Shared fixtures: real data the project gets by itself, fitted once per session."""

from __future__ import annotations

import os
import tempfile

# Offline, quiet Prefect for every test process, set before anything imports prefect: the project's
# own defaults (flows.offline) and a throwaway PREFECT_HOME.
import flows.offline  # noqa: E402,F401,I001

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="anomaly-ae-prefect-"))
# Exported scoring graphs are kept in a throwaway folder, never in the user's cache.
os.environ["ANOMALY_AE_CACHE"] = tempfile.mkdtemp(prefix="anomaly-ae-cache-")

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

from anomaly_ae.config import DetectorConfig, TrainConfig

# No per-example deadline: timings on a loaded 2-core CI machine are no property of the code.
settings.register_profile("anomaly-ae", deadline=None)
settings.load_profile("anomaly-ae")


def pytest_collection_modifyitems(config, items):
    """GPU tests skip without CUDA (checked lazily so collection stays fast)."""
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist_ds(tmp_path_factory) -> Path:
    """The bundled 5,000 real MNIST digits, ingested once."""
    from anomaly_ae import steps

    out = tmp_path_factory.mktemp("ds") / "mnist5k"
    steps.ingest("sample:mnist5k", out)
    return out


@pytest.fixture(scope="session")
def mnist_images(mnist_ds):
    """(pixels, class names, splits) of the bundled MNIST dataset."""
    from anomaly_ae.dataset import Dataset

    ds = Dataset(mnist_ds)
    idx = ds.index()
    return ds.load(), np.array(idx["class_name"].to_pylist()), np.array(idx["split"].to_pylist())


FAST = DetectorConfig(train=TrainConfig(epochs=12, patience=4))


@pytest.fixture(scope="session")
def mnist_model(mnist_ds, tmp_path_factory) -> Path:
    """A model with digit 0 normal, trained once per session on the bundled MNIST."""
    from anomaly_ae import steps

    out = tmp_path_factory.mktemp("models") / "mnist-0"
    steps.train(mnist_ds, out, normal=["0"], config=FAST)
    return out


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Save a uint8 array as PNG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


# One epoch of one step: models for tests of files and folders, not of detection.
TINY = DetectorConfig(train=TrainConfig(epochs=1, min_steps_per_epoch=1, allow_collapsed=True, device="cpu"))


def noise_workspace(root: Path) -> dict[str, Path]:
    """24 noise PNGs under root/imgs, their dataset (root/ds) and a TINY model (root/model)."""
    from anomaly_ae import steps

    rng = np.random.default_rng(0)
    for k in range(24):
        write_png(root / "imgs" / f"img{k:02d}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    steps.ingest(str(root / "imgs"), root / "ds")
    steps.train(root / "ds", root / "model", config=TINY)
    return {"root": root, "input": root / "imgs", "dataset": root / "ds", "model": root / "model"}


@pytest.fixture(scope="session")
def mnist_folder(mnist_images, tmp_path_factory) -> Path:
    """The test split of the bundled MNIST as PNG files in class folders (digit 0..9)."""
    pixels, classes, splits = mnist_images
    root = tmp_path_factory.mktemp("folders") / "mnist_test"
    for k in np.flatnonzero(splits == "test"):
        write_png(root / classes[k] / f"{k:05d}.png", pixels[k, :, :, 0])
    return root
