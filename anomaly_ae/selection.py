"""Choosing the model kind without real anomalies (``model.kind = "auto"``).

A user with only good images cannot tell which kind will find their defects. The candidates
are each trained on the same images; then every candidate scores the early-stopping images
as they are and with made-up anomalies (a seed no training run draws). The calibration images
take no part, so the threshold's false-positive guarantee holds for what is kept.

Every candidate that trains is kept, together (`anomaly_ae.ensemble.Ensemble`: their scores, each
standardised on the early-stopping images, averaged). No made-up anomaly measured told which
candidate would find the real anomalies best: the discriminative kind finds nearly every simulated
defect, its own kind of training data, and on small images every kind found nearly all the shuffled
patches of digits; on real defects the order was often the reverse. Together they did better than
any rule that keeps one (measured in bench/README.md on digits, CIFAR-10, inspection images shrunk
to 64 pixels, and the PIPED, ELPV and DeepPCB images at full size).

On large images the candidates are the reconstruction kind (tiled) and the discriminative one, both
at full resolution, and two on the whole image shrunk to at most ``shrink.COARSE_SIDE`` a side
(`anomaly_ae.shrink`), which see defects that span the image: the discriminative kind once more,
and the nearest kind (`anomaly_ae.nearest`: the image against the nearest normal training image,
for parts that look the same from item to item). Their scores are combined by the highest
standardised score, so that the members blind to small defects (the coarse ones) or to large ones
do not dilute the one that sees them.
Images at most ``WHOLE_IMAGE_SIDE`` a side may hold anomalies of the whole content (another digit,
another object), which local defects cannot show: there the reconstruction kind takes the whole
image and the geometric kind is a third candidate. Each candidate's AUROC on simulated defects (and,
on small images, on shuffled patches) is measured and recorded, to say how each sees made-up
anomalies; a candidate that cannot be trained is left out and the others kept.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from anomaly_ae.arrays import check_images, split_validation
from anomaly_ae.config import DetectorConfig, ModelConfig
from anomaly_ae.errors import ModelError
from anomaly_ae.shrink import factor_for, member_label, shrink_images

log = logging.getLogger(__name__)

# Seed of the made-up anomalies that judge the candidates (training draws from other seeds).
SELECTION_SEED = 424_242
# Images at most this many pixels a side are taken whole by the reconstruction candidate, and the
# geometric kind is a candidate too; larger ones are tiled (full resolution, as for small defects in
# large images).
WHOLE_IMAGE_SIDE = 64
# The kinds of the candidates that look at large images shrunk whole (`coarse_candidates`).
COARSE_KINDS = ("draem", "nearest")
TILE, TILED_LATENT = 32, 128
# Fewest seconds of a time budget a candidate gets when the ones before it spent the whole budget
# (it then trains one epoch: a candidate is never left out for time).
MIN_SHARE_S = 1.0
# Fewer held-back images than this give rough standardisations (and judgements): a warning says so.
FEW_IMAGES = 20
# Fewest it can weigh on at all: a member's spread needs two scores (one gives none, and a score
# divided by no spread is meaningless).
MIN_HELD_BACK = 2
# What a choice judged its candidates by ("mean": how earlier versions judged small images, as their
# saved models record it).
JUDGES = {"defects": "simulated defects", "shuffled": "shuffled patches (simulated defects beside, not judged)",
          "mean": "simulated defects and shuffled patches (mean)"}
# How an ensemble's standardised scores become one, in words.
COMBINED = {"mean": "mean", "max": "highest"}


def fit_auto(det, images: np.ndarray, validation: np.ndarray | None, **fit_options):
    """Train every candidate kind; return an `Ensemble` of them all (or `det` made the only one
    that could be trained). Its ``meta_["selection"]`` says why.

    Raises:
        ModelError: too few images to hold any back, or no candidate could be trained.
    """
    if validation is None:
        images, validation = split_validation(images, det.config.train.val_fraction, det.config.train.seed)
    if validation is None or len(validation) < MIN_HELD_BACK:
        raise ModelError("model.kind auto weighs its candidates on held-back training images, but there are too few images "
                         f"(or train.val_fraction is too small) to hold back {MIN_HELD_BACK}: "
                         f"{0 if validation is None else len(validation)} held back. Choose a model kind, or add images.")
    validation = check_images(validation, images.shape[1:])
    chosen, record = choose(type(det), det.config, images, validation, **fit_options)
    log.info("%s", explain(record))
    if isinstance(chosen, type(det)):  # one candidate kept: it becomes `det`
        det.__dict__.update(chosen.__dict__)
        chosen = det
    chosen.meta_ = {**getattr(det, "meta_", {}), "selection": record}
    return chosen


def coarse_candidates(shape: tuple[int, ...], model: ModelConfig) -> list[tuple[ModelConfig, int]]:
    """(the configuration, the shrink factor) of each candidate that looks at whole images shrunk,
    for images of `shape` larger than ``WHOLE_IMAGE_SIDE`` a side; none for smaller ones."""
    if max(shape[:2]) <= WHOLE_IMAGE_SIDE:
        return []
    return [(dataclasses.replace(model, kind=kind, tile=0), factor_for(shape)) for kind in COARSE_KINDS]


def candidates(shape: tuple[int, ...], model: ModelConfig) -> list[ModelConfig]:
    """The model configurations `auto` tries for images of `shape` (h, w, c): the geometric kind only
    on whole images (no tile set) at most ``WHOLE_IMAGE_SIDE`` a side."""
    base = dataclasses.replace(model, kind="ae")
    if max(shape[:2]) > WHOLE_IMAGE_SIDE and not model.tile:
        base = dataclasses.replace(base, tile=TILE, latent_dim=max(model.latent_dim, TILED_LATENT))
    out = [base, dataclasses.replace(model, kind="draem")]
    if max(shape[:2]) <= WHOLE_IMAGE_SIDE and not model.tile:
        out.append(dataclasses.replace(model, kind="geometric"))
    return out


def auroc_against(det, images: np.ndarray, anomalous: np.ndarray) -> float:
    """AUROC of `det` on `images` (label 0) against `anomalous` (1), e.g. made-up anomalies of them."""
    from anomaly_ae.metrics import auroc

    scores = np.concatenate([det.score_samples(images), det.score_samples(anomalous)])
    return float(auroc(np.r_[np.zeros(len(images)), np.ones(len(anomalous))], scores))


def shuffled_auroc(det, images: np.ndarray, seed: int = SELECTION_SEED) -> float:
    """AUROC of `det` on `images` (label 0) against the same images with their patches shuffled (1)."""
    from anomaly_ae.simulate import shuffled_patches

    return auroc_against(det, images, shuffled_patches(images, seed))


def synthetic_auroc(det, images: np.ndarray, seed: int = SELECTION_SEED, strength: float = 1.0,
                    fills: tuple[str, ...] | None = None) -> float:
    """AUROC of `det` on `images` (label 0) against the same images with simulated defects (1),
    each defect's change to the image scaled by `strength` (1: as simulated; 0.25: a quarter as deep),
    filled with the given kinds of `anomaly_ae.simulate.FILLS` (None: all)."""
    import torch

    from anomaly_ae.simulate import FILLS, synthesize

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    faulty, _ = synthesize(x, torch.Generator().manual_seed(seed), p=1.0, fills=FILLS if fills is None else fills)
    faulty = torch.lerp(x, faulty, strength)
    faulty = (faulty * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return auroc_against(det, images, faulty)


def choose(detector_class, config: DetectorConfig, images: np.ndarray, validation: np.ndarray, *,
           progress=None, state_path=None, resume: bool = False):
    """(the chosen fitted detector, a record of every candidate) for ``model.kind = "auto"``;
    each candidate is a `detector_class` (the detector passes its own class: no import back)."""
    if len(validation) < FEW_IMAGES:
        log.warning("auto weighs its candidates on only %d held-back images: each one's share of the score "
                    "may be off; pick a kind (model.kind, --model), or add images", len(validation))
    models = [(m, 1) for m in candidates(images.shape[1:], config.model)]
    coarse = coarse_candidates(images.shape[1:], config.model)
    models += coarse
    whole = any(m.kind == "geometric" for m, _ in models)  # judged on anomalies of the whole image
    # A time budget is the candidates' epochs (choosing each one's score and judging it come on
    # top). The shrunk candidates, the cheapest (the nearest kind trains nothing), train first; each
    # gets an equal part of the training time left, so that what one leaves unused (stopped early,
    # fewer epochs than fit, nothing to train) goes to the next.
    order = sorted(range(len(models)), key=lambda i: (models[i][1] == 1, models[i][0].kind != "nearest"))
    budget_s, trained_s = 60 * config.train.max_minutes, 0.0
    done, failed = {}, {}
    for n, i in enumerate(order):
        model, k = models[i]
        label = member_label(model.kind, images.shape[1:], k)
        named = {"kind": model.kind, "tile": model.tile, **({"shrink": k, "label": label} if k > 1 else {})}
        train = config.train
        if budget_s:
            share_s = max(budget_s - trained_s, MIN_SHARE_S) / (len(models) - n)
            train = dataclasses.replace(train, max_minutes=share_s / 60)
            log.info("candidate %s: training for at most %.3g of the %.3g minutes", label, train.max_minutes,
                     config.train.max_minutes)
        cfg = dataclasses.replace(config, model=model, train=train)
        t0 = time.perf_counter()
        try:
            det = detector_class(cfg).fit(shrink_images(images, k), shrink_images(validation, k),
                                         progress=_labelled(progress, label), resume=resume,
                                         state_path=_state_for(state_path, model.kind + ("-coarse" if k > 1 else "")))
        except ModelError as exc:  # e.g. a collapsed candidate: the others may still do
            trained_s += time.perf_counter() - t0  # its epochs and what it did after them: all that is known
            log.warning("candidate %s left out: %s", label, exc)
            failed[i] = {**named, "synthetic_auroc": None, "error": str(exc)}
            continue
        trained_s += det.history_["seconds"]  # its epochs alone: what the budget bounds
        if det.history_.get("still_improving"):  # the warning just logged named the share, not the budget
            log.warning("the budget above was candidate %s's share of the %.3g minutes (--max-minutes, train.max_minutes) "
                        "that auto's %d candidates train in", label, config.train.max_minutes, len(models))
        defects = synthetic_auroc(det, shrink_images(validation, k))
        shuffled = shuffled_auroc(det, validation) if whole else None
        record = {**named, "synthetic_auroc": defects, "shuffled_auroc": shuffled,
                  "judged": defects if shuffled is None else shuffled,
                  "seconds": time.perf_counter() - t0}
        log.info("candidate %s: %s on %d held-back images", label, describe(record), len(validation))
        done[i] = (det, record, k)
    # Kept and recorded in the candidates' own order: the first member (the reconstruction kind) at
    # full size gives the ensemble's reconstructions.
    tried = [done[i] for i in sorted(done)]
    failed = [failed[i] for i in sorted(failed)]
    if not any(k == 1 for _, _, k in tried):  # the shrunk one alone cannot give full-size maps
        raise ModelError("model.kind auto: no candidate could be trained at full size: "
                         + "; ".join(f"{describe(f)}: {f['error']}" for f in failed))
    judge = "shuffled" if whole else "defects"
    record = {"candidates": [r for _, r, _ in tried] + failed, "judge": judge, "n_images": len(validation)}
    if len(tried) == 1:
        record.update(chosen=tried[0][1]["kind"], rule="the only candidate that could be trained")
        return tried[0][0], record
    from anomaly_ae.ensemble import Ensemble

    combine = "max" if coarse else "mean"
    ensemble = Ensemble.standardised_on(config, [d for d, _, _ in tried], validation, shrinks=[k for _, _, k in tried],
                                        combine=combine)
    record.update(chosen="ensemble", members=[r.get("label", r["kind"]) for _, r, _ in tried], combine=combine,
                  ensemble={"shuffled_auroc": shuffled_auroc(ensemble, validation) if whole else None,
                            "synthetic_auroc": synthetic_auroc(ensemble, validation)},
                  rule=f"every candidate kept: the {COMBINED[combine]} of their scores, each standardised on the "
                       f"{len(validation)} held-back images")
    return ensemble, record


def chosen_text(selection: dict) -> str:
    """What a recorded choice kept: 'ae', or 'ae + draem + geometric together' (an ensemble)."""
    if selection.get("chosen") == "ensemble":
        return " + ".join(selection["members"]) + " together"
    return str(selection["chosen"])


def explain(selection: dict) -> str:
    """'auto chose ae (AUROC on simulated defects in 40 held-back images: ae 0.912 (85 s), draem
    ...)': what a recorded choice kept, and every candidate's figures (an ensemble's own beside)."""
    tried = ", ".join(describe(c) for c in selection["candidates"])
    together = together_auroc(selection)
    if together is not None:
        how = "the highest taken" if selection.get("combine") == "max" else "averaged"
        tried += f"; together {together:.3f}: their scores, each standardised on the held-back images, {how}"
    return f"auto chose {chosen_text(selection)} ({judged_on(selection)}: {tried})"


def together_auroc(selection: dict) -> float | None:
    """The kept ensemble's AUROC on what the candidates were judged by (None: one candidate kept)."""
    whole = selection.get("ensemble")
    return whole and whole["shuffled_auroc" if selection.get("judge") == "shuffled" else "synthetic_auroc"]


def judged_on(selection: dict) -> str:
    """What a recorded choice judged the candidates by, e.g. 'AUROC on simulated defects in 40
    held-back images'."""
    judge = selection.get("judge")
    if judge is None:  # recorded before the judge was: the mean where shuffled patches were measured
        judge = "mean" if any(c.get("shuffled_auroc") is not None for c in selection["candidates"]) else "defects"
    return f"AUROC on {JUDGES[judge]} in {selection['n_images']} held-back images"


def describe(candidate: dict) -> str:
    """'kind 0.912 (85 s)': the candidate's AUROC on simulated defects and its seconds to train and
    be judged; 'kind 0.788 (defects 0.912, shuffled 0.788; 85 s)' where shuffled patches were
    measured too (`judged_on` says which the first figure is); 'kind left out' for a candidate that
    could not be trained."""
    if candidate.get("synthetic_auroc") is None:
        return f"{candidate.get('label', candidate['kind'])} left out"
    parts = []
    if candidate.get("shuffled_auroc") is not None:
        parts.append(f"defects {candidate['synthetic_auroc']:.3f}, shuffled {candidate['shuffled_auroc']:.3f}")
    if candidate.get("seconds") is not None:
        parts.append(f"{candidate['seconds']:.0f} s")
    return f"{candidate.get('label', candidate['kind'])} {_judged(candidate):.3f}" + (f" ({'; '.join(parts)})" if parts else "")


def _judged(rec: dict) -> float:
    return rec.get("judged", rec["synthetic_auroc"])  # models chosen before shuffled patches: defects only


def _labelled(progress, kind: str):
    if progress is None:
        return None
    return lambda done, total, **fields: progress(done, total, model=kind, **fields)


def _state_for(state_path, kind: str):
    return None if state_path is None else state_path.with_name(f"{state_path.stem}-{kind}{state_path.suffix}")
