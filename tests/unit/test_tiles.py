"""Tiled models: full-resolution reconstruction from overlapping tiles, training on random crops,
and small defects found in large generated images."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_ae import checkpoint
from anomaly_ae.config import DetectorConfig, ModelConfig, TrainConfig
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.errors import ConfigError
from anomaly_ae.measures import image_scores
from anomaly_ae.tiles import grid_tiles, is_tiled, random_crops, reconstruct, tile_shape


class TileIndex(torch.nn.Module):
    """Returns, for every pixel of every tile, the running index of the tile it came from."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        idx = torch.arange(self.seen, self.seen + len(x), dtype=torch.float32)
        self.seen += len(x)
        return idx.view(-1, 1, 1, 1).expand(-1, x.shape[1], x.shape[2], x.shape[3]).contiguous()


@pytest.mark.parametrize("shape,tile", [((40, 40), 32), ((64, 64), 16), ((33, 70), 16), ((20, 50), 32),
                                        ((9, 100), 8), ((64, 64), 64)])
def test_reconstruct_with_identity_returns_the_image(shape, tile):
    x = torch.rand(2, 3, *shape)
    th, tw = tile_shape(shape, tile)
    assert torch.equal(reconstruct(torch.nn.Identity(), x, th, tw, max_tiles=5), x)


def test_each_pixel_comes_from_the_centre_of_one_tile():
    # 40 x 40 with 16-pixel tiles at stride 8: every 8 x 8 block is the centre of its own tile,
    # so the tiles' borders never reach the output.
    out = reconstruct(TileIndex(), torch.rand(1, 1, 40, 40), 16, 16, max_tiles=7)[0, 0]
    blocks = out.reshape(5, 8, 5, 8).permute(0, 2, 1, 3).reshape(25, 64)
    assert torch.equal(blocks.min(1).values, blocks.max(1).values)  # one tile per block
    assert torch.equal(blocks[:, 0], torch.arange(25, dtype=torch.float32))  # 25 distinct tiles, in order


def test_random_crops_are_windows_of_their_own_image():
    x = torch.arange(3 * 2 * 10 * 12, dtype=torch.int32).view(3, 2, 10, 12)
    crops = random_crops(x, 4, 5, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 2, 4, 5)
    for img, crop in zip(x, crops):
        y0, x0 = divmod(int(crop[0, 0, 0]) - int(img[0, 0, 0]), 12)
        assert torch.equal(img[:, y0: y0 + 4, x0: x0 + 5], crop)


def test_grid_tiles_count_and_limit():
    assert grid_tiles(torch.zeros(3, 1, 10, 12), 4, 5).shape == (3 * 2 * 2, 1, 4, 5)
    assert grid_tiles(torch.zeros(30, 1, 64, 64), 8, 8, limit=100).shape == (100, 1, 8, 8)


def test_tile_shape_and_config():
    assert tile_shape((640, 480, 1), 0) == (640, 480)
    assert tile_shape((640, 20, 1), 32) == (32, 20)
    assert is_tiled((640, 640, 1), 32) and not is_tiled((28, 28, 1), 32)
    with pytest.raises(ConfigError, match="model.tile"):
        ModelConfig(tile=4)


def test_top_k_counts_a_tile_not_the_image():
    maps = torch.zeros(1, 100, 100)
    maps[0, :2, :5] = 1.0  # 10 hot pixels
    assert float(image_scores(maps, "topk", 0.01, area=1000)) == 1.0  # k = 10
    assert float(image_scores(maps, "topk", 0.01)) == pytest.approx(0.1)  # k = 100


def boards(n: int, side: int, seed: int, defect: bool = False) -> np.ndarray:
    """Binary 'circuit boards': 4-pixel traces on a 16-pixel grid, each ending in square pads;
    with `defect`, a pin-hole in a pad or a diagonal scratch of copper."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, side, side, 1), np.uint8)
    lanes = np.arange(12, side - 12, 16)
    for img in out[..., 0]:
        pads = []
        for pos in rng.choice(lanes, size=5, replace=False):
            lo = int(rng.integers(0, side // 16 - 3)) * 16 + 8
            hi = min(side - 8, lo + int(rng.integers(3, side // 16)) * 16)
            view = img if rng.random() < 0.5 else img.T  # a vertical trace is a row of the transpose
            view[pos: pos + 4, lo:hi] = 255
            for end in (lo, hi):
                view[pos - 3: pos + 7, end - 5: end + 5] = 255
                pads.append((view, pos - 3, end - 5))
        if defect and rng.random() < 0.5:
            view, r, c = pads[int(rng.integers(len(pads)))]
            view[r + 3: r + 7, c + 3: c + 7] = 0  # pin-hole in a pad
        elif defect:
            r, c = (int(v) for v in rng.integers(4, side - 16, 2))
            for k in range(12):
                img[r + k, c + k: c + k + 2] = 255  # a diagonal scratch of copper
    return out


@pytest.fixture(scope="module")
def tiled_detector():
    cfg = DetectorConfig(model=ModelConfig(tile=16, latent_dim=32), train=TrainConfig(epochs=20, patience=20))
    det = AutoencoderDetector(cfg).fit(boards(96, 128, seed=0))
    return det.calibrate(boards(24, 128, seed=1), target_fpr=0.05)


def test_tiled_model_finds_small_defects_in_large_images(tiled_detector):
    det = tiled_detector
    assert det.model_.height == 16 and det.shape_ == (128, 128, 1)
    normal, anomalous = boards(40, 128, seed=2), boards(40, 128, seed=3, defect=True)
    scores = det.score_samples(np.concatenate([normal, anomalous]))
    assert roc_auc_score(np.r_[np.zeros(40), np.ones(40)], scores) > 0.85  # measured 0.954


def test_tiled_maps_are_full_size_and_checkpoints_round_trip(tiled_detector, tmp_path):
    det = tiled_detector
    images = boards(5, 128, seed=4, defect=True)
    scores, recon, maps = det.score_with_maps(images)
    assert recon.shape == (5, 128, 128, 1) and maps.shape == (5, 128, 128)
    np.testing.assert_allclose(scores, det.score_samples(images), rtol=1e-5)
    det.save(tmp_path / "m")
    again = AutoencoderDetector.from_checkpoint(checkpoint.read(tmp_path / "m"), "cpu")
    assert again.config.model.tile == 16
    np.testing.assert_allclose(again.score_samples(images), scores, rtol=1e-5)


class Constant(torch.nn.Module):
    height = 16

    def forward(self, x):
        return torch.full_like(x, 0.5)


def test_collapse_check_reads_every_batch_of_a_tiled_model(tiled_detector):
    # A tiled model scores one image per batch; a constant output must still read as collapsed.
    det = AutoencoderDetector(tiled_detector.config)
    det.shape_, det.device_, det.model_ = tiled_detector.shape_, tiled_detector.device_, Constant()
    det.tile_ = tiled_detector.tile_
    report = det._collapse_check(boards(10, 128, seed=5))
    assert report["spread_ratio"] == 0.0 and report["near_constant"] and report["collapsed"]


def test_config_keeps_tile_only_when_set():
    assert "tile" not in DetectorConfig().to_dict()["model"]  # whole-image configurations as before
    cfg = DetectorConfig(model=ModelConfig(tile=32))
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg
