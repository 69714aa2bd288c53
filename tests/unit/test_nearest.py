"""The nearest kind (``model.kind = "nearest"``): no network, the nearest normal training image is the
reconstruction. On aligned parts whose good items vary (grain, brightness), it finds regions that
depart from every good item."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_ae.config import DetectorConfig, ModelConfig, ScoreConfig, TrainConfig
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.errors import ConfigError

SIDE = 48
FAST = TrainConfig(device="cpu", seed=3)


def cells(n: int, seed: int, defect: bool = False, side: int = SIDE) -> np.ndarray:
    """Gray cells in the same place (two bright bars across a grey field) with what good cells vary
    in: overall brightness, fine noise, and a few small dark grains anywhere; with `defect`, a soft
    dark region a few times a grain's size, somewhere in the cell."""
    rng = np.random.default_rng(seed)
    u = side / SIDE  # every length scales with the side
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    out = np.empty((n, side, side, 1), np.uint8)
    for i in range(n):
        img = np.full((side, side), 0.5, np.float32)
        img[:, round(14 * u):round(17 * u)] = img[:, round(31 * u):round(34 * u)] = 0.8
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.uniform(0, side, 2)
            img -= 0.25 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (1.2 * u) ** 2))
        if defect:
            cy, cx, r = *rng.uniform(8 * u, side - 8 * u, 2), rng.uniform(5, 8) * u
            img -= 0.1 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        img = img * rng.uniform(0.9, 1.1) + 0.02 * rng.standard_normal((side, side))
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


def test_images_too_many_for_the_memory_at_full_size_are_all_kept_and_compared_shrunk(monkeypatch, caplog, tmp_path):
    from anomaly_ae import checkpoint, nearest

    big = 2 * SIDE  # twice the side: shrunk by 2 they are the cells above
    monkeypatch.setattr(nearest, "MAX_BANK_VALUES", 150 * SIDE * SIDE)
    cfg = DetectorConfig(model=ModelConfig(kind="nearest"), train=FAST, score=ScoreConfig(method="mse"))
    train = cells(150, 3, side=big)
    with caplog.at_level(logging.INFO, logger="anomaly_ae.detector"):
        det = AutoencoderDetector(cfg).fit(train, cells(30, 103, side=big))
    assert det.model_.factor == 2 and det.model_.bank.shape == (150, SIDE * SIDE)  # every image, none drawn
    assert "compares the images shrunk to 48x48, where its memory holds 150 of them" in caplog.text
    assert "seeded draw" not in caplog.text
    scores, recon, maps = det.score_with_maps(train[:20])
    # A kept image: only its blocks' rounding departs from it (at most half a grey level).
    assert np.abs(recon - train[:20] / 255.0).max() <= 0.5 / 255 + 1e-6 and scores.max() < 1e-5
    good, bad = cells(60, 7, side=big), cells(60, 8, defect=True, side=big)
    scores, _, maps = det.score_with_maps(np.concatenate([good, bad]))
    auc = roc_auc_score(np.r_[np.zeros(60), np.ones(60)], scores)
    assert auc >= FLOOR, auc  # measured 0.96 (0.95 with a memory that holds them at full size)
    assert maps.shape == (120, big, big)
    det.calibrate(cells(40, 11, side=big))
    det.save(tmp_path / "m")
    back = AutoencoderDetector.load(tmp_path / "m", device="cpu")
    assert back.model_.factor == 2
    np.testing.assert_array_equal(back.score_samples(bad[:10]), det.score_samples(bad[:10]))
    said = checkpoint.summary(tmp_path / "m", checkpoint.read(tmp_path / "m"), cached=False)
    assert (said["kept"], said["compared_at"]) == (150, [SIDE, SIDE])


def test_a_model_saved_before_images_could_be_kept_shrunk_loads_at_full_size():
    from anomaly_ae.nearest import NearestNormal

    old = NearestNormal(1, SIDE, SIDE)
    old.remember(torch.from_numpy(cells(20, 1)).permute(0, 3, 1, 2), seed=0)
    state = old.state_dict()
    del state["shrink"]  # what such a model holds: its memory only
    back = NearestNormal(1, SIDE, SIDE)
    back.load_state_dict(state)
    assert back.factor == 1 and torch.equal(back.bank, old.bank)


def test_very_thin_images_are_never_shrunk_past_their_short_side(monkeypatch):
    from anomaly_ae import nearest

    monkeypatch.setattr(nearest, "MAX_BANK_VALUES", 100)
    assert nearest.compare_factor(10, (1, 400, 4)) == 4  # not 7 (400 / 64): a block 4 wide at most
    memory = nearest.NearestNormal(1, 400, 4)
    memory.remember(torch.zeros(10, 1, 400, 4, dtype=torch.uint8), seed=0)
    assert memory(torch.zeros(2, 1, 400, 4)).shape == (2, 1, 400, 4)


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
