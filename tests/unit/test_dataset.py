"""Reading datasets: selections, streaming batches equal to whole loads, class resolution."""

import numpy as np
import pytest

from anomaly_ae.dataset import Dataset
from anomaly_ae.errors import DataError


def test_rows_and_load(mnist_ds, mnist_images):
    pixels, classes, splits = mnist_images
    ds = Dataset(mnist_ds)
    rows = ds.rows(split="train", classes=["3", "5"])
    assert len(rows) == 700
    assert np.array_equal(ds.load(rows), pixels[(splits == "train") & np.isin(classes, ["3", "5"])])


def test_iter_batches_streams_the_same_pixels(mnist_ds, mnist_images):
    ds = Dataset(mnist_ds)
    rows = ds.rows(split="test")
    streamed = [(idx, px) for idx, px, _ in ds.iter_batches(rows, batch_size=97)]
    assert max(len(px) for _, px in streamed) <= 97
    assert np.array_equal(np.concatenate([px for _, px in streamed]), mnist_images[0][rows])
    ids = [i for idx, _ in streamed for i in idx["image_id"].to_pylist()]
    assert ids == ds.index()["image_id"].take(rows).to_pylist()


def test_resolve_classes(mnist_ds):
    ds = Dataset(mnist_ds)
    assert ds.resolve_classes(["7", "3"]) == ["7", "3"]
    with pytest.raises(DataError, match="Classes: 0, 1"):
        ds.resolve_classes(["cat"])
    assert ds.default_normal() == []


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="anomaly-ae ingest"):
        Dataset(tmp_path)
