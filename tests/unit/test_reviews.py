"""Review decisions beside a run (reviews.parquet) and calibration with the reviewed false alarms."""

from __future__ import annotations

import multiprocessing
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from anomaly_ae import reviews, steps
from anomaly_ae.errors import DataError


@pytest.fixture(scope="module")
def run_dir(mnist_ds, mnist_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reviews") / "run"
    steps.score(mnist_ds, mnist_model, out, split="test", report=False)
    return out


@pytest.fixture
def fresh_run(run_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


@pytest.fixture
def loose(mnist_ds, mnist_model, tmp_path):
    """A copy of the model at a 20% false-positive target and a run it scored: normal test digits
    among the flagged, the false alarms a reviewer marks."""
    model = tmp_path / "loose-model"
    shutil.copytree(mnist_model, model)
    steps.calibrate(model, target_fpr=0.2)
    run = tmp_path / "loose-run"
    steps.score(mnist_ds, model, run, split="test", report=False)
    return model, run


def test_decisions_are_kept_with_their_history_and_the_last_counts(fresh_run):
    ids = sorted(reviews.item_ids(fresh_run))[:3]
    reviews.record(fresh_run, ids[0], reviews.DEFECT, "scratch", who="ana")
    reviews.record(fresh_run, ids[1], reviews.FALSE_ALARM)
    reviews.record(fresh_run, ids[2], reviews.DEFECT)
    reviews.record(fresh_run, ids[2], reviews.CLEAR)
    reviews.record(fresh_run, ids[1], reviews.DEFECT, "looked again")
    latest = reviews.latest(fresh_run)
    assert set(latest) == {ids[0], ids[1]}
    assert latest[ids[0]]["note"] == "scratch" and latest[ids[0]]["who"] == "ana"
    assert latest[ids[1]]["decision"] == reviews.DEFECT
    assert reviews.counts(latest) == {"defect": 2, "false_alarm": 0, "reviewed": 2, "precision": 1.0}
    assert reviews.read(fresh_run).num_rows == 5  # nothing overwritten
    meta = pq.read_schema(fresh_run / "reviews.parquet").metadata
    assert b"reviews" in meta[b"anomaly_ae"]


@pytest.mark.parametrize("item, decision, note", [("no-such-item", "defect", ""), (None, "maybe", ""),
                                                  (None, "defect", "x" * (reviews.MAX_NOTE + 1))])
def test_bad_decisions_are_refused_and_change_nothing(fresh_run, item, decision, note):
    good = sorted(reviews.item_ids(fresh_run))[0]
    reviews.record(fresh_run, good, reviews.DEFECT)
    before = (fresh_run / "reviews.parquet").read_bytes()
    with pytest.raises(DataError):
        reviews.record(fresh_run, item or good, decision, note)
    assert (fresh_run / "reviews.parquet").read_bytes() == before


def _review_many(args):
    run, items, decision = args
    for i in items:
        reviews.record(run, i, decision)
    return len(items)


def test_two_reviewers_at_once_both_land(fresh_run):
    ids = sorted(reviews.item_ids(fresh_run))[:40]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        done = pool.map(_review_many, [(fresh_run, ids[:20], reviews.DEFECT), (fresh_run, ids[20:], reviews.FALSE_ALARM)])
    assert done == [20, 20]
    latest = reviews.latest(fresh_run)
    assert len(latest) == 40 and reviews.read(fresh_run).num_rows == 40
    assert {latest[i]["decision"] for i in ids[:20]} == {reviews.DEFECT}
    assert {latest[i]["decision"] for i in ids[20:]} == {reviews.FALSE_ALARM}


def test_calibrating_with_reviewed_false_alarms(loose):
    """The false alarms' scores join the calibration scores (once, however often the run is named),
    the threshold is the conformal one of the union, and it cannot go down."""
    from anomaly_ae.detector import AutoencoderDetector
    from anomaly_ae.threshold import conformal_threshold

    model, fresh_run = loose
    before = AutoencoderDetector.load(model)
    t = pq.read_table(fresh_run / "scores.parquet").to_pylist()
    # Normal items (digit 0) the model flagged: the false alarms a reviewer would mark.
    false_alarms = sorted((r for r in t if r["flagged"] and not r["is_anomaly"]), key=lambda r: -r["score"])[:3]
    assert len(false_alarms) == 3, "the fixture model flags too few normal test digits for this test"
    for r in false_alarms:
        reviews.record(fresh_run, r["image_id"], reviews.FALSE_ALARM)
    defect = next(r for r in t if r["flagged"] and r["is_anomaly"])
    reviews.record(fresh_run, defect["image_id"], reviews.DEFECT)  # confirmed defects are not normals

    s = steps.calibrate(model, reviews=[fresh_run])
    expected = conformal_threshold(np.r_[before.calibration_scores_, [r["score"] for r in false_alarms]],
                                   before.threshold_info_["target_fpr"])
    assert s["threshold"] == pytest.approx(expected["threshold"])
    assert s["n_calibration"] == len(before.calibration_scores_) + 3
    assert s["threshold"] >= before.threshold_ and s["threshold_before"] == pytest.approx(before.threshold_)
    assert s["reviewed_false_alarms"] == 3 and "3 reviewed false alarms" in s["source"]
    again = steps.calibrate(model, reviews=[fresh_run])
    assert again["threshold"] == pytest.approx(s["threshold"]) and again["n_calibration"] == s["n_calibration"]
    assert again["cached"] is True  # nothing new reviewed: the model is left as it is
    # A new target keeps them: the base scores plus the reviewed ones, at the new rate.
    retarget = steps.calibrate(model, target_fpr=0.05)
    assert retarget["n_calibration"] == s["n_calibration"]
    # They calibrate the model now: a labelled run over them counts them among the images it saw.
    saw = _ds_and_rerun(fresh_run, model)
    assert saw == {"split": None, "scored_split": "test", "n_items": 3, "recalibration": 3}


def _ds_and_rerun(run_dir, model):
    """`model_saw` of scoring the run's input (its test split) again with `model`."""
    import json

    run = json.loads((run_dir / "run.json").read_text())
    again = run_dir.parent / "rerun"
    steps.score(run["input"], model, again, split="test", report=False)
    return json.loads((again / "run.json").read_text())["model_saw"]


def test_calibrating_with_a_run_another_model_scored_scores_the_images_again(loose):
    from anomaly_ae.detector import AutoencoderDetector

    model, fresh_run = loose
    det = AutoencoderDetector.load(model)
    det.created_ = "another training"
    det.save(model)
    t = pq.read_table(fresh_run / "scores.parquet").to_pylist()
    fa = next(r for r in t if r["flagged"] and not r["is_anomaly"])
    reviews.record(fresh_run, fa["image_id"], reviews.FALSE_ALARM)
    s = steps.calibrate(model, reviews=[fresh_run])
    assert s["reviewed_false_alarms"] == 1
    taken = AutoencoderDetector.load(model).meta_["reviewed_false_alarms"]
    (score,) = [v for items in taken.values() for v in items.values()]
    assert score == pytest.approx(fa["score"], rel=1e-4)  # the same weights: the same score, computed again


def test_a_recalibrated_model_keeps_its_training_time(mnist_model, tmp_path):
    """A model's `created` says when its weights were trained: a recalibration saves the model
    again and must keep it (the report's "Model trained", and how a reviewed run is known to be
    the model's own, whose recorded scores can be reused)."""
    from anomaly_ae.detector import AutoencoderDetector

    model = tmp_path / "model"
    shutil.copytree(mnist_model, model)
    det = AutoencoderDetector.load(model)
    det.created_ = "2020-01-02T03:04:05+00:00"
    det.save(model)
    steps.calibrate(model, target_fpr=0.2)
    assert AutoencoderDetector.load(model).created_ == "2020-01-02T03:04:05+00:00"


def test_calibrate_refuses_a_folder_that_is_not_a_run(mnist_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(mnist_model, model)
    with pytest.raises(DataError, match="not a run folder"):
        steps.calibrate(model, reviews=[tmp_path])


def test_the_rebuilt_report_shows_the_review(fresh_run):
    ids = sorted(reviews.item_ids(fresh_run))[:3]
    reviews.record(fresh_run, ids[0], reviews.DEFECT)
    reviews.record(fresh_run, ids[1], reviews.FALSE_ALARM)
    steps.report(fresh_run)
    text = (fresh_run / "report.html").read_text()
    assert "1 confirmed defects, 1 false alarms: reviewed precision 0.50" in text


def test_training_takes_reviewed_false_alarms_as_extra_normals(loose, mnist_ds, tmp_path):
    """`train --reviews`: the images of the items marked as false alarms join the training images
    (not the calibration ones), the model records how many, and a retrain without them differs."""
    from anomaly_ae import checkpoint
    from anomaly_ae.config import DetectorConfig, TrainConfig

    fresh_run = loose[1]
    rows = pq.read_table(fresh_run / "scores.parquet").to_pylist()
    marked = [r for r in rows if r["flagged"] and not r["is_anomaly"]][:3]
    for r in marked:
        reviews.record(fresh_run, r["image_id"], reviews.FALSE_ALARM)
    cfg = DetectorConfig(train=TrainConfig(epochs=1, min_steps_per_epoch=1, allow_collapsed=True, device="cpu"))
    plain = steps.train(mnist_ds, tmp_path / "plain", normal=["0"], config=cfg)
    more = steps.train(mnist_ds, tmp_path / "more", normal=["0"], config=cfg, reviews=[fresh_run])
    data = checkpoint.read(tmp_path / "more")["data"]
    assert data["n_reviewed_normals"] == 3 and data["n_train"] == plain["n_train"]
    assert more["n_calibration"] == plain["n_calibration"] and more["n_reviewed_normals"] == 3
    from anomaly_ae import facts

    assert f"on {plain['n_train']} images and 3 reviewed false alarms:" in facts.train(more)
    assert data["fingerprint"] != checkpoint.read(tmp_path / "plain")["data"]["fingerprint"]
    again = steps.train(mnist_ds, tmp_path / "more", normal=["0"], config=cfg, reviews=[fresh_run])
    assert again["cached"] is True  # the same reviews: the model is up to date
