"""The detector on real digits: quality floors, calibration, checkpoints, collapse detection."""


import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_ae import steps
from anomaly_ae.config import DetectorConfig, ModelConfig, ScoreConfig, TrainConfig
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.errors import DataError, ModelError
from tests.conftest import FAST


def split_digit(mnist_images, digit, seed=0):
    pixels, classes, splits = mnist_images
    train = np.random.default_rng(seed).permutation(np.flatnonzero((splits == "train") & (classes == digit)))
    n_cal = len(train) // 5
    test = np.flatnonzero(splits == "test")
    return pixels[train[n_cal:]], pixels[train[:n_cal]], pixels[test], classes[test] != digit


@pytest.fixture(scope="module")
def fitted(mnist_images):
    out = {}
    for digit in ("0", "1"):
        fit, cal, test, y = split_digit(mnist_images, digit)
        det = AutoencoderDetector(FAST).fit(fit).calibrate(cal, target_fpr=0.05)
        out[digit] = (det, test, y)
    return out


@pytest.mark.parametrize("digit", ["0", "1"])
def test_one_class_mnist_auroc_floor(fitted, digit):
    det, test, y = fitted[digit]
    assert roc_auc_score(y, det.score_samples(test)) > 0.95


def test_realised_false_positive_rate_near_target(fitted):
    # 150 unseen normal digits per class: the FPR at a 5% target stays near 5%.
    rates = [float(det.predict(test[~y]).mean()) for det, test, y in fitted.values()]
    assert 0.0 < np.mean(rates) < 0.12


def test_predict_and_p_values_agree(fitted):
    det, test, _ = fitted["0"]
    scores = det.score_samples(test)
    assert np.array_equal(det.predict(test), (scores > det.threshold_).astype(int))
    p = det.p_values(scores)
    assert p.min() > 0 and p.max() <= 1 and np.all(np.diff(p[np.argsort(scores)]) <= 1e-12)


def test_variants_train(mnist_images):
    fit, cal, test, y = split_digit(mnist_images, "1")
    for kind in ("denoising", "vae"):
        cfg = DetectorConfig(model=ModelConfig(kind=kind), train=TrainConfig(epochs=4))
        det = AutoencoderDetector(cfg).fit(fit).calibrate(cal)
        assert roc_auc_score(y, det.score_samples(test)) > 0.9, kind


def test_training_is_reproducible_on_cpu(mnist_images):
    fit, cal, test, _ = split_digit(mnist_images, "7")
    cfg = DetectorConfig(train=TrainConfig(epochs=2, device="cpu"))
    a = AutoencoderDetector(cfg).fit(fit[:100], validation=cal[:20]).score_samples(test[:50])
    b = AutoencoderDetector(cfg).fit(fit[:100], validation=cal[:20]).score_samples(test[:50])
    assert np.array_equal(a, b)


def test_collapsed_model_is_detected(fitted, mnist_images):
    det, test, _ = fitted["0"]
    healthy = det._collapse_check(test[:200])
    assert not healthy["collapsed"]
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 1))

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x, 0.2) + 0.0 * constant(x).sum()

    broken = AutoencoderDetector(FAST)
    broken.__dict__.update(det.__dict__)
    broken.model_ = Constant()
    assert broken._collapse_check(test[:200])["collapsed"]
    mean_image = torch.from_numpy(test[:200].astype(np.float32).mean(axis=0) / 255.0).permute(2, 0, 1)

    class MeanImage(torch.nn.Module):
        def forward(self, x):
            return mean_image.expand_as(x).clone()

    broken.model_ = MeanImage()
    check = broken._collapse_check(test[:200])
    assert check["collapsed"] and abs(check["gain_over_mean"]) < 1e-3 and check["spread_ratio"] < 1e-4
    assert healthy["gain_over_mean"] > 0.5
    # Images that are all alike (a uniform surface with fine noise): the mean image is a fair
    # reconstruction, so near-constant output is noted, not called a collapse.
    rng = np.random.default_rng(0)
    alike = np.clip(128 + rng.normal(0, 6, (200, 28, 28, 1)), 0, 255).astype(np.uint8)
    mean_image = torch.from_numpy(alike.astype(np.float32).mean(axis=0) / 255.0).permute(2, 0, 1)
    check = broken._collapse_check(alike)
    assert check["near_constant"] and not check["collapsed"]


def test_collapse_stops_training_unless_allowed(mnist_images, monkeypatch):
    fit, cal, _, _ = split_digit(mnist_images, "0")
    monkeypatch.setattr(AutoencoderDetector, "_collapse_check",
                        lambda self, images, mean=None: {"spread_ratio": 0.001, "gain_over_mean": 0.0,
                                                         "near_constant": True, "collapsed": True})
    cfg = DetectorConfig(train=TrainConfig(epochs=1))
    with pytest.raises(ModelError, match="collapsed"):
        AutoencoderDetector(cfg).fit(fit[:50], validation=cal[:10])
    allowed = DetectorConfig(train=TrainConfig(epochs=1, allow_collapsed=True))
    assert AutoencoderDetector(allowed).fit(fit[:50], validation=cal[:10]).collapse_["collapsed"]


def test_checkpoint_round_trip_gives_identical_scores(fitted, tmp_path):
    det, test, _ = fitted["0"]
    det.save(tmp_path / "m", preprocess={"height": 28, "width": 28, "channels": "L", "resize": "bilinear"},
             classes=[str(d) for d in range(10)], normal_classes=["0"])
    loaded = AutoencoderDetector.load(tmp_path / "m")
    assert np.array_equal(loaded.score_samples(test), det.score_samples(test))
    assert loaded.threshold_ == det.threshold_ and loaded.meta_["normal_classes"] == ["0"]


def test_a_large_image_model_records_the_widths_it_was_sized_with(tmp_path):
    # 256x256 images: the default widths resolve to the narrower network, which the saved
    # configuration names, so the model loads (and scores) the same without knowing the rule.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 256, 256, 1), dtype=np.uint8)
    cfg = DetectorConfig(train=TrainConfig(epochs=1, batch_size=4, min_steps_per_epoch=1, val_fraction=0,
                                           allow_collapsed=True),
                         score=ScoreConfig(method="topk"))
    det = AutoencoderDetector(cfg).fit(images[:8]).calibrate(images[8:], target_fpr=0.5)
    assert (det.config.model.base_channels, det.config.model.max_channels) == (8, 128)
    det.save(tmp_path / "m", preprocess={"height": 256, "width": 256, "channels": "L", "resize": "bilinear"})
    loaded = AutoencoderDetector.load(tmp_path / "m")
    assert loaded.config.model.base_channels == 8
    assert np.array_equal(loaded.score_samples(images[8:]), det.score_samples(images[8:]))


def test_wrong_image_shape_is_refused(fitted):
    det, _, _ = fitted["0"]
    with pytest.raises(DataError, match="model expects"):
        det.score_samples(np.zeros((2, 32, 32, 1), np.uint8))


@pytest.mark.gpu
def test_cuda_training_and_scoring(mnist_images, tmp_path):
    fit, cal, test, y = split_digit(mnist_images, "0")
    cfg = DetectorConfig(train=TrainConfig(epochs=6, device="cuda"))
    det = AutoencoderDetector(cfg).fit(fit).calibrate(cal)
    assert det.device_.type == "cuda" and det.history_["device"].startswith("cuda")
    assert roc_auc_score(y, det.score_samples(test)) > 0.95
    det.save(tmp_path / "m", preprocess={"height": 28, "width": 28, "channels": "L", "resize": "bilinear"})
    on_cpu = AutoencoderDetector.load(tmp_path / "m", device="cpu")
    assert np.allclose(on_cpu.score_samples(test[:64]), det.score_samples(test[:64]), rtol=0.1, atol=1e-3)


def test_calibration_images_never_reach_training_or_early_stopping(mnist_ds, tmp_path, monkeypatch):
    """The conformal guarantee needs calibration scores exchangeable with new normal images: the
    calibration images may not train the model nor choose its epoch."""
    from anomaly_ae.dataset import Dataset

    seen = {}
    real_fit = AutoencoderDetector.fit

    def spy(self, images, validation=None, **kw):
        seen["passed_validation"] = validation
        out = real_fit(self, images, validation, **kw)
        seen["trained"] = {bytes(im) for im in images}
        return out

    monkeypatch.setattr(AutoencoderDetector, "fit", spy)
    real_cal = AutoencoderDetector.calibrate

    def spy_cal(self, images, target_fpr=None):
        seen["calibrated"] = images
        return real_cal(self, images, target_fpr)

    monkeypatch.setattr(AutoencoderDetector, "calibrate", spy_cal)
    steps.train(mnist_ds, tmp_path / "m", normal=["3"], config=FAST)
    cal = seen["calibrated"]
    assert seen["passed_validation"] is None and len(cal) > 0
    assert not seen["trained"] & {bytes(im) for im in cal}
    n_normal = len(Dataset(mnist_ds).rows(split="train", classes=["3"]))
    assert len(seen["trained"]) + len(cal) <= n_normal


def test_split_validation_holds_back_a_seeded_disjoint_share():
    from anomaly_ae.arrays import split_validation

    images = np.arange(50 * 4, dtype=np.uint8).reshape(50, 2, 2, 1)
    train, val = split_validation(images, 0.1, seed=0)
    assert len(val) == 5 and len(train) == 45
    assert not {bytes(v) for v in val} & {bytes(t) for t in train}
    again, val2 = split_validation(images, 0.1, seed=0)
    np.testing.assert_array_equal(val, val2)
    assert split_validation(images[:3], 0.1, seed=0)[1] is None
    assert split_validation(images, 0.0, seed=0)[1] is None
