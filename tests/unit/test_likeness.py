"""A batch's images against the model's training images, in size and colour: a camera of another
resolution or images of another product are said, never judged silently."""

from __future__ import annotations

import json
import logging

import numpy as np

from anomaly_ae import likeness, steps
from tests.conftest import TINY, write_png


def test_sizes_and_colours_unlike_the_training_images_are_named():
    trained = likeness.summarise([128] * 10, [128] * 10, ["L"] * 10)
    same = likeness.summarise([128, 130], [128, 129], ["L", "I;16"])  # within 2%: the same camera
    assert likeness.unlike(trained, same) == []
    other = likeness.summarise([200, 200, 128], [256, 256, 128], ["RGB", "RGB", "L"])
    said = likeness.unlike(trained, other)
    assert said[0].startswith("2 of 3 images are 256x200 (width x height); the model was trained on 128x128 images")
    assert said[1].startswith("2 of 3 images are colour; the model was trained on gray images")
    assert likeness.unlike(likeness.summarise([64], [64], ["RGB"]), likeness.summarise([64], [64], ["L"]))[0] \
        .startswith("1 of 1 images are gray; the model was trained on colour images")
    assert likeness.unlike(None, other) == [] and likeness.unlike(trained, {"sizes": []}) == []
    assert likeness.unlike(trained, None) == []  # no file of the batch could be opened
    bigger = likeness.summarise([256], [256], ["L"])  # the same aspect, twice the resolution: another scale
    assert "256x256" in likeness.unlike(trained, bigger)[0]


def test_many_training_sizes_are_judged_by_their_range():
    rng = np.random.default_rng(0)
    h, w = rng.integers(300, 400, 50), rng.integers(300, 400, 50)
    trained = likeness.summarise(h, w, ["L"] * 50)
    assert "range" in trained and len(trained["sizes"]) == likeness.KEEP_SIZES
    assert likeness.unlike(trained, likeness.summarise([350], [351], ["L"])) == []  # inside the range
    assert likeness.unlike(trained, likeness.summarise([100], [400], ["L"]))  # far outside it


def test_a_batch_of_files_is_judged_on_a_sample_of_headers(tmp_path):
    for k in range(10):
        write_png(tmp_path / f"{k}.png", np.zeros((20, 30), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths = sorted(tmp_path.iterdir())
    s = likeness.of_files(paths, sample=4)
    assert sum(n for *_, n in s["sizes"]) <= 4 and s["sizes"][0][:2] == [20, 30] and s["sampled"] == " sampled from the batch's 11"
    whole = likeness.of_files(paths)
    assert whole["sizes"] == [[20, 30, 10]] and whole["sampled"] == "" and whole["gray"] == 10


def test_score_warns_and_records_images_unlike_the_training_images(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for k in range(24):
        write_png(tmp_path / "good" / f"{k:02d}.png", rng.integers(0, 120, (16, 16), dtype=np.uint8))
    steps.ingest(str(tmp_path / "good"), tmp_path / "ds")
    steps.train(tmp_path / "ds", tmp_path / "m", config=TINY)
    new = tmp_path / "new"
    for k in range(3):
        write_png(new / f"wide{k}.png", rng.integers(0, 120, (16, 24), dtype=np.uint8))
        write_png(new / f"colour{k}.png", rng.integers(0, 120, (16, 16, 3), dtype=np.uint8))
    with caplog.at_level(logging.WARNING):
        steps.score(new, tmp_path / "m", tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(run["unlike_training"]) == 2 and "24x16 (width x height)" in run["unlike_training"][0]
    assert "3 of 6 images are colour" in caplog.text and "were resized to its size" in caplog.text
    assert "3 of 6 images are colour" in (tmp_path / "run" / "report.html").read_text()
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # images like the training ones: nothing said
        steps.score(tmp_path / "good", tmp_path / "m", tmp_path / "same", report=False)
    assert json.loads((tmp_path / "same" / "run.json").read_text())["unlike_training"] == []
    assert "trained on" not in caplog.text


def test_a_model_with_a_crop_region_says_it_cuts_or_rejects_images_of_another_size(tmp_path, caplog):
    """A crop region is cut out at the same pixels, never resized: that is what is said of other sizes."""
    trained = likeness.summarise([128] * 4, [128] * 4, ["L"] * 4)
    crop = (10, 20, 100, 100)  # needs 110 rows and 120 columns
    batch = likeness.summarise([200, 200, 105], [256, 256, 300], ["L"] * 3)
    said = likeness.unlike(trained, batch, crop)
    assert said == [
        "2 of 3 images are 256x200 (width x height); the model was trained on 128x128 images: the model's crop region "
        "(top, left, height, width: 10, 20, 100, 100) is cut out of them at the same place, so it may frame another "
        "part of the scene",
        "1 of 3 images are 300x105 (width x height), too small for the model's crop region (top, left, height, "
        "width: 10, 20, 100, 100): they are rejected"]
    assert not any("resized" in s for s in said)

    rng = np.random.default_rng(0)  # the same, scored with a model trained with a crop region
    for k in range(24):
        write_png(tmp_path / "good" / f"{k:02d}.png", rng.integers(0, 120, (16, 16), dtype=np.uint8))
    steps.ingest(str(tmp_path / "good"), tmp_path / "ds", crop="2,2,12,12")
    steps.train(tmp_path / "ds", tmp_path / "m", config=TINY)
    for k in range(2):
        write_png(tmp_path / "new" / f"wide{k}.png", rng.integers(0, 120, (16, 24), dtype=np.uint8))
        write_png(tmp_path / "new" / f"small{k}.png", rng.integers(0, 120, (10, 10), dtype=np.uint8))
    with caplog.at_level(logging.WARNING):
        steps.score(tmp_path / "new", tmp_path / "m", tmp_path / "run", report=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "resized" not in caplog.text and len(run["unlike_training"]) == 2
    assert "2 of 4 images are 24x16" in run["unlike_training"][0] and "cut out of them" in run["unlike_training"][0]
    assert "2 of 4 images are 10x10" in run["unlike_training"][1] and "rejected" in run["unlike_training"][1]
    assert run["counts"]["rejects"] == 2
