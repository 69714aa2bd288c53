"""The nearest kind (``model.kind = "nearest"``): no network, the nearest normal training image is the
reconstruction. On aligned parts whose good items vary (grain, brightness), it finds regions that
depart from every good item."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_ae.config import DetectorConfig, ModelConfig, ScoreConfig, TrainConfig
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.errors import ConfigError

SIDE = 48
FAST = TrainConfig(device="cpu", seed=3)


def cells(n: int, seed: int, defect: bool = False) -> np.ndarray:
    """Gray cells in the same place (two bright bars across a grey field) with what good cells vary
    in: overall brightness, fine noise, and a few small dark grains anywhere; with `defect`, a soft
    dark region a few times a grain's size, somewhere in the cell."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    out = np.empty((n, SIDE, SIDE, 1), np.uint8)
    for i in range(n):
        img = np.full((SIDE, SIDE), 0.5, np.float32)
        img[:, 14:17] = img[:, 31:34] = 0.8
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.uniform(0, SIDE, 2)
            img -= 0.25 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2**2))
        if defect:
            cy, cx, r = *rng.uniform(8, SIDE - 8, 2), rng.uniform(5, 8)
            img -= 0.1 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        img = img * rng.uniform(0.9, 1.1) + 0.02 * rng.standard_normal((SIDE, SIDE))
        out[i, ..., 0] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def _fitted(method: str = "auto", seed: int = 3) -> AutoencoderDetector:
    cfg = DetectorConfig(model=ModelConfig(kind="nearest"), train=FAST, score=ScoreConfig(method=method))
    return AutoencoderDetector(cfg).fit(cells(150, seed), cells(30, seed + 100))


# Measured: AUROC 0.98 with these defects (0.81 a little shallower, 0.06 deep); a memory that
# answered every cell with the same good one scored 0.48 on them.
FLOOR = 0.9


def test_the_nearest_kind_finds_regions_unlike_every_good_cell():
    det = _fitted()
    good, bad = cells(60, 7), cells(60, 8, defect=True)
    scores = det.score_samples(np.concatenate([good, bad]))
    auc = roc_auc_score(np.r_[np.zeros(60), np.ones(60)], scores)
    assert auc >= FLOOR, auc
    _, _, maps = det.score_with_maps(bad[:10])
    assert maps.shape == (10, SIDE, SIDE) and np.isfinite(maps).all()


def test_a_kept_training_image_is_its_own_reconstruction():
    det = AutoencoderDetector(DetectorConfig(model=ModelConfig(kind="nearest"), train=FAST,
                                             score=ScoreConfig(method="mse")))
    train = cells(40, 1)
    det.fit(train, cells(10, 2))
    scores, recon, _ = det.score_with_maps(train)
    np.testing.assert_array_equal(np.round(recon * 255).astype(np.uint8), train)
    assert np.all(scores == 0)
    assert det.history_["train_loss"] == [0.0] and det.history_["val_loss"][0] > 0
    other = cells(5, 9)  # an unseen cell: its reconstruction is one of the training cells
    _, recon, _ = det.score_with_maps(other)
    kept = {img.tobytes() for img in train}
    assert all(np.round(r * 255).astype(np.uint8).tobytes() in kept for r in recon)


def test_a_large_training_set_keeps_a_seeded_draw_that_fits_the_memory(monkeypatch, caplog):
    from anomaly_ae import nearest

    monkeypatch.setattr(nearest, "MAX_BANK_VALUES", 25 * SIDE * SIDE)
    with caplog.at_level(logging.INFO, logger="anomaly_ae.detector"):
        a, b = _fitted("mse"), _fitted("mse")
    assert a.model_.bank.shape == (25, SIDE * SIDE)
    assert np.array_equal(a.model_.bank.numpy(), b.model_.bank.numpy())  # the same seed, the same draw
    assert "keeps a seeded draw of 25 of the 150 training images" in caplog.text
    c = _fitted("mse", seed=4)
    assert not np.array_equal(a.model_.bank.numpy(), c.model_.bank.numpy())


def test_a_saved_nearest_model_scores_the_same_when_loaded(tmp_path):
    det = _fitted()
    det.calibrate(cells(40, 11))
    det.save(tmp_path / "m")
    back = AutoencoderDetector.load(tmp_path / "m", device="cpu")
    batch = np.concatenate([cells(10, 12), cells(10, 13, defect=True)])
    np.testing.assert_array_equal(back.score_samples(batch), det.score_samples(batch))
    assert back.threshold_ == det.threshold_ and back.model_.bank.shape == det.model_.bank.shape
    from anomaly_ae import checkpoint

    said = checkpoint.summary(tmp_path / "m", checkpoint.read(tmp_path / "m"), cached=False)
    assert (said["kind"], said["kept"], said["epochs"]) == ("nearest", 150, 0)  # what `info` says: no epochs


def test_the_nearest_kind_compares_whole_images_only():
    with pytest.raises(ConfigError, match="must be 0 for the nearest kind"):
        ModelConfig(kind="nearest", tile=16)
