"""The geometric kind: an autoencoder whose encoder also learns which way normal images are turned.

Generated images, each case with an honest floor both ways: where the anomaly is what the whole image
shows (an L-shaped object is normal, a square one of the same brightness is not), it beats the plain
reconstruction error; where the anomaly is a local flaw on a round object (which no turn changes),
its orientation part cannot tell, and it does not beat the plain AE (it loses to it: its score takes
the larger of the two parts, and the orientation part is noise there), but keeps a floor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_ae.config import DetectorConfig, ModelConfig, TrainConfig
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.errors import ConfigError

SIDE = 32
TRAIN = TrainConfig(epochs=12, device="cpu")


def _scenes(rng, n: int, shape: str) -> np.ndarray:
    """n gray SIDE x SIDE images of noise (mean 100) with one bright shape (mean 200) at a random place
    and size: "ell" (an L: oriented), "square" (a smaller filled square), "disc" (round), or "flawed"
    (a disc with a dark bar across it)."""
    out = rng.normal(100, 15, (n, SIDE, SIDE))
    for img in out:
        s = int(rng.integers(11, 17))
        y, x = rng.integers(1, SIDE - s - 1, 2)
        yy, xx = np.mgrid[0:s, 0:s]
        if shape == "ell":
            t = int(rng.integers(3, 5))
            mask = (xx < t) | (yy >= s - t)
        elif shape == "square":
            c = s // 4
            mask = (yy >= c) & (yy < s - c) & (xx >= c) & (xx < s - c)
        else:
            mask = (yy - (s - 1) / 2) ** 2 + (xx - (s - 1) / 2) ** 2 <= (s / 2) ** 2
        patch = img[y: y + s, x: x + s]
        patch[mask] = rng.normal(200, 10, int(mask.sum()))
        if shape == "flawed":
            r = int(rng.integers(s // 3, 2 * s // 3))
            patch[r: r + 2, 2: s - 2] = 60
    return np.clip(out, 0, 255).astype(np.uint8)[..., None]


def _aurocs(normal: str, anomalous: str, seed: int = 0) -> dict:
    """Image AUROC of the plain AE, of the geometric kind, and of the geometric kind's orientation part alone."""
    rng = np.random.default_rng(seed)
    fit = _scenes(rng, 300, normal)
    test = np.concatenate([_scenes(rng, 60, normal), _scenes(rng, 60, anomalous)])
    y = np.r_[np.zeros(60), np.ones(60)]
    out = {}
    for kind in ("ae", "geometric"):
        det = AutoencoderDetector(DetectorConfig(model=ModelConfig(kind=kind), train=TRAIN)).fit(fit)
        out[kind] = roc_auc_score(y, det.score_samples(test))
    with torch.no_grad():
        x = torch.from_numpy(test).float().permute(0, 3, 1, 2) / 255.0
        out["orientation"] = roc_auc_score(y, det.model_.transform_nll(x).numpy())
    return out


def test_where_the_whole_image_is_the_anomaly_it_beats_the_reconstruction_error():
    got = _aurocs("ell", "square")  # measured: ae 0.78, geometric 1.0
    assert got["geometric"] >= 0.95, got
    assert got["ae"] <= 0.9 and got["geometric"] >= got["ae"] + 0.08, got  # a square redraws nearly as well


def test_where_a_local_flaw_on_a_round_object_is_the_anomaly_it_does_not_beat_the_reconstruction_error():
    got = _aurocs("disc", "flawed")  # measured: ae 1.0, geometric 0.77
    assert got["ae"] >= 0.95, got
    assert got["orientation"] <= 0.7, got  # a round object looks the same every way up
    assert 0.7 <= got["geometric"] <= got["ae"], got


def test_its_score_is_positive_kept_by_a_checkpoint_and_whole_images_only(tmp_path):
    rng = np.random.default_rng(1)
    images = _scenes(rng, 40, "ell")
    cfg = DetectorConfig(model=ModelConfig(kind="geometric", latent_dim=8, base_channels=8, max_channels=16),
                         train=TrainConfig(epochs=1, min_steps_per_epoch=2, device="cpu", allow_collapsed=True))
    det = AutoencoderDetector(cfg).fit(images[:30])
    assert det.model_.head.out_features == 8 and det.tile_ is None
    stats = det.model_.score_stats.clone()
    assert not torch.equal(stats, torch.tensor([0.0, 1.0, 0.0, 1.0]))  # set from the held-back images
    det.calibrate(images[30:])
    scores = det.score_samples(images)
    assert np.isfinite(scores).all() and len(np.unique(scores)) == len(scores)
    det.save(tmp_path / "m")
    again = AutoencoderDetector.load(tmp_path / "m")
    assert torch.equal(again.model_.score_stats, stats)
    np.testing.assert_allclose(again.score_samples(images), scores, rtol=1e-6)
    with pytest.raises(ConfigError, match="geometric"):
        ModelConfig(kind="geometric", tile=16)
    from anomaly_ae.models import build_model

    with pytest.raises(ValueError, match="cls="):  # its network is not in models.MODELS: a clear error
        build_model(cfg.model, (32, 32, 1))


def test_images_that_are_not_square_get_four_ways_and_few_held_back_images_fall_back_to_training():
    """Not square: the half turn and the two mirrors. One held-back image cannot give a spread: the
    training images set the standardisation instead."""
    rng = np.random.default_rng(2)
    images = np.clip(rng.normal(120, 30, (10, 24, 40, 1)), 0, 255).astype(np.uint8)
    cfg = DetectorConfig(model=ModelConfig(kind="geometric", latent_dim=8, base_channels=8, max_channels=16),
                         train=TrainConfig(epochs=1, min_steps_per_epoch=2, device="cpu", allow_collapsed=True))
    det = AutoencoderDetector(cfg).fit(images)  # 10% of 10 held back: 1 image
    assert det.model_.head.out_features == 4
    stats = det.model_.score_stats
    assert torch.isfinite(stats).all() and stats[1] >= 0.1 and stats[3] >= 0.1
    assert np.isfinite(det.score_samples(images)).all()
