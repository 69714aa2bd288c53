"""Choosing how a reconstruction model's image score is drawn (``score.method = "auto"``).

The mean error over the image (``mse``) finds anomalies whose whole content is wrong (another
object, another digit); the mean of the top share of the smoothed error map (``topk``) finds small
local defects that the image-wide mean would drown. Which one a user needs depends on anomalies
they do not have, so the choice is measured on made-up ones: the held-back normal images (the
early-stopping images, never the calibration ones) against the same images with their 4x4 patches
shuffled (the parts right, the whole wrong) and against the same images with simulated local
defects (`anomaly_ae.simulate`). The method with the higher mean AUROC over both is kept; a tie
keeps ``topk``.

Measured (bench/README.md, "Choosing the score method"): it picks ``mse`` on CIFAR-10 classes
(+0.04 to +0.07 real AUROC over ``topk``), ``topk`` on a PIPED paper type where ``topk`` is 0.06
ahead, and no choice lost more than 0.001 on the seven tasks measured.
"""

from __future__ import annotations

import numpy as np

CANDIDATES = ("mse", "topk")
SEED = 515_151  # of the shuffles and the simulated defects (training draws from other seeds)
MIN_IMAGES = 4  # fewer held-back images than this cannot judge: topk is kept


def resolve(det, validation: np.ndarray | None) -> None:
    """Set a fitted detector's ``score.method = "auto"`` to the method `choose` measures on the
    held-back `validation` images (``topk`` for the discriminative kind, whose map marks defects,
    and when too few images were held back); the record goes to ``det.meta_["score_choice"]``."""
    import dataclasses
    import logging

    if det._segments or validation is None or len(validation) < MIN_IMAGES:
        record = {"chosen": "topk", "judge": None, "n_images": 0 if validation is None else len(validation),
                  "why": "the discriminative kind scores its defect map" if det._segments else
                         f"fewer than {MIN_IMAGES} held-back images to judge on"}
    else:
        record = choose(det, np.asarray(validation))
    det.config = dataclasses.replace(det.config, score=dataclasses.replace(det.config.score, method=record["chosen"]))
    det.meta_ = {**getattr(det, "meta_", {}), "score_choice": record}
    logging.getLogger(__name__).info("score method: %s (%s)", record["chosen"], describe(record))


def choose(det, images: np.ndarray) -> dict:
    """The score method `det` (fitted, a reconstruction kind) should use, judged on the held-back
    normal `images`: {"chosen", "judge": {method: {"shuffled", "defects", "mean"}}, "n_images"}."""
    import dataclasses

    from anomaly_ae.config import ScoreConfig
    from anomaly_ae.selection import shuffled_auroc, synthetic_auroc

    original = det.config
    judge = {}
    try:
        for method in CANDIDATES:
            det.config = dataclasses.replace(original, score=dataclasses.replace(
                original.score if original.score.method != "auto" else ScoreConfig(), method=method))
            a = shuffled_auroc(det, images, seed=SEED)
            b = synthetic_auroc(det, images, seed=SEED)
            judge[method] = {"shuffled": a, "defects": b, "mean": (a + b) / 2}
    finally:
        det.config = original
    chosen = "mse" if judge["mse"]["mean"] > judge["topk"]["mean"] else "topk"
    return {"chosen": chosen, "judge": judge, "n_images": int(len(images))}


def describe(record: dict) -> str:
    """'mse 0.72, topk 0.67 on 40 held-back images' (or why nothing was judged)."""
    if not record.get("judge"):
        return record.get("why", "not judged")
    return (", ".join(f"{m} {v['mean']:.3f}" for m, v in record["judge"].items())
            + f" on {record['n_images']} held-back images (shuffled patches and simulated defects)")
