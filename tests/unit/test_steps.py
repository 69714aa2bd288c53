"""The steps on a trained model folder: what train writes, and calibrate changing the threshold alone."""

import torch

from anomaly_ae import checkpoint, steps
from anomaly_ae.detector import AutoencoderDetector


def test_train_step_uses_the_train_split_only(mnist_model):
    ckpt = checkpoint.read(mnist_model)
    data = ckpt["data"]
    assert data["split"] == "train" and data["n_train"] + data["n_calibration"] == 350
    assert ckpt["normal_classes"] == ["0"] and ckpt["threshold"]["n_calibration"] == 70
    from anomaly_ae.configfile import load_detector_config

    written = load_detector_config(mnist_model / "config.toml")  # the rate that trained it, not "0: default"
    assert written.train.lr == written.train.lr_for(ckpt["config"]["model"]["kind"]) > 0


def test_calibrate_step_retargets_without_retraining(mnist_model, tmp_path):
    import shutil

    m = tmp_path / "m"
    shutil.copytree(mnist_model, m)
    before = checkpoint.read(m)
    s = steps.calibrate(m, target_fpr=0.1)
    after = checkpoint.read(m)
    assert s["threshold"] < before["threshold"]["threshold"] and after["threshold"]["target_fpr"] == 0.1
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    assert not s["cached"] and before["config"]["threshold"]["target_fpr"] == 0.01


def test_calibrate_changes_the_target_in_every_file_of_the_model(mnist_model, tmp_path):
    """model.pt, model.json and config.toml say the same target after a recalibration, so a retrain
    from config.toml holds the rate the model was last calibrated to."""
    import json
    import shutil

    from anomaly_ae.configfile import load_detector_config

    m = tmp_path / "m"
    shutil.copytree(mnist_model, m)
    steps.calibrate(m, target_fpr=0.005)
    assert checkpoint.read(m)["config"]["threshold"]["target_fpr"] == 0.005
    assert json.loads((m / "model.json").read_text())["config"]["threshold"]["target_fpr"] == 0.005
    assert load_detector_config(m / "config.toml").threshold.target_fpr == 0.005
    assert AutoencoderDetector.load(m).config.threshold.target_fpr == 0.005
    again = steps.calibrate(m, target_fpr=0.005)  # already there: nothing is rewritten
    assert again["cached"] and again["threshold"] == checkpoint.read(m)["threshold"]["threshold"]


def test_scoring_the_training_split_says_the_metrics_count_what_the_model_learned(mnist_ds, mnist_model, tmp_path,
                                                                                  caplog):
    """A labelled run over the model's own dataset, training split included, warns (log and report)
    with the number of scored images that trained or calibrated it; a run over the test split does not."""
    import json
    import logging

    with caplog.at_level(logging.WARNING):
        steps.score(mnist_ds, mnist_model, tmp_path / "all")
    run = json.loads((tmp_path / "all" / "run.json").read_text())
    assert run["model_saw"] == {"split": "train", "scored_split": None, "n_items": 350}  # digit-0 training images
    said = "350 of the scored items are images that trained or calibrated the model (its dataset's split train)"
    assert said in caplog.text and "--split test" in caplog.text
    assert said.replace("'", "&#x27;") in (tmp_path / "all" / "report.html").read_text()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        steps.score(mnist_ds, mnist_model, tmp_path / "test", split="test", report=False)
    assert json.loads((tmp_path / "test" / "run.json").read_text())["model_saw"] is None
    assert "trained or calibrated the model" not in caplog.text


def test_the_folder_a_model_was_ingested_from_counts_as_its_training_data(tmp_path, caplog):
    """Scoring the benchmark-layout folder the training dataset came from warns as scoring the
    dataset does, and calibrating on it is refused unless a split the model never saw is named."""
    import json
    import logging

    import numpy as np
    import pytest

    from anomaly_ae.errors import DataError
    from tests.conftest import TINY, write_png

    rng = np.random.default_rng(0)
    folder = tmp_path / "parts"
    for k in range(24):
        write_png(folder / "train" / "good" / f"{k:02d}.png", rng.integers(0, 120, (16, 16), dtype=np.uint8))
    for k in range(6):
        write_png(folder / "test" / "good" / f"{k:02d}.png", rng.integers(0, 120, (16, 16), dtype=np.uint8))
        write_png(folder / "test" / "bright" / f"{k:02d}.png", rng.integers(135, 255, (16, 16), dtype=np.uint8))
    steps.ingest(str(folder), tmp_path / "ds")
    steps.train(tmp_path / "ds", tmp_path / "m", config=TINY)
    with caplog.at_level(logging.WARNING):
        steps.score(folder, tmp_path / "m", tmp_path / "all", report=False)
    saw = json.loads((tmp_path / "all" / "run.json").read_text())["model_saw"]
    assert saw == {"split": "train", "scored_split": None, "n_items": 24}
    assert "24 of the scored items are images that trained or calibrated the model" in caplog.text
    steps.score(folder, tmp_path / "m", tmp_path / "test", split="test", report=False)
    assert json.loads((tmp_path / "test" / "run.json").read_text())["model_saw"] is None
    with pytest.raises(DataError, match="is the dataset the model was trained on"):
        steps.calibrate(tmp_path / "m", data=folder)
    with pytest.raises(DataError, match=r"All 24 images of .* trained or calibrated the model \(found by content\)"):
        steps.calibrate(tmp_path / "m", data=folder / "train" / "good")  # its training folder's own sub-folder
    import shutil

    mixed = tmp_path / "mixed"  # copies of 4 training images among 6 new ones: only the new ones count
    shutil.copytree(folder / "test" / "good", mixed)
    for k in range(4):
        shutil.copy(folder / "train" / "good" / f"{k:02d}.png", mixed / f"copy{k}.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert steps.calibrate(tmp_path / "m", data=mixed)["n_calibration"] == 6
    assert "4 of the 10 images of" in caplog.text and "calibrating on the other 6" in caplog.text
    (tmp_path / "ds").rename(tmp_path / "moved")  # the model keeps what it saw: found without its dataset too
    assert steps.calibrate(tmp_path / "m", data=mixed)["n_calibration"] == 6
    from anomaly_ae import checkpoint

    shutil.copytree(tmp_path / "m", tmp_path / "old")  # a model of a version that kept none: no check, a warning
    ckpt = checkpoint.read(tmp_path / "old")
    del ckpt["seen_hashes"]
    checkpoint.write(tmp_path / "old", ckpt)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert steps.calibrate(tmp_path / "old", data=mixed)["n_calibration"] == 10
    assert f"Cannot tell whether the images of {mixed} trained the model: its dataset" in caplog.text
    (tmp_path / "moved").rename(tmp_path / "ds")
    for typo in ("Good", "nope"):  # a class asked for by name and absent: never every image, anomalies included
        with pytest.raises(DataError, match=rf"Class '{typo}' is not in {folder} \(split test\)\. Classes: bright, good\."):
            steps.calibrate(tmp_path / "m", data=folder, split="test", normal=[typo])
    s = steps.calibrate(tmp_path / "m", data=folder, split="test")
    assert s["source"].endswith("(split test)") and s["n_calibration"] == 6  # test/good only, not test/bright
    assert steps.calibrate(tmp_path / "m", data=folder, split="test", normal=["good"])["n_calibration"] == 6
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # test/good now set the threshold: a run over them says so
        steps.score(folder, tmp_path / "m", tmp_path / "test2", split="test", report=False)
    saw = json.loads((tmp_path / "test2" / "run.json").read_text())["model_saw"]
    assert saw == {"split": None, "scored_split": "test", "n_items": 6, "recalibration": 6}
    assert "calibration_hashes" not in json.loads((tmp_path / "m" / "model.json").read_text())  # model.pt only
    assert "6 of the scored items are images that trained or calibrated the model (6 of them the images its " \
           "threshold was last calibrated on)" in caplog.text and "--split test" not in caplog.text
    steps.calibrate(tmp_path / "m", held_out=True)  # the held-out scores back: test/good is unseen again
    steps.score(folder, tmp_path / "m", tmp_path / "test3", split="test", report=False)
    assert json.loads((tmp_path / "test3" / "run.json").read_text())["model_saw"] is None


def test_a_folder_split_at_ingest_is_matched_by_content(tmp_path, caplog):
    """A flat folder split by --test-fraction has no split folders: its training images are found by
    their content (sha256), and a damaged training dataset never breaks scoring another folder."""
    import json
    import logging

    import numpy as np

    from anomaly_ae.config import IngestConfig
    from anomaly_ae.dataset import Dataset
    from tests.conftest import TINY, write_png

    rng = np.random.default_rng(1)
    folder = tmp_path / "flat"
    for k in range(20):
        write_png(folder / "good" / f"{k:02d}.png", rng.integers(0, 120, (16, 16), dtype=np.uint8))
    for k in range(4):
        write_png(folder / "bright" / f"{k:02d}.png", rng.integers(135, 255, (16, 16), dtype=np.uint8))
    steps.ingest(str(folder), tmp_path / "ds", IngestConfig(test_fraction=0.25))
    steps.train(tmp_path / "ds", tmp_path / "m", normal=["good"], config=TINY)
    index = Dataset(tmp_path / "ds").index().to_pylist()
    learned = sum(r["split"] == "train" and r["class_name"] == "good" for r in index)
    assert 0 < learned < 20
    with caplog.at_level(logging.WARNING):
        steps.score(folder, tmp_path / "m", tmp_path / "run", report=False)
    saw = json.loads((tmp_path / "run" / "run.json").read_text())["model_saw"]
    assert saw == {"split": "train", "scored_split": None, "n_items": learned}
    assert f"{learned} of the scored items are images that trained or calibrated the model" in caplog.text
    (tmp_path / "ds" / "images.parquet").write_bytes(b"not parquet")
    other = tmp_path / "other"
    for k in range(3):
        write_png(other / f"{k}.png", rng.integers(0, 120, (16, 16), dtype=np.uint8))
    steps.score(other, tmp_path / "m", tmp_path / "run2", report=False)
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["model_saw"] is None


def test_training_again_with_other_settings_says_the_model_is_out_of_date(tmp_path):
    """The same command is skipped as up to date; other settings into the same folder are refused
    with the reason, and --overwrite trains again."""
    import dataclasses
    import shutil

    import pytest

    from anomaly_ae.errors import DataError
    from tests.conftest import TINY, noise_workspace

    work = noise_workspace(tmp_path)
    assert steps.train(work["dataset"], work["model"], config=TINY)["cached"]
    other = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, latent_dim=8))
    with pytest.raises(DataError, match=f"{work['model']} already exists and is out of date: model.latent_dim was 32, "
                                        "now 8. Pass --overwrite"):
        steps.train(work["dataset"], work["model"], config=other)
    with pytest.raises(DataError, match="out of date"):  # --force redoes the same model, never replaces another
        steps.train(work["dataset"], work["model"], config=other, force=True)
    assert not steps.train(work["dataset"], work["model"], config=other, overwrite=True)["cached"]
    assert not steps.train(work["dataset"], work["model"], config=other, force=True)["cached"]
    steps.ingest(str(work["input"]), work["dataset"], seed=1, overwrite=True)  # the dataset made again
    with pytest.raises(DataError, match=f"out of date: {work['dataset']} was ingested again since. Pass"):
        steps.train(work["dataset"], work["model"], config=other)
    shutil.copytree(work["dataset"], tmp_path / "copy")  # the same data in another dataset folder
    with pytest.raises(DataError, match=f"out of date: it was trained on {work['dataset']}. Pass"):
        steps.train(tmp_path / "copy", work["model"], config=other)


def test_auto_training_leaves_no_resume_state_of_its_candidates(tmp_path):
    """--model auto keeps a resume state per candidate while it trains; once the model is saved
    none is left beside it (hidden files of megabytes each otherwise piled up)."""
    import dataclasses

    from tests.conftest import TINY, noise_workspace

    work = noise_workspace(tmp_path)
    auto = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, kind="auto"))
    steps.train(work["dataset"], tmp_path / "auto", config=auto)
    assert (tmp_path / "auto" / "model.pt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    stale = tmp_path / ".auto.train-0123456789ab.pt"  # an interrupted training of other settings
    stale.write_bytes(b"state")
    steps.train(work["dataset"], tmp_path / "auto", config=TINY, overwrite=True)
    assert not stale.exists()  # no model needs it now


def test_files_that_could_not_be_scored_are_named_in_a_warning(tmp_path, caplog):
    import logging
    import re

    import numpy as np
    import pytest

    from anomaly_ae.errors import DataError
    from tests.conftest import noise_workspace, write_png

    work = noise_workspace(tmp_path)
    (work["input"] / "broken.png").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        s = steps.score(work["input"], work["model"], tmp_path / "run", report=False)
    assert s["rejects"] == 1 and s["scored"] == 24
    assert "1 of the files could not be scored: broken.png (not a recognised image format" in caplog.text
    with pytest.raises(DataError, match=r"has no splits \(no train/ or test/ sub-folders\): leave --split out"):
        steps.score(work["input"], work["model"], tmp_path / "run2", split="test")
    with pytest.raises(DataError, match=r"has no splits"):
        steps.score(work["input"] / "img00.png", work["model"], tmp_path / "run2", split="test")
    more = tmp_path / "more"  # new normal images to calibrate on, one of them unusable
    more.mkdir()
    rng = np.random.default_rng(5)
    for k in range(8):
        write_png(more / f"n{k}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    (more / "empty.png").write_bytes(b"")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert steps.calibrate(work["model"], data=more)["n_calibration"] == 8
    assert "1 files could not be used and were skipped: empty.png (empty file" in caplog.text
    for wrong, said in [(more / "n0.png", "is an image file; info reads a dataset or a model folder"),
                        (tmp_path / "run", "is a run folder (what `anomaly-ae score` writes): open its report.html")]:
        with pytest.raises(DataError, match=re.escape(said)):
            steps.info(wrong)


def test_a_model_unlike_its_pipeline_file_is_told_apart(tmp_path):
    """The inbox scores with the pipeline's model folder as it is: a model trained or calibrated
    otherwise by hand is named, with what differs."""
    import dataclasses

    from anomaly_ae.config import ThresholdConfig
    from tests.conftest import TINY, noise_workspace

    work = noise_workspace(tmp_path)
    assert steps.unlike_its_pipeline(work["dataset"], work["model"], None, TINY) is None
    stricter = dataclasses.replace(TINY, threshold=ThresholdConfig(target_fpr=0.05))
    said = steps.unlike_its_pipeline(work["dataset"], work["model"], None, stricter)
    assert said == "its threshold is for a target FPR of 0.01, the pipeline's 0.05"
    longer = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=TINY.train.epochs + 1))
    said = steps.unlike_its_pipeline(work["dataset"], work["model"], None, longer)
    assert said.startswith("it was trained otherwise: train.epochs was")
    assert steps.unlike_its_pipeline(work["dataset"], tmp_path / "none", None, TINY) is None
