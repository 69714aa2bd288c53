"""Several trained detectors scored as one: what ``model.kind = "auto"`` keeps.

Each member scores an image its own way, on its own scale. The ensemble's score is the mean of the
members' scores, each standardised by its mean and spread on held-back normal images (never the
calibration images: the ensemble's conformal threshold holds as any detector's does), through a
softplus (the order kept, every score positive: exported scores are checked relatively). Its
anomaly map is the mean of the members' maps, each divided by its typical peak on the same
held-back images; its reconstruction is the first member's (the reconstruction kind's).

A member may look at the whole image shrunk (`anomaly_ae.shrink`: its ``shrink`` factor, 1 for full
size): it scores the shrunk images, and its map is grown back to the full size. The members' scores
are combined by their mean, or by their maximum (``combine``): a member blind to some anomalies
dilutes the others' view of them in a mean, not in a maximum.

Why not keep the best candidate alone: no made-up anomaly measured tells which candidate will find
the real anomalies best, and the mean of all of them did better than every choice rule measured
(bench/README.md).
"""

from __future__ import annotations

import numpy as np

from anomaly_ae.calibrated import DETECTOR_KEYS, Calibrated
from anomaly_ae.errors import ModelError
from anomaly_ae.shrink import grow_maps, member_label, member_tag, shrink_images, shrunk_shape

# Smallest spread a member's score (and map) is divided by, absolute and, for the score, as a share
# of the member's typical score: a member that scores every held-back image (nearly) alike must
# not turn its rounding into the ensemble's whole score.
MIN_SPREAD = 1e-12
MIN_RELATIVE_SPREAD = 1e-5  # about a hundred times float32 rounding
# The checkpoint keys an ensemble writes itself (the rest of a checkpoint is metadata).
ENSEMBLE_KEYS = DETECTOR_KEYS | {"members", "standardisation"}
COMBINE = ("mean", "max")


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


class Ensemble(Calibrated):
    """Fitted detectors (`members_`) whose standardised scores are averaged; the same contract as
    `AutoencoderDetector` (calibrate, score_samples, score_with_maps, predict, save, load)."""

    CHECKPOINT_KEYS = ENSEMBLE_KEYS

    def __init__(self, config, members: list, centres, scales, map_scales, shrinks=None, combine: str = "mean"):
        if not members:
            raise ModelError("An ensemble needs at least one member.")
        if combine not in COMBINE:
            raise ModelError(f"An ensemble combines its members' scores by {' or '.join(COMBINE)}, not {combine!r}.")
        self.config = config
        self.members_ = list(members)
        self.centres_, self.scales_, self.map_scales_ = (np.asarray(v, dtype=np.float64).reshape(len(members))
                                                         for v in (centres, scales, map_scales))
        self.shrinks_ = [int(k) for k in (shrinks or [1] * len(members))]
        if len(self.shrinks_) != len(members) or min(self.shrinks_) < 1 or self.shrinks_[0] != 1:
            raise ModelError(f"An ensemble's shrink factors {self.shrinks_} do not fit its {len(members)} members "
                             "(one each, 1 or more, the first 1).")
        self.combine_ = combine
        first = self.members_[0]
        self.shape_, self.device_, self.tile_ = first.shape_, first.device_, None
        self.history_ = {**first.history_, "seconds": float(sum(m.history_.get("seconds", 0.0) for m in members))}
        self.collapse_ = dict(first.collapse_)
        self.created_ = getattr(first, "created_", None)

    @classmethod
    def standardised_on(cls, config, members: list, held_back: np.ndarray, shrinks=None,
                        combine: str = "mean") -> Ensemble:
        """The ensemble of `members` standardised on `held_back` normal images (not calibration's);
        `shrinks`: each member's shrink factor (None: all at full size)."""
        centres, scales, peaks = [], [], []
        for m, k in zip(members, shrinks or [1] * len(members)):
            scores, peak = _scores_and_peaks(m, shrink_images(held_back, k))
            centres.append(scores.mean())
            spread = max(float(scores.std()), MIN_RELATIVE_SPREAD * abs(float(scores.mean())))
            scales.append(spread if spread > MIN_SPREAD else 1.0)  # all zero: its scores as they are
            peaks.append(max(float(peak.mean()), MIN_SPREAD))
        return cls(config, members, centres, scales, peaks, shrinks, combine)

    @property
    def kinds(self) -> list[str]:
        return [m.config.model.kind for m in self.members_]

    @property
    def labels(self) -> list[str]:
        """Each member's kind, and for a shrunk one the size it looks at (`member_label`)."""
        return [member_label(k, self.shape_, f) for k, f in zip(self.kinds, self.shrinks_)]

    @property
    def kind(self) -> str:
        return "ensemble"

    @property
    def score_method(self) -> str:
        return "ensemble"

    def _combine(self, member_scores: list[np.ndarray]) -> np.ndarray:
        z = [(s - c) / d for s, c, d in zip(member_scores, self.centres_, self.scales_)]
        return softplus(np.max(z, axis=0) if self.combine_ == "max" else np.mean(z, axis=0))

    def _inputs(self, images: np.ndarray) -> list[np.ndarray]:
        """The images each member scores: as they are, or shrunk."""
        from anomaly_ae.arrays import check_images

        if max(self.shrinks_) > 1:
            images = check_images(images, self.shape_)
        return [shrink_images(images, k) for k in self.shrinks_]

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        """Anomaly score per image (higher = more anomalous)."""
        return self._combine([m.score_samples(x) for m, x in zip(self.members_, self._inputs(images))])

    def score_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, the first member's reconstructions (n,h,w,c), the members' mean map (n,h,w))."""
        parts = [m.score_with_maps(x) for m, x in zip(self.members_, self._inputs(images))]
        h, w = self.shape_[:2]
        maps = np.mean([grow_maps(p[2], k, h, w) / s for p, k, s in zip(parts, self.shrinks_, self.map_scales_)],
                       axis=0).astype(np.float32)
        return self._combine([p[0] for p in parts]), parts[0][1], maps

    def encode(self, images: np.ndarray) -> np.ndarray:
        raise ModelError("This model is an ensemble of several kinds: it has no single code per image.")

    def layer_summary(self) -> dict:
        """Every member's layer table, one after the other (each layer named after its member: its
        kind, or kind@WxH for a shrunk one); ``input_note`` says which members' tables are for one
        tile of the image or the image shrunk (None: none are)."""
        parts = [m.layer_summary() for m in self.members_]
        size = ["x".join(map(str, p["input"])) for p in parts]
        names = [member_tag(kind, self.shape_, k) for kind, k in zip(self.kinds, self.shrinks_)]
        layers = [{**row, "layer": f"{name}.{row['layer']}"} for name, p in zip(names, parts) for row in p["layers"]]
        partial = [f"{kind}'s for the whole image shrunk to {sz}" if k > 1 else f"{kind}'s for one {sz} part of the image"
                   for kind, p, k, sz in zip(self.kinds, parts, self.shrinks_, size)
                   if list(p["input"]) != list(self.shape_)]
        return {"layers": layers, "input": list(self.shape_), "parameters": sum(p["parameters"] for p in parts),
                "input_note": "; ".join(partial) or None}

    # -- persistence ---------------------------------------------------------------------
    def to_checkpoint(self) -> dict:
        """One checkpoint: every member's weights (``state_dict`` keys prefixed by its index), the
        members' configurations and the standardisation, the ensemble's threshold and metadata."""
        weights = {f"{i}.{k}": v.detach().cpu() for i, m in enumerate(self.members_)
                   for k, v in m.model_.state_dict().items()}
        return self.checkpoint_with(
            weights,
            members=[{"config": m.config.to_dict(), "history": m.history_, "collapse": dict(m.collapse_),
                      **({"shrink": k} if k > 1 else {})} for m, k in zip(self.members_, self.shrinks_)],
            standardisation={"centres": self.centres_.tolist(), "scales": self.scales_.tolist(),
                             "map_scales": self.map_scales_.tolist(),
                             **({"combine": self.combine_} if self.combine_ != "mean" else {})})

    @classmethod
    def from_checkpoint(cls, ckpt: dict, member_class, device: str = "auto") -> Ensemble:
        """The ensemble a checkpoint holds, its members restored as `member_class` detectors.

        Raises:
            ModelError: the checkpoint's members, weights or standardisation do not fit together.
        """
        from anomaly_ae.config import DetectorConfig
        from anomaly_ae.errors import ConfigError

        try:
            config = DetectorConfig.from_dict(ckpt["config"])
            std = ckpt["standardisation"]
            members, shrinks = [], []
            for i, entry in enumerate(ckpt["members"]):
                prefix = f"{i}."
                weights = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
                shrinks.append(int(entry.get("shrink", 1)))
                shape = shrunk_shape(tuple(ckpt["image_shape"]), shrinks[-1])
                m = member_class.restore(entry["config"], shape, weights, device)
                m.history_, m.collapse_ = entry["history"], entry.get("collapse", {})
                members.append(m)
            det = cls(config, members, std["centres"], std["scales"], std["map_scales"], shrinks,
                      std.get("combine", "mean"))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelError(f"The checkpoint's ensemble is damaged ({type(exc).__name__}: {exc}). "
                             "Retrain the model.") from None
        det.restore_calibration(ckpt)
        return det

    def _require_fitted(self) -> None:
        for m in self.members_:
            m._require_fitted()


def _scores_and_peaks(det, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(scores, each map's largest value) of `images` by `det`, a batch at a time."""
    scores, peaks = [], []
    for i in range(0, len(images), batch):
        s, _, m = det.score_with_maps(images[i: i + batch])
        scores.append(s)
        peaks.append(m.reshape(len(m), -1).max(axis=1))
    return np.concatenate(scores), np.concatenate(peaks)
