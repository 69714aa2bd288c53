"""Changing a model folder: one train at a time, recalibration in place, calibration scores labelled."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from anomaly_ae import checkpoint, steps
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.errors import BusyError, DataError
from tests.conftest import TINY, noise_workspace, write_png


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = noise_workspace(root)
    rng = np.random.default_rng(1)
    for k in range(6):
        write_png(root / "more" / f"new{k}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    return {**paths, "more": root / "more"}


WINNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from anomaly_ae import steps
    from anomaly_ae.config import DetectorConfig, TrainConfig

    def progress(done, total, **kw):  # hold the model folder until the test says go
        print("training", flush=True)
        while not Path(sys.argv[3]).exists():
            time.sleep(0.05)

    cfg = DetectorConfig(train=TrainConfig(epochs=1, min_steps_per_epoch=1, allow_collapsed=True, device="cpu"))
    steps.train(sys.argv[1], sys.argv[2], config=cfg, progress=progress)
    print("done", flush=True)
""")


def test_two_trains_into_one_folder_leave_no_stale_state(work, tmp_path):
    out, go = tmp_path / "m", tmp_path / "go"
    winner = subprocess.Popen([sys.executable, "-c", WINNER, str(work["dataset"]), str(out), str(go)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert winner.stdout.readline().strip() == "training"
        with pytest.raises(BusyError, match=f"Model folder {out} is in use by process {winner.pid}"):
            steps.train(work["dataset"], out, config=TINY)
    finally:
        go.touch()
        assert winner.stdout.readline().strip() == "done"
        winner.wait()
    assert checkpoint.read(out)["format"] == checkpoint.FORMAT
    assert list(tmp_path.glob(".m.train-*")) == [], "a resume state file was left behind"


def test_recalibrating_on_new_images_keeps_the_held_out_scores_and_says_where_scores_came_from(work, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(work["model"], model)
    original = checkpoint.read(model)
    held_out = original["calibration_scores"].numpy()
    assert original["threshold"]["source"] == steps.HELD_OUT_SOURCE

    s = steps.calibrate(model, data=work["more"], target_fpr=0.2)
    assert s["n_calibration"] == 6 and s["source"] == f"normal images of {work['more']}"
    again = steps.calibrate(model, target_fpr=0.3)  # reuses the scores in use: those of the new images
    assert again["n_calibration"] == 6 and again["source"] == f"normal images of {work['more']}"
    stored = checkpoint.read(model)
    assert np.array_equal(np.asarray(stored["held_out_scores"]), held_out)  # not lost

    back = steps.calibrate(model, held_out=True, target_fpr=0.2)
    assert back["source"] == steps.HELD_OUT_SOURCE and back["n_calibration"] == len(held_out)
    assert np.array_equal(checkpoint.read(model)["calibration_scores"].numpy(), held_out)


def test_held_out_scores_that_are_gone_are_said_to_be_gone(work, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(work["model"], model)
    det = AutoencoderDetector.from_checkpoint(checkpoint.read(model), "cpu")
    det.threshold_info_["source"] = "normal images of /elsewhere"  # recalibrated before they were kept
    det.save(model)
    with pytest.raises(DataError, match="no longer holds the held-out scores"):
        steps.calibrate(model, held_out=True)


def test_recalibration_keeps_everything_else_in_the_folder(work, tmp_path):
    """A model file given inside a folder of other things: recalibrating rewrites the model's two
    files only, never the folder around them."""
    folder = tmp_path / "downloads"
    shutil.copytree(work["model"], folder)
    (folder / "photos").mkdir()
    (folder / "photos" / "cat.png").write_bytes(b"a cat")
    (folder / "notes.txt").write_text("mine")
    steps.calibrate(folder / "model.pt", target_fpr=0.2)
    assert (folder / "photos" / "cat.png").read_bytes() == b"a cat" and (folder / "notes.txt").read_text() == "mine"
    assert checkpoint.read(folder)["threshold"]["target_fpr"] == 0.2
    assert {n for n in os.listdir(tmp_path) if not n.endswith(".lock")} == {"downloads"}
