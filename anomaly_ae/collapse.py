"""Has a model collapsed? A reconstruction autoencoder that draws (nearly) one image whatever the
input scores only how far an image lies from that one image."""

from __future__ import annotations

import logging

import numpy as np

from anomaly_ae.errors import ModelError

log = logging.getLogger(__name__)

# A model whose reconstructions vary across images by less than this share of the inputs'
# own variation outputs (nearly) one image whatever the input: it has collapsed.
COLLAPSE_SPREAD = 0.05
# ...and whose reconstructions beat the mean image by less than this share of its error.
COLLAPSE_GAIN = 0.05
# Images whose pixels vary across the set by less than this (std, on a 0..1 scale) are "all
# alike": measured 0.02-0.07 on paper-surface images, 0.17 on handwritten digits.
ALIKE_SPREAD = 0.08
# Pixels of the sample the collapse check reconstructs (512 images of 128 x 128; fewer when larger).
COLLAPSE_SAMPLE_PIXELS = 512 * 128 * 128


def not_checked() -> dict:
    """The record of a model the check does not apply to (or too few images to check)."""
    return {"spread_ratio": None, "gain_over_mean": None, "input_spread": None, "near_constant": False,
            "collapsed": False}


def measure(batches, images: np.ndarray, train_mean: np.ndarray | None = None) -> dict:
    """Is the model just drawing one image whatever the input?

    Near-constant output shows two ways together: reconstructions vary across images much
    less than the inputs do, and they beat the training images' mean image by little. That
    is a collapse when the images themselves vary (objects, digits); on images that are all
    alike (a uniform surface) the mean image is a fair reconstruction and deviations from it
    are what the scores should measure, so it is only noted.
    """
    sample = images[: int(np.clip(COLLAPSE_SAMPLE_PIXELS // (images.shape[1] * images.shape[2]), 16, 512))]
    if len(sample) < 2:
        return not_checked()
    x_all = sample.astype(np.float32) / 255.0
    mean = x_all.mean(axis=0) if train_mean is None else train_mean
    # Batch by batch: per-pixel sums for the spread of the reconstructions, and both errors.
    r_sum = r_sq = 0.0
    err_model = err_mean = 0.0
    lo = 0  # batches may hold fewer than SCORE_BATCH images (tiled models)
    for _, recon, _ in batches(sample, details=True):
        x = x_all[lo: lo + len(recon)]
        lo += len(recon)
        r64 = recon.astype(np.float64)
        r_sum, r_sq = r_sum + r64.sum(axis=0), r_sq + (r64 ** 2).sum(axis=0)
        err_model += float(((x - recon) ** 2).sum())
        err_mean += float(((x - mean) ** 2).sum())
    n = len(sample)
    spread_out = float(np.sqrt(np.maximum(r_sq / n - (r_sum / n) ** 2, 0.0)).mean())
    spread_in = float(x_all.std(axis=0).mean())
    ratio = spread_out / spread_in if spread_in > 1e-8 else 1.0
    gain = 1.0 - err_model / err_mean if err_mean > 1e-12 else 1.0
    near_constant = bool(ratio < COLLAPSE_SPREAD and gain < COLLAPSE_GAIN)
    return {"spread_ratio": ratio, "gain_over_mean": gain, "input_spread": spread_in,
            "near_constant": near_constant, "collapsed": near_constant and spread_in >= ALIKE_SPREAD}


def judge(report: dict, allow: bool) -> None:
    """Note near-constant output on images that are all alike; refuse a collapsed model unless `allow`.

    Raises:
        ModelError: the model collapsed and ``train.allow_collapsed`` is off.
    """
    if report["near_constant"] and not report["collapsed"]:
        log.warning("the reconstructions are close to one image for every input; the training images are "
                    "much alike (a uniform surface?), so scores measure how far an image departs from the "
                    "typical one")
    if report["collapsed"] and not allow:
        raise ModelError(
            "The model collapsed: its reconstructions barely depend on the input "
            f"(spread {report['spread_ratio']:.3f} of the inputs') and are no better than the mean image "
            f"(gain {report['gain_over_mean']:.3f}), so its scores would only measure distance to one "
            "average image. Try more train.epochs, a larger model.latent_dim, a lower train.lr or more "
            "normal images; set train.allow_collapsed to keep it anyway."
        )
