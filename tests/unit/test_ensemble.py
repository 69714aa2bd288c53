"""Ensembles (what ``--model auto`` keeps on small images): the members' standardised scores averaged;
where that helps and where it must not, and the same contract as one detector (calibrate, save,
load, export with the same scores)."""

from __future__ import annotations

import types

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_ae.config import DetectorConfig, ModelConfig
from anomaly_ae.detector import AutoencoderDetector
from anomaly_ae.ensemble import Ensemble, softplus
from anomaly_ae.errors import ModelError
from tests.unit.test_detector import split_digit

AUTO = DetectorConfig(model=ModelConfig(kind="auto"))


class Seer:
    """A stand-in member that scores images by a fixed rule (no network): `rule(images)` plus a
    scale and an offset of its own, so that the members' raw scores are not comparable."""

    def __init__(self, kind, rule, scale, offset):
        self.config = types.SimpleNamespace(model=types.SimpleNamespace(kind=kind))
        self.rule, self.scale, self.offset = rule, scale, offset
        self.history_, self.collapse_, self.shape_, self.device_ = {"seconds": 1.0}, {}, (8, 8, 1), "cpu"

    def score_samples(self, images):
        return self.offset + self.scale * self.rule(images)

    def score_with_maps(self, images):
        s = self.score_samples(images)
        return s, images / 255.0, np.repeat(s[:, None, None], 8, 1).repeat(8, 2)


def _cases(seed):
    """Normal 8x8 images (noise about 100) and two kinds of anomaly: brighter, or rougher."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(100, 10, (300, 8, 8, 1))
    bright = rng.normal(100, 10, (100, 8, 8, 1)) + 3
    rough = 100 + (rng.normal(0, 10, (100, 8, 8, 1)) * 1.6)
    return [np.clip(a, 0, 255).astype(np.uint8) for a in (normal, bright, rough)]


def _brightness(x):
    return x.reshape(len(x), -1).mean(1) + np.random.default_rng(len(x)).normal(0, 1.0, len(x))


def _roughness(x):
    return x.reshape(len(x), -1).std(1)


def _auroc(det, ok, bad):
    return roc_auc_score(np.r_[np.zeros(len(ok)), np.ones(len(bad))], det.score_samples(np.concatenate([ok, bad])))


def test_the_score_is_the_softplus_of_the_mean_standardised_score():
    normal, bright, rough = _cases(0)
    members = [Seer("ae", _brightness, 1e-3, 5.0), Seer("geometric", _roughness, 40.0, -3.0)]
    det = Ensemble.standardised_on(AUTO, members, normal[:150])
    x = np.concatenate([bright[:5], rough[:5]])
    z = [(m.score_samples(x) - m.score_samples(normal[:150]).mean()) / m.score_samples(normal[:150]).std()
         for m in members]
    np.testing.assert_allclose(det.score_samples(x), softplus(np.mean(z, axis=0)), rtol=1e-12)
    held = np.log(np.expm1(det.score_samples(normal[:150])))  # back to the mean standardised score
    assert abs(held.mean()) < 1e-9 and det.score_samples(x).min() > 0
    scores, recon, maps = det.score_with_maps(x)
    assert maps.shape == (10, 8, 8) and recon.shape == x.shape and np.allclose(scores, det.score_samples(x))


def test_members_that_see_different_anomalies_together_see_both():
    normal, bright, rough = _cases(1)
    members = [Seer("ae", _brightness, 1e-3, 5.0), Seer("geometric", _roughness, 40.0, -3.0)]
    det = Ensemble.standardised_on(AUTO, members, normal[:150])
    ok, bad = normal[150:], np.concatenate([bright, rough])
    alone = [_auroc(m, ok, bad) for m in members]
    together = _auroc(det, ok, bad)
    print(f"AUROC alone {alone}, together {together:.3f}")
    assert together > max(alone) + 0.05


def test_a_blind_member_costs_the_ensemble():
    normal, bright, _ = _cases(2)
    blind = Seer("draem", lambda x: np.random.default_rng(len(x) + 7).normal(0, 1, len(x)), 1.0, 0.0)
    seer = Seer("ae", _brightness, 1.0, 0.0)
    det = Ensemble.standardised_on(AUTO, [seer, blind], normal[:150])
    ok = normal[150:]
    print(f"AUROC seer {_auroc(seer, ok, bright):.3f}, with a blind member {_auroc(det, ok, bright):.3f}")
    assert _auroc(det, ok, bright) < _auroc(seer, ok, bright) - 0.02  # averaging is no free lunch


def test_by_the_highest_standardised_score_a_blind_member_costs_less():
    """What `auto` keeps on large images, where one member is blind to small defects and another to
    large ones: the highest standardised score, not the mean, so the one that sees is not diluted."""
    normal, bright, _ = _cases(2)
    blind = Seer("draem", lambda x: np.random.default_rng(len(x) + 7).normal(0, 1, len(x)), 1.0, 0.0)
    seer = Seer("ae", _brightness, 1.0, 0.0)
    mean = Ensemble.standardised_on(AUTO, [seer, blind], normal[:150])
    highest = Ensemble.standardised_on(AUTO, [seer, blind], normal[:150], combine="max")
    x = bright[:7]
    z = [(m.score_samples(x) - c) / d for m, c, d in zip(highest.members_, highest.centres_, highest.scales_)]
    np.testing.assert_allclose(highest.score_samples(x), softplus(np.max(z, axis=0)), rtol=1e-12)
    ok = normal[150:]
    alone, by_mean, by_max = _auroc(seer, ok, bright), _auroc(mean, ok, bright), _auroc(highest, ok, bright)
    print(f"AUROC seer {alone:.3f}, with a blind member: mean {by_mean:.3f}, highest {by_max:.3f}")
    assert by_max > by_mean + 0.01  # (measured: 0.928 alone, mean 0.846, highest 0.868)
    with pytest.raises(ModelError, match="by mean or max, not 'median'"):
        Ensemble.standardised_on(AUTO, [seer, blind], normal[:150], combine="median")
    with pytest.raises(ModelError, match="the first 1"):
        Ensemble(AUTO, [seer, blind], [0, 0], [1, 1], [1, 1], shrinks=[2, 1])


def test_a_member_that_scores_every_normal_image_alike_does_not_take_over():
    """Its spread on the held-back images is floored (a share of its typical score; 1 when it
    scores them all 0), so a rounding-sized change on other images is not a huge standardised
    score that outweighs every other member."""
    normal, bright, _ = _cases(3)
    held_back, ok = normal[:150], normal[150:]
    seer = Seer("ae", _brightness, 1.0, 0.0)

    def tiny_bump(x):  # 1e-9 more on the brightest images; none of the held-back ones
        return 1e-9 * (x.reshape(len(x), -1).mean(1) > 104)

    assert tiny_bump(held_back).max() == 0 and tiny_bump(bright).max() > 0
    for flat, scale in ((Seer("draem", tiny_bump, 1.0, 0.25), 0.25e-5), (Seer("draem", tiny_bump, 1.0, 0.0), 1.0)):
        det = Ensemble.standardised_on(AUTO, [seer, flat], held_back)
        assert det.scales_[1] == pytest.approx(scale)
        assert det.score_samples(bright).max() < 20
        assert _auroc(det, ok, bright) == pytest.approx(_auroc(seer, ok, bright), abs=0.01)


def test_auto_refuses_a_single_held_back_image():
    from anomaly_ae.errors import ModelError
    from anomaly_ae.selection import fit_auto

    normal, _, _ = _cases(4)
    with pytest.raises(ModelError, match="too few images .* to hold back 2: 1 held back"):
        fit_auto(AutoencoderDetector(AUTO), normal[:8], normal[8:9])


@pytest.fixture(scope="module")
def auto_on_digits(mnist_images):
    # At the default settings (about 100 s on 2 CPU cores). With fewer epochs the discriminative
    # member is undertrained, and it costs the ensemble as a blind member does (below): at 6 epochs,
    # members 0.861 / 0.542 / 0.926 and together 0.796; at 30, 0.923 / 0.896 / 0.948 and 0.955.
    fit, cal, test, y = split_digit(mnist_images, "2")
    det = AutoencoderDetector(AUTO).fit(fit).calibrate(cal)
    return det, test, y


def test_auto_on_small_images_keeps_every_candidate_together(auto_on_digits, tmp_path):
    det, test, y = auto_on_digits
    record = det.meta_["selection"]
    assert isinstance(det, Ensemble) and record["chosen"] == "ensemble"
    assert record["members"] == det.kinds == ["ae", "draem", "geometric"]
    assert 0.5 < record["ensemble"]["shuffled_auroc"] <= 1.0
    together = roc_auc_score(y, det.score_samples(test))
    alone = [roc_auc_score(y, m.score_samples(test)) for m in det.members_]
    print(f"digit 2: members {np.round(alone, 3)}, together {together:.3f}")
    assert together > 0.93 and together > alone[0] and together > np.mean(alone)  # alone[0]: ae, kept before
    det.save(tmp_path / "m")
    back = AutoencoderDetector.load(tmp_path / "m", device="cpu")
    assert isinstance(back, Ensemble) and back.kinds == det.kinds and back.meta_["selection"] == record
    np.testing.assert_allclose(back.score_samples(test[:50]), det.score_samples(test[:50]), rtol=1e-6)
    assert back.threshold_ == det.threshold_ and back.predict(test[:50]).tolist() == det.predict(test[:50]).tolist()
    assert back.layer_summary()["parameters"] == sum(m.layer_summary()["parameters"] for m in det.members_)
    assert back.layer_summary()["input_note"] is None  # every member takes the whole image


def test_an_ensemble_exports_with_the_same_scores(auto_on_digits):
    pytest.importorskip("onnxruntime")
    from anomaly_ae.export import PARITY_RTOL, run_onnx, to_onnx_bytes

    det, test, _ = auto_on_digits
    batch = np.concatenate([test[:40], np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)])
    scores, maps, recon = run_onnx(to_onnx_bytes(det), batch)
    ours, our_recon, our_maps = det.score_with_maps(batch)
    np.testing.assert_allclose(scores, ours, rtol=PARITY_RTOL, atol=0)
    np.testing.assert_allclose(maps, our_maps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(recon, our_recon, rtol=1e-4, atol=1e-5)
