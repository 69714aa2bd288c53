"""Batch scoring: run folder contents, labels, overrides, folders vs datasets, locking."""

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from anomaly_ae import steps
from anomaly_ae.errors import BusyError, DataError
from anomaly_ae.locks import FileLock
from tests.conftest import write_png


@pytest.fixture(scope="module")
def run_dir(mnist_ds, mnist_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "test-split"
    steps.score(mnist_ds, mnist_model, out, split="test", report=False)
    return out


def test_run_folder_tables(run_dir):
    scores = pq.read_table(run_dir / "scores.parquet").to_pandas()
    assert len(scores) == 1500
    assert sorted(scores["rank"]) == list(range(1, 1501))
    top = scores.sort_values("rank")
    assert top["score"].is_monotonic_decreasing
    run = json.loads((run_dir / "run.json").read_text())
    t = run["threshold"]["threshold"]
    assert (scores["flagged"] == (scores["score"] > t)).all()
    assert scores["is_anomaly"].tolist() == (scores["class_name"] != "0").tolist()
    with open(run_dir / "flagged.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == scores["flagged"].sum() == run["counts"]["flagged"]
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    maps = pq.read_table(run_dir / "error_maps.parquet")
    assert maps.num_rows == len(rows) and len(maps["error_map"][0].as_py()) == 28 * 28 * 2
    examples = pq.read_table(run_dir / "examples.parquet").to_pylist()
    assert {e["kind"] for e in examples} == {"top", "borderline"}
    assert max(e["score"] for e in examples if e["kind"] == "top") == scores["score"].max()


def test_metrics_json(run_dir):
    from sklearn.metrics import roc_auc_score

    m = json.loads((run_dir / "metrics.json").read_text())
    scores = pq.read_table(run_dir / "scores.parquet").to_pandas()
    assert m["auroc"] == pytest.approx(roc_auc_score(scores["is_anomaly"], scores["score"]))
    assert m["auroc"] > 0.95
    c = m["confusion"]
    assert c["tp"] + c["fn"] == 1350 and c["tn"] + c["fp"] == 150
    assert m["fpr"] == pytest.approx(c["fp"] / 150) and m["tpr"] == pytest.approx(c["tp"] / 1350)
    per = {r["class_name"]: r for r in m["per_class"]}
    assert per["0"]["fpr"] == m["fpr"] and per["0"]["auroc"] is None and per["8"]["auroc"] > 0.8
    assert m["f1_optimal"]["f1"] >= m["f1"] - 1e-9
    assert len(m["roc"]["fpr"]) <= 200


def test_folder_and_its_ingested_parquet_score_the_same(mnist_folder, mnist_model, tmp_path):
    steps.ingest(str(mnist_folder), tmp_path / "ds")
    a = steps.score(mnist_folder, mnist_model, tmp_path / "from-folder", report=False, workers=2)
    b = steps.score(tmp_path / "ds", mnist_model, tmp_path / "from-parquet", report=False)
    ta = pq.read_table(tmp_path / "from-folder" / "scores.parquet").sort_by("image_id")
    tb = pq.read_table(tmp_path / "from-parquet" / "scores.parquet").sort_by("image_id")
    assert ta["image_id"].equals(tb["image_id"])
    assert np.allclose(ta["score"].to_numpy(), tb["score"].to_numpy(), rtol=1e-6, atol=1e-9)
    assert a["auroc"] == pytest.approx(b["auroc"]) and a["auroc"] > 0.95


def test_threshold_overrides(mnist_ds, mnist_model, tmp_path):
    fixed = steps.score(mnist_ds, mnist_model, tmp_path / "fixed", split="test", threshold=1e9, report=False)
    assert fixed["flagged"] == 0
    loose = steps.score(mnist_ds, mnist_model, tmp_path / "loose", split="test", target_fpr=0.3, report=False)
    assert loose["flagged"] > 0 and loose["target_fpr"] == 0.3
    with pytest.raises(DataError, match="not both"):
        steps.score(mnist_ds, mnist_model, tmp_path / "both", threshold=1.0, target_fpr=0.1)


def test_unlabelled_folder_with_bad_files(mnist_images, mnist_model, tmp_path):
    pixels = mnist_images[0]
    for k in range(5):
        write_png(tmp_path / "inbox" / f"{k}.png", pixels[k, :, :, 0])
    (tmp_path / "inbox" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    write_png(tmp_path / "inbox" / "big.png", np.zeros((40, 30), np.uint8))  # resized to the model's 28x28
    s = steps.score(tmp_path / "inbox", mnist_model, tmp_path / "run", report=False)
    assert s["scored"] == 6 and s["rejects"] == 1 and s["auroc"] is None
    assert not (tmp_path / "run" / "metrics.json").exists()
    rejects = pq.read_table(tmp_path / "run" / "rejects.parquet").to_pylist()
    assert rejects[0]["source"] == "broken.png"


def test_run_folder_is_refused_while_locked_or_existing(mnist_ds, mnist_model, tmp_path):
    out = tmp_path / "run"
    with FileLock(tmp_path / ".run.lock", "Run folder"), pytest.raises(BusyError, match="in use"):
        steps.score(mnist_ds, mnist_model, out, split="test", report=False)
    assert not out.exists()
    steps.score(mnist_ds, mnist_model, out, split="test", report=False)
    with pytest.raises(DataError, match="already exists"):
        steps.score(mnist_ds, mnist_model, out, split="test", report=False)


def test_dataset_of_another_shape_is_refused(mnist_model, tmp_path):
    write_png(tmp_path / "src" / "a.png", np.zeros((10, 10), np.uint8))
    steps.ingest(str(tmp_path / "src"), tmp_path / "ds")
    with pytest.raises(DataError, match=r"preprocessed unlike the model's images: size 10x10 \(the model: 28x28\)\. "
                                        "Ingest the images again with --size 28x28 --channels L --resize bilinear, "):
        steps.score(tmp_path / "ds", mnist_model, tmp_path / "run")


def test_a_dataset_of_the_right_shape_preprocessed_otherwise_is_refused(tmp_path):
    """A model that cuts a region and reads 12-bit data: a dataset of the same shape ingested
    without them holds other pixels, so scoring or calibrating on it is refused, naming the
    options that make it right; the image folder itself is scored as the model's images were."""
    from PIL import Image

    from anomaly_ae.errors import DataError
    from tests.conftest import TINY

    rng = np.random.default_rng(0)
    for k in range(12):
        Image.fromarray((rng.random((30, 40)) * 4095).astype(np.uint16)).save(write_dir(tmp_path / "cam") / f"{k}.png")
    steps.ingest(str(tmp_path / "cam"), tmp_path / "ds", crop="5,5,16,16", bit_depth=12)
    steps.train(tmp_path / "ds", tmp_path / "m", config=TINY)
    steps.ingest(str(tmp_path / "cam"), tmp_path / "plain", size="16")  # the same shape, other pixels
    wanted = (r"plain was preprocessed unlike the model's images: crop none \(the model: 5,5,16,16\); bit depth none "
              r"\(the model: 12\)\. Ingest the images again with --size 16x16 --channels L --resize bilinear "
              "--crop 5,5,16,16 --bit-depth 12, or score the image folder itself")
    with pytest.raises(DataError, match=wanted):
        steps.score(tmp_path / "plain", tmp_path / "m", tmp_path / "run")
    with pytest.raises(DataError, match=wanted):
        steps.calibrate(tmp_path / "m", data=tmp_path / "plain")
    steps.ingest(str(tmp_path / "cam"), tmp_path / "plain", size="16", crop="5,5,16,16", bit_depth=12, overwrite=True)
    same = steps.score(tmp_path / "plain", tmp_path / "m", tmp_path / "run", report=False)
    folder = steps.score(tmp_path / "cam", tmp_path / "m", tmp_path / "run2", report=False)
    assert same["scored"] == folder["scored"] == 12


def test_partitions_give_the_same_results(mnist_ds, mnist_model, run_dir, tmp_path):
    steps.score(mnist_ds, mnist_model, tmp_path / "parts", split="test", partitions=3, report=False)
    one = pq.read_table(run_dir / "scores.parquet")
    three = pq.read_table(tmp_path / "parts" / "scores.parquet")
    # Other batchings give float32 results equal within a tolerance, not bit for bit; a flag
    # may differ only for a score within that tolerance of the threshold.
    exact = [c for c in one.column_names if c not in ("score", "p_value", "flagged", "rank")]
    assert one.select(exact).equals(three.select(exact))
    for c in ("score", "p_value"):
        np.testing.assert_allclose(one[c].to_numpy(), three[c].to_numpy(), rtol=1e-5, atol=1e-12)
    t = json.loads((run_dir / "run.json").read_text())["threshold"]["threshold"]
    differ = one["flagged"].to_numpy(zero_copy_only=False) != three["flagged"].to_numpy(zero_copy_only=False)
    assert (np.abs(one["score"].to_numpy()[differ] - t) <= 1e-5 * abs(t)).all()


@pytest.fixture(scope="module")
def defects_folder(tmp_path_factory):
    """A small benchmark-layout folder: textured 'good' images, and images with a bright blob marked by a mask."""
    root = tmp_path_factory.mktemp("defects") / "part"
    rng = np.random.default_rng(3)

    def surface():
        return np.clip(rng.normal(110, 12, (32, 32)), 0, 255).astype(np.uint8)

    for k in range(60):
        write_png(root / "train" / "good" / f"{k:03d}.png", surface())
    for k in range(12):
        write_png(root / "test" / "good" / f"{k:03d}.png", surface())
    for k in range(12):
        img, mask = surface(), np.zeros((32, 32), np.uint8)
        y, x = rng.integers(4, 24, 2)
        img[y:y + 5, x:x + 5], mask[y:y + 5, x:x + 5] = 250, 255
        write_png(root / "test" / "spot" / f"{k:03d}.png", img)
        write_png(root / "ground_truth" / "spot" / f"{k:03d}_mask.png", mask)
    return root


def test_pixel_auroc_with_masks_and_partitions(defects_folder, tmp_path):
    from anomaly_ae.config import DetectorConfig, TrainConfig

    steps.ingest(str(defects_folder), tmp_path / "ds")
    steps.train(tmp_path / "ds", tmp_path / "m", config=DetectorConfig(train=TrainConfig(epochs=8)))
    one = steps.score(defects_folder, tmp_path / "m", tmp_path / "run1", split="test", report=False)
    assert one["auroc"] > 0.9 and one["pixel_auroc"] > 0.9
    two = steps.score(tmp_path / "ds", tmp_path / "m", tmp_path / "run2", split="test", partitions=2, report=False)
    assert two["pixel_auroc"] == pytest.approx(one["pixel_auroc"])


def test_drift_check_is_quiet_on_a_batch_of_normal_images(mnist_folder, mnist_model, tmp_path):
    s = steps.score(mnist_folder / "0", mnist_model, tmp_path / "zeros", report=False)
    run = json.loads((tmp_path / "zeros" / "run.json").read_text())
    assert not s["drift"] and not run["drift"]["drift"]
    # the expected rate is the conformal rank's own (70 calibration images cannot give 1%)
    assert run["drift"]["expected_share"] == pytest.approx(run["threshold"]["guaranteed_fpr"])
    ones = steps.score(mnist_folder / "1", mnist_model, tmp_path / "ones", report=False)
    assert ones["drift"]  # a batch of another digit does not look like the normal images


def write_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("seconds_an_item, takes_it_back", [(0.01, True), (0.0, False)])
def test_the_model_takes_back_the_decoders_core_only_where_decoding_is_cheap_beside_it(
        mnist_model, tmp_path, monkeypatch, seconds_an_item, takes_it_back):
    import time

    import torch

    from anomaly_ae import parallel, scoring
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.imaging import Preprocess

    det = AutoencoderDetector.load(mnist_model, device="cpu")
    rng = np.random.default_rng(0)
    for k in range(64):
        write_png(tmp_path / "in" / f"{k:02d}.png", rng.integers(0, 256, (28, 28), dtype=np.uint8))
    seen = []

    class Model:  # the detector, its model's cost per item set by the test
        def __getattr__(self, name):
            return getattr(det, name)

        def score_with_maps(self, px):
            seen.append(torch.get_num_threads())
            time.sleep(seconds_an_item * len(px))
            return np.zeros(len(px)), px / 255.0, np.zeros(px.shape[:3], np.float32)

    monkeypatch.setattr(parallel, "default_workers", lambda: 2)
    monkeypatch.setattr(scoring, "DECIDE_AFTER", 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        [part] = scoring.plan(tmp_path / "in", Preprocess.from_dict(det.meta_["preprocess"]))
        done = scoring.score_partition(Model(), part, tmp_path / "part", threshold=1.0, normal=None, batch_size=16)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert done["scored"] == 64 and len(seen) == 4
    assert seen[0] == 1  # one core left to the decoders at first
    assert seen[1:] == ([2] * 3 if takes_it_back else [1] * 3)
    assert after == 2  # torch's count restored when the partition is done
