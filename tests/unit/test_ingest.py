"""Ingest: pixels read back equal a direct decode, rejects, policy, atomicity, determinism."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anomaly_ae import steps
from anomaly_ae.config import IngestConfig
from anomaly_ae.dataset import Dataset
from anomaly_ae.errors import DataError
from anomaly_ae.ingest import fingerprint, image_id, ingest
from anomaly_ae.sources import open_source
from tests.conftest import write_png

RNG = np.random.default_rng(1)


def make_folder(root, n=6, size=(12, 10), rgb=False):
    arrays = {}
    for k in range(n):
        shape = (*size, 3) if rgb else size
        arr = RNG.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{'ab'[k % 2]}/{k:02d}.png"] = arr
        write_png(root / ("ab"[k % 2]) / f"{k:02d}.png", arr)
    return arrays


def test_pixels_read_back_equal_direct_decode(tmp_path):
    make_folder(tmp_path / "src", rgb=True)
    meta = ingest(open_source(str(tmp_path / "src")).list(), tmp_path / "ds", workers=1)
    assert meta["image_shape"] == [12, 10, 3] and meta["preprocess"]["channels"] == "RGB"
    ds = Dataset(tmp_path / "ds")
    index = ds.index()
    pixels = ds.load()
    for k, key in enumerate(index["source"].to_pylist()):
        direct = np.asarray(Image.open(tmp_path / "src" / key))
        assert np.array_equal(pixels[k], direct)
        assert index["image_id"][k].as_py() == image_id(key)
    assert index["class_name"].to_pylist() == ["a", "a", "a", "b", "b", "b"]


def test_dataset_is_plain_parquet_with_metadata(tmp_path):
    make_folder(tmp_path / "src")
    ingest(open_source(str(tmp_path / "src")).list(), tmp_path / "ds")
    table = pq.read_table(tmp_path / "ds" / "images.parquet")
    assert {"image_id", "source", "label", "class_name", "split", "sha256", "pixels", "mask"} <= set(table.column_names)
    meta = json.loads(pq.read_metadata(tmp_path / "ds" / "images.parquet").metadata[b"anomaly_ae"])
    assert meta["schema_version"] == 1 and meta["classes"] == ["a", "b"]
    assert meta["counts"]["by_split"] == {"unsplit": {"a": 3, "b": 3}}
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["fingerprint"] == meta["fingerprint"]
    assert pq.ParquetFile(tmp_path / "ds" / "images.parquet").metadata.row_group(0).column(0).compression == "ZSTD"


def test_same_ingest_twice_gives_same_rows(tmp_path):
    make_folder(tmp_path / "src", n=70)  # enough files for the process pool
    ingest(open_source(str(tmp_path / "src")).list(), tmp_path / "one", workers=2)
    ingest(open_source(str(tmp_path / "src")).list(), tmp_path / "two", workers=1)
    one, two = pq.read_table(tmp_path / "one" / "images.parquet"), pq.read_table(tmp_path / "two" / "images.parquet")
    assert one.equals(two)


def test_bad_files_are_rejected_and_the_rest_ingested(tmp_path):
    src = tmp_path / "src"
    make_folder(src)
    (src / "a" / "zero.png").write_bytes(b"")
    (src / "a" / "text.png").write_text("this is not an image")
    good = (src / "b" / "01.png").read_bytes()
    (src / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    meta = ingest(open_source(str(src)).list(), tmp_path / "ds")
    assert meta["counts"]["images"] == 6 and meta["counts"]["rejects"] == 3
    rejects = Dataset(tmp_path / "ds").rejects().to_pylist()
    reasons = {r["source"]: r["reason"] for r in rejects}
    assert "empty file" in reasons["a/zero.png"]
    assert "not a recognised image" in reasons["a/text.png"]
    assert "corrupt or truncated" in reasons["b/truncated.png"]


def test_mixed_sizes_use_the_default_size_and_mixed_colour_uses_rgb(tmp_path):
    write_png(tmp_path / "src" / "a.png", np.zeros((10, 10), np.uint8))
    write_png(tmp_path / "src" / "b.png", np.zeros((12, 10, 3), np.uint8))
    meta = ingest(open_source(str(tmp_path / "src")).list(), tmp_path / "ds")
    assert meta["image_shape"] == [256, 256, 3]
    meta = ingest(open_source(str(tmp_path / "src")).list(), tmp_path / "ds2", IngestConfig(size="16"))
    assert meta["image_shape"] == [16, 16, 3]


def test_masks_are_ingested_with_their_images(tmp_path):
    src = tmp_path / "src"
    write_png(src / "train" / "good" / "0.png", np.zeros((8, 8), np.uint8))
    write_png(src / "test" / "hole" / "1.png", np.zeros((8, 8), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    write_png(src / "ground_truth" / "hole" / "1_mask.png", mask)
    meta = ingest(open_source(str(src)).list(), tmp_path / "ds")
    assert meta["counts"]["masks"] == 1
    ds = Dataset(tmp_path / "ds")
    masks = ds.load(column="mask")
    rows = ds.index()["source"].to_pylist()
    assert np.array_equal(masks[rows.index("test/hole/1.png")], mask)
    assert masks[rows.index("train/good/0.png")].max() == 0


def test_interrupted_ingest_leaves_nothing(tmp_path):
    make_folder(tmp_path / "src", n=300)

    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(open_source(str(tmp_path / "src")).list(), tmp_path / "ds", progress=boom)
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_existing_output_needs_overwrite_and_up_to_date_is_skipped(tmp_path):
    make_folder(tmp_path / "src")
    first = steps.ingest(str(tmp_path / "src"), tmp_path / "ds")
    again = steps.ingest(str(tmp_path / "src"), tmp_path / "ds")
    assert not first["cached"] and again["cached"]
    write_png(tmp_path / "src" / "a" / "new.png", np.zeros((12, 10), np.uint8))
    with pytest.raises(DataError, match=f"already exists and is out of date: files were added, removed or rewritten "
                                        rf"in {tmp_path / 'src'} since it was made \(6 files then, 7 now; "):
        steps.ingest(str(tmp_path / "src"), tmp_path / "ds")
    with pytest.raises(DataError, match="out of date"):  # --force redoes the same dataset, never replaces another
        steps.ingest(str(tmp_path / "src"), tmp_path / "ds", force=True)
    assert steps.ingest(str(tmp_path / "src"), tmp_path / "ds", overwrite=True)["counts"]["images"] == 7
    assert not steps.ingest(str(tmp_path / "src"), tmp_path / "ds", force=True)["cached"]
    make_folder(tmp_path / "other")
    for force in (False, True):
        with pytest.raises(DataError, match=f"already exists and is out of date: it was ingested from {tmp_path / 'src'}"):
            steps.ingest(str(tmp_path / "other"), tmp_path / "ds", force=force)
    assert Dataset(tmp_path / "ds").meta["source"]["spec"] == str(tmp_path / "src")


def test_a_file_rewritten_in_place_makes_the_dataset_out_of_date(tmp_path):
    make_folder(tmp_path / "src")
    first = steps.ingest(str(tmp_path / "src"), tmp_path / "ds")
    # The fingerprint made from reading the files is the one a later listing computes.
    assert first["fingerprint"] == fingerprint(open_source(str(tmp_path / "src")).list(), IngestConfig())
    victim = sorted((tmp_path / "src").rglob("*.png"))[0]
    write_png(victim, np.full((12, 10), 200, np.uint8))  # same name, new size and time
    with pytest.raises(DataError, match="already exists and is out of date"):
        steps.ingest(str(tmp_path / "src"), tmp_path / "ds")


@pytest.mark.parametrize("workers", [1, 2])
def test_the_fingerprint_from_reading_the_files_is_the_one_a_listing_computes(tmp_path, workers):
    """Ingest takes each file's size and time from reading it (in the decode workers), not from
    a lookup by name; the dataset's fingerprint must still be the one a later listing computes
    (the up-to-date check), for masks, an unused mask, files that fail to decode and files that
    listing rejected."""
    src = tmp_path / "src"
    for k in range(60):  # past the pool's threshold with two workers
        write_png(src / "train" / "good" / f"{k:02d}.png", RNG.integers(0, 256, (8, 8), dtype=np.uint8))
    write_png(src / "test" / "hole" / "1.png", np.zeros((8, 8), np.uint8))
    write_png(src / "ground_truth" / "hole" / "1_mask.png", np.full((8, 8), 255, np.uint8))
    write_png(src / "ground_truth" / "hole" / "9_mask.png", np.full((8, 8), 255, np.uint8))  # no image of its own
    (src / "train" / "good" / "text.png").write_text("not an image")
    (src / "train" / "good" / "zero.png").write_bytes(b"")
    write_png(tmp_path / "outside.png", np.zeros((8, 8), np.uint8))
    (src / "train" / "good" / "away.png").symlink_to(tmp_path / "outside.png")
    meta = ingest(open_source(str(src)).list(), tmp_path / "ds", workers=workers)
    assert meta["counts"]["images"] == 61 and meta["counts"]["masks"] == 1 and meta["counts"]["rejects"] == 3
    listing = open_source(str(src)).list()
    assert meta["fingerprint"] == fingerprint(listing, IngestConfig())
    assert len(listing.fingerprint_parts) == 66  # every listed file, the unused mask and the link among them


def test_known_file_facts_are_taken_not_looked_up_again(tmp_path):
    make_folder(tmp_path / "src", n=2)
    listing = open_source(str(tmp_path / "src")).list()
    known = {str(tmp_path / "src" / "a" / "00.png"): (7, 11)}
    parts = listing.fingerprint_parts_knowing(known)
    size = (tmp_path / "src" / "b" / "01.png").stat().st_size
    assert [p[:2] for p in parts] == [("a/00.png", 7), ("b/01.png", size)]


def test_empty_and_unusable_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images found"):
        steps.ingest(str(tmp_path / "empty"), tmp_path / "ds")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="None of the 1 images"):
        steps.ingest(str(tmp_path / "bad"), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_test_fraction_split_is_seeded_and_stratified(tmp_path):
    make_folder(tmp_path / "src", n=20)
    meta = steps.ingest(str(tmp_path / "src"), tmp_path / "ds", test_fraction=0.3, seed=5)
    assert meta["counts"]["by_split"] == {"test": {"a": 3, "b": 3}, "train": {"a": 7, "b": 7}}
    again = steps.ingest(str(tmp_path / "src"), tmp_path / "ds2", test_fraction=0.3, seed=5)
    splits = [Dataset(p).index()["split"].to_pylist() for p in (tmp_path / "ds", tmp_path / "ds2")]
    assert splits[0] == splits[1] and again["counts"] == meta["counts"]


def test_bundled_sample_ingest(mnist_ds):
    ds = Dataset(mnist_ds)
    assert len(ds) == 5000 and ds.shape == (28, 28, 1)
    assert ds.meta["counts"]["by_split"]["test"]["0"] == 150
    assert 10 < ds.load(ds.rows(classes=["1"])).mean() < 60  # real digits: mostly dark background


def test_crop_is_cut_before_resizing_recorded_and_cut_again_when_scoring(tmp_path, monkeypatch):
    """A fixed region of interest: the dataset holds that region of every image at the working
    size, the policy records it, and a model trained on it cuts the same region from new images."""
    from anomaly_ae import scoring
    from anomaly_ae.imaging import Preprocess
    from tests.conftest import TINY

    src = tmp_path / "src"
    originals = {f"{k:02d}.png": RNG.integers(0, 256, (40, 60), dtype=np.uint8) for k in range(8)}
    for name, arr in originals.items():
        write_png(src / name, arr)
    write_png(src / "small.png", RNG.integers(0, 256, (25, 60), dtype=np.uint8))  # ends above the region
    summary = steps.ingest(str(src), tmp_path / "ds", crop="10,20,20,30", size="10x15")
    ds = Dataset(tmp_path / "ds")
    assert summary["preprocess"]["crop"] == [10, 20, 20, 30] and ds.shape == (10, 15, 1)
    pixels, keys = ds.load(), ds.index()["source"].to_pylist()
    for k, key in enumerate(keys):
        region = Image.fromarray(originals[key][10:30, 20:50]).resize((15, 10), Image.Resampling.BILINEAR)
        assert np.array_equal(pixels[k][..., 0], np.asarray(region))
    assert "too small for the crop region" in ds.rejects()["reason"][0].as_py()
    with pytest.raises(Exception, match="crop"):
        steps.ingest(str(src), tmp_path / "bad", crop="10,20,0,30")
    # ...with the size and the channels both given too (nothing left to infer from the images)
    both = steps.ingest(str(src), tmp_path / "given", crop="10,20,20,30", size="10x15", channels="L")
    assert both["preprocess"]["crop"] == [10, 20, 20, 30] and np.array_equal(Dataset(tmp_path / "given").load(), pixels)
    from anomaly_ae.steps import datasets as dataset_steps

    def as_before(out, replace):  # as an earlier version wrote it: the region requested, recorded, and not cut
        meta = Dataset(out).meta
        return {**meta, "preprocess": {k: v for k, v in meta["preprocess"].items() if k != "crop"}}

    monkeypatch.setattr(dataset_steps, "_readable_meta", as_before)
    with pytest.raises(DataError, match="out of date: its images were not cut to the crop region it was asked for"):
        steps.ingest(str(src), tmp_path / "given", crop="10,20,20,30", size="10x15", channels="L")
    monkeypatch.undo()
    # Without a crop the same files give another dataset: the setting is in the fingerprint.
    assert not steps.ingest(str(src), tmp_path / "ds", overwrite=True)["cached"]
    steps.ingest(str(src), tmp_path / "ds", crop=(10, 20, 20, 30), size="10x15", overwrite=True)
    model = steps.train(tmp_path / "ds", tmp_path / "m", config=TINY)["model"]
    from anomaly_ae.detector import AutoencoderDetector

    det = AutoencoderDetector.load(model)
    policy = Preprocess.from_dict(det.meta_["preprocess"])
    assert policy.crop == (10, 20, 20, 30)
    parts = scoring.plan(str(src), policy, files=sorted(originals))
    rejects: list = []
    scored = [px for part in parts for _, px, _ in scoring.iter_batches(part, policy, 64, None, rejects)]
    assert np.array_equal(np.concatenate(scored), pixels)  # the folder's files, cut and resized alike


@pytest.mark.parametrize("top,warned", [(4095, True), (65535, False)])
def test_16_bit_images_that_use_12_bits_are_pointed_out(tmp_path, caplog, top, warned):
    """12-bit camera data in 16-bit PNGs is scaled like any 16-bit image (to 0..16 of 255): the
    ingest says so; images that use the 16-bit range are ingested without a word."""
    import logging

    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray((rng.random((20, 30)) * top).astype(np.uint16)).save(tmp_path / f"cam{k}.png")
    with caplog.at_level(logging.WARNING):
        steps.ingest(str(tmp_path), tmp_path / "ds")
    said = [r.getMessage() for r in caplog.records if "use at most 12 bits" in r.getMessage()]
    assert Dataset(tmp_path / "ds").meta["counts"]["images"] == 3
    assert bool(said) == warned, said
    if warned:
        assert said[0].startswith("3 images are 16-bit") and "stored as 16 of 255" in said[0]


def test_bit_depth_scales_16_bit_images_from_their_range_and_scoring_does_too(tmp_path, caplog):
    """--bit-depth 12: 12-bit camera data in 16-bit PNGs keeps its 256 grey levels (4095 is white),
    the policy records it, and a model trained on it scales new files alike; a bit depth below
    the data's is pointed out (its brightest parts are clipped)."""
    import logging

    from anomaly_ae import scoring
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.errors import ConfigError
    from anomaly_ae.imaging import Preprocess
    from tests.conftest import TINY

    rng, src = np.random.default_rng(3), tmp_path / "src"
    src.mkdir()
    raw = {f"cam{k}.png": (rng.random((20, 30)) * 4095).astype(np.uint16) for k in range(6)}
    raw["cam0.png"][0, :2] = (0, 4095)
    for name, arr in raw.items():
        Image.fromarray(arr).save(src / name)
    with caplog.at_level(logging.WARNING):
        summary = steps.ingest(str(src), tmp_path / "ds", bit_depth=12)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    ds = Dataset(tmp_path / "ds")
    pixels, keys = ds.load(), ds.index()["source"].to_pylist()
    assert summary["preprocess"]["bit_depth"] == 12 and pixels.max() == 255 and pixels.min() == 0
    for k, key in enumerate(keys):
        assert np.array_equal(pixels[k][..., 0], np.rint(raw[key] * (255 / 4095)).astype(np.uint8))
    det = AutoencoderDetector.load(steps.train(tmp_path / "ds", tmp_path / "m", config=TINY)["model"])
    policy = Preprocess.from_dict(det.meta_["preprocess"])
    assert policy.bit_depth == 12
    rejects: list = []
    parts = scoring.plan(str(src), policy, files=sorted(raw))
    scored = [px for part in parts for _, px, _ in scoring.iter_batches(part, policy, 64, None, rejects)]
    assert np.array_equal(np.concatenate(scored), pixels)
    # Another bit depth is another dataset; one below the data's is clipped, and said so.
    with pytest.raises(DataError, match="out of date: other settings: bit_depth was 12, now 10. Pass --overwrite"):
        steps.ingest(str(src), tmp_path / "ds", bit_depth=10)
    with caplog.at_level(logging.WARNING):
        steps.ingest(str(src), tmp_path / "ds10", bit_depth=10)
    said = [r.getMessage() for r in caplog.records if "above the 10-bit range" in r.getMessage()]
    assert said and said[0].startswith("6 images hold values above") and Dataset(tmp_path / "ds10").load().mean() > 200
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # on 8-bit images it has nothing to do, and says so
        for k in range(3):
            write_png(tmp_path / "eight" / f"{k}.png", rng.integers(0, 256, (20, 30), dtype=np.uint8))
        steps.ingest(str(tmp_path / "eight"), tmp_path / "plain", bit_depth=12)
        steps.ingest("sample:digits", tmp_path / "digits", bit_depth=12)
    assert [r.getMessage()[:40] for r in caplog.records] == ["--bit-depth 12 changed nothing: none of "] * 2
    for bad in (7, 17, 12.5, True):
        with pytest.raises(ConfigError, match="bit_depth"):
            IngestConfig(bit_depth=bad)


def test_12_bit_data_reads_alike_from_png_big_endian_tiff_and_pgm(tmp_path):
    """The same 12-bit samples as a 16-bit PNG, a big-endian 16-bit TIFF (Pillow has no extrema
    for those) and a PGM with maxval 4095 (which declares its own range, so the bit depth is not
    applied twice): one stored image, with --bit-depth 12 and, for the PGM, without it too."""
    raw = (np.arange(20 * 30).reshape(20, 30) * 7 % 4096).astype(np.uint16)
    raw[0, 0] = 4095
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(raw).save(src / "a.png")
    Image.frombytes("I;16B", (30, 20), raw.astype(">u2").tobytes()).save(src / "b.tif")
    (src / "c.pgm").write_bytes(b"P5\n30 20\n4095\n" + raw.astype(">u2").tobytes())
    assert Image.open(src / "b.tif").mode == "I;16B"
    steps.ingest(str(src), tmp_path / "ds", bit_depth=12)
    ds = Dataset(tmp_path / "ds")
    assert ds.meta["counts"]["rejects"] == 0 and ds.index()["source"].to_pylist() == ["a.png", "b.tif", "c.pgm"]
    want = np.rint(raw * (255 / 4095)).astype(np.uint8)
    for k, pixels in enumerate(ds.load()):
        assert np.abs(pixels[..., 0].astype(int) - want).max() <= (1 if k == 2 else 0)  # the PGM: Pillow's rounding
    (tmp_path / "pgm").mkdir()
    (tmp_path / "pgm" / "c.pgm").write_bytes((src / "c.pgm").read_bytes())
    steps.ingest(str(tmp_path / "pgm"), tmp_path / "plain")
    assert np.abs(Dataset(tmp_path / "plain").load()[0][..., 0].astype(int) - want).max() <= 1


def test_naming_the_size_and_channels_it_inferred_is_the_same_dataset(tmp_path):
    """--size 12x10 --channels L for gray 12x10 images writes what inferring them wrote: up to
    date, not out of date; another size, or new files, still is out of date."""
    make_folder(tmp_path / "src")
    steps.ingest(str(tmp_path / "src"), tmp_path / "ds")
    assert steps.ingest(str(tmp_path / "src"), tmp_path / "ds", size="12x10", channels="L")["cached"]
    with pytest.raises(DataError, match="other settings: size was not set, now 12"):
        steps.ingest(str(tmp_path / "src"), tmp_path / "ds", size="12")
    write_png(tmp_path / "src" / "a" / "new.png", np.zeros((12, 10), np.uint8))
    with pytest.raises(DataError, match="files were added, removed or rewritten"):
        steps.ingest(str(tmp_path / "src"), tmp_path / "ds", size="12x10", channels="L")
