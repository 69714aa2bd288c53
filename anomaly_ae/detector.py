"""The detector: fit on normal images, calibrate a threshold, score, predict, save and load.

    det = AutoencoderDetector(DetectorConfig()).fit(normal_train)  # early stopping on 10% of normal_train
    det.calibrate(held_out, target_fpr=0.01)   # sets threshold_ (held_out: normals never trained on)
    det.score_samples(images)                   # higher = more anomalous
    det.predict(images)                         # 1 = anomaly, 0 = normal

Images are uint8 arrays (n, height, width, channels). Fitted attributes end in ``_``. The threshold,
flags, p-values and saving are `anomaly_ae.calibrated.Calibrated`'s, shared with the ensembles that
``model.kind = "auto"`` may return (`anomaly_ae.ensemble`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator

import numpy as np
import torch

from anomaly_ae import collapse
from anomaly_ae.arrays import check_images, split_validation
from anomaly_ae.calibrated import Calibrated
from anomaly_ae.config import DetectorConfig
from anomaly_ae.device import as_float, autocast, resolve_device, to_device_uint8
from anomaly_ae.errors import ConfigError, ModelError
from anomaly_ae.measures import anomaly_map, blur, image_scores
from anomaly_ae.models import build_model
from anomaly_ae.runid import utc_now
from anomaly_ae.tiles import TILES_PER_IMAGE, grid_tiles, is_tiled, reconstruct, tile_shape
from anomaly_ae.train import History, evaluate, train

log = logging.getLogger(__name__)

SCORE_BATCH = 256
# Pixels per scoring batch of the discriminative kind (whole images through two U-Nets).
SEGMENT_BATCH_PIXELS = 2**20
# Side of the random crops the discriminative kind trains on when ``model.tile`` is not set:
# large enough for a defect with some surface around it, small enough for CPU training.
DRAEM_CROP = 64
# ...and how many it draws from each image in an epoch (each crop gets its own simulated defect).
DRAEM_CROPS_PER_IMAGE = 2
# Simulated defects that judge each epoch of the discriminative kind, at the least: with 16 held-out
# images (one defect each) the chosen epoch on generated surfaces scored AUROC 0.80-0.995 by seed.
MIN_VAL_DEFECTS = 128
# Its image score averages the top ``score.top_fraction`` of this many pixels (1% -> 3 pixels): on
# generated surfaces with one-pixel scratches the peak of the map scored AUROC 0.79-0.81 against
# 0.72-0.74 for 1% of a 64-pixel crop.
DRAEM_SCORE_AREA = 256




class AutoencoderDetector(Calibrated):
    """A convolutional autoencoder with a calibrated reconstruction-error threshold."""


    def __init__(self, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig()

    # -- fitting -------------------------------------------------------------------------
    def fit(self, images: np.ndarray, validation: np.ndarray | None = None, *, progress=None,
            state_path=None, resume: bool = False) -> AutoencoderDetector:
        """Train on normal images. Early stopping watches `validation` (held-out normals) or, when
        it is None, a seeded ``train.val_fraction`` share of `images` kept out of training. Never
        pass the images the threshold will be calibrated on: choosing the epoch on them would bias
        their scores low and the realised false-positive rate above the target.

        Raises:
            DataError: images of the wrong shape or type.
            ModelError: training diverged, or the model collapsed to one output (unless
                ``train.allow_collapsed``).
        """
        images = check_images(images)
        cfg = self.config
        if cfg.model.kind == "auto":
            from anomaly_ae.selection import fit_auto

            return fit_auto(self, images, validation, progress=progress, state_path=state_path, resume=resume)
        self.device_ = resolve_device(cfg.train.device)
        self.shape_ = tuple(int(v) for v in images.shape[1:])
        self.tile_ = self._scoring_tile()
        # Widths left at 0 are sized from the network's input here, and saved with the model.
        self.config = cfg = dataclasses.replace(cfg, model=cfg.model.resolved(*self._model_input()[:2]))
        torch.manual_seed(cfg.train.seed)
        m = cfg.model
        self.model_ = self._build_model().to(self.device_)
        if validation is None:
            images, validation = split_validation(images, cfg.train.val_fraction, cfg.train.seed)
        data = to_device_uint8(images, self.device_)
        val = to_device_uint8(check_images(validation, self.shape_), self.device_) if validation is not None else None
        tile = self._training_tile()
        if val is not None and tile:
            val = grid_tiles(val, *tile)
        if val is not None and self._segments and len(val) < MIN_VAL_DEFECTS:
            # Each held-out image carries one simulated defect a pass: repeat the few there are.
            val = val.repeat(-(-MIN_VAL_DEFECTS // len(val)), 1, 1, 1)
        if self._remembers:
            self.history_ = self._remember(data, val)
        else:
            self.history_ = train(self.model_, data, val, m, cfg.train, progress=progress,
                                  state_path=state_path, resume=resume, tile=tile,
                                  crops_per_image=DRAEM_CROPS_PER_IMAGE if self._segments else TILES_PER_IMAGE).to_dict()
        if self._orients:  # its score's standardisation: the held-back images (never calibration's), if enough
            from anomaly_ae.geometric import MIN_STATS_IMAGES

            held = val if val is not None and len(val) >= MIN_STATS_IMAGES else data
            self.model_.eval()
            with torch.no_grad(), autocast(self.device_):
                self.model_.fit_score_stats(as_float(held[i: i + SCORE_BATCH])
                                            for i in range(0, len(held), SCORE_BATCH))
        # The weights' training time, kept by later saves (runs scored before stay the model's own).
        self.created_ = utc_now()
        train_mean = images.mean(axis=0, dtype=np.float64).astype(np.float32) / 255.0
        # The discriminative kind scores its defect map, not its reconstruction: a reconstruction
        # near one image does not make its scores distances to one image.
        self.collapse_ = (collapse.not_checked() if self._segments else
                          self._collapse_check(validation if validation is not None else images, train_mean))
        collapse.judge(self.collapse_, cfg.train.allow_collapsed)
        if cfg.score.method == "auto" and self._orients:  # its own score; the map is the mean error
            self.config = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, method="mse"))
        elif cfg.score.method == "auto":
            from anomaly_ae import scorechoice

            scorechoice.resolve(self, validation)
        return self

    def _remember(self, data: torch.Tensor, val: torch.Tensor | None) -> dict:
        """The nearest kind's "training": keep the images (uint8 on the device); its history is one
        pass whose losses are the mean squared error to the nearest kept image, of up to
        SCORE_BATCH training images and of the held-out ones."""
        t0 = time.perf_counter()
        kept = self.model_.remember(data, self.config.train.seed)
        _, ch, cw = self.model_.compared
        shrunk = {"compared_at": [ch, cw]} if self.model_.factor > 1 else {}
        if shrunk:
            log.info("the nearest kind compares the images shrunk to %dx%d, where its memory holds %d of them",
                     cw, ch, kept)
        if kept < len(data):
            from anomaly_ae import nearest

            log.info("the nearest kind keeps a seeded draw of %d of the %d training images (at most %d pixel values)",
                     kept, len(data), nearest.MAX_BANK_VALUES)
        held = val if val is not None else data[:SCORE_BATCH]
        history = History(train_loss=[evaluate(self.model_, data[:SCORE_BATCH], SCORE_BATCH)],
                          val_loss=[evaluate(self.model_, held, SCORE_BATCH)], device=str(self.device_))
        history.seconds = time.perf_counter() - t0
        return {**history.to_dict(), "kept": kept, **shrunk}  # no epochs: how many images it keeps instead

    def _model_input(self) -> tuple[int, int, int]:
        """(height, width, channels) of the network's input: a tile for tiled models."""
        th, tw = self._training_tile() or self.shape_[:2]
        return th, tw, self.shape_[2]

    def _build_model(self):
        """The network for this configuration and image shape (tile-sized for tiled models)."""
        if self._orients:
            from anomaly_ae.geometric import GeometricAutoencoder

            return build_model(self.config.model, self._model_input(), GeometricAutoencoder)
        if self._remembers:
            from anomaly_ae.nearest import NearestNormal

            return build_model(self.config.model, self._model_input(), NearestNormal)
        return build_model(self.config.model, self._model_input())

    def layer_summary(self) -> dict:
        """The network's layer table for one input (a tile, for tiled models; see
        `models.layer_table`): ``layers``, ``parameters`` (in all) and ``input`` (h, w, c)."""
        from anomaly_ae.models import layer_table

        shape = self._model_input()
        return {"layers": layer_table(self.model_, shape), "input": list(shape),
                "parameters": sum(p.numel() for p in self.model_.parameters())}

    def _scoring_tile(self) -> tuple[int, int] | None:
        """(height, width) of the tiles the model reconstructs images from, or None for whole images
        (the discriminative kind, being fully convolutional, always scores whole images)."""
        if self._segments or self._orients or self._remembers or not is_tiled(self.shape_, self.config.model.tile):
            return None
        return tile_shape(self.shape_, self.config.model.tile)

    @property
    def _segments(self) -> bool:
        """True for the discriminative kind: its anomaly map is a defect probability, and being
        fully convolutional it trains on crops but scores whole images at once."""
        return self.config.model.kind == "draem"

    @property
    def _orients(self) -> bool:
        """True for the geometric kind: its image score is its own (`GeometricAutoencoder.image_scores`)."""
        return self.config.model.kind == "geometric"

    @property
    def _remembers(self) -> bool:
        """True for the nearest kind: no network, its reconstruction is the nearest training image."""
        return self.config.model.kind == "nearest"

    @property
    def kind(self) -> str:
        """The model kind, as run.json and an export record it."""
        return self.config.model.kind

    @property
    def score_method(self) -> str:
        """The image score's name, as run.json and an export record it: the geometric kind's own, or
        ``score.method``."""
        return "geometric" if self._orients else self.config.score.method

    def _training_tile(self) -> tuple[int, int] | None:
        """(height, width) of the random crops training draws, or None for whole images."""
        if not self._segments:
            return self.tile_
        size = self.config.model.tile or DRAEM_CROP
        return tile_shape(self.shape_, size) if is_tiled(self.shape_, size) else None

    def _score_area(self) -> int:
        """Pixels that ``score.top_fraction`` is a share of: a tile's area (so a defect of a given
        size weighs the same whatever the image size), or for the discriminative kind a fixed
        DRAEM_SCORE_AREA (its map is near zero off a defect, so the score is the defect's peak)."""
        if self._segments:
            return DRAEM_SCORE_AREA
        th, tw = self.tile_ or self.shape_[:2]
        return th * tw

    def _collapse_check(self, images: np.ndarray, train_mean: np.ndarray | None = None) -> dict:
        """How close the model comes to drawing one image whatever the input (anomaly_ae.collapse)."""
        return collapse.measure(self._batches, images, train_mean)

    # -- scoring -------------------------------------------------------------------------
    def _batches(self, images: np.ndarray, batch_size: int = SCORE_BATCH, details: bool = False) -> Iterator[tuple]:
        """(scores, reconstructions (n,h,w,c) float, maps (n,h,w) float) per batch; without
        `details` only the scores come back to the CPU (the others are None)."""
        self._require_fitted()
        images = check_images(images, self.shape_)
        s = self.config.score
        if s.method == "auto":  # not chosen yet (the collapse check during fit): the top share, as before
            s = dataclasses.replace(s, method="topk")
        tile = self.tile_ or self.shape_[:2]
        area = self._score_area()
        pixels = self.shape_[0] * self.shape_[1]
        if self._segments:
            batch_size = max(1, min(batch_size, SEGMENT_BATCH_PIXELS // pixels))
        elif self._orients:  # its encoder sees each image 8 ways
            batch_size = max(1, batch_size // 8)
        elif self.tile_:
            # About 4 overlapping tiles per tile of image: fewer images per batch.
            batch_size = max(1, min(batch_size, SCORE_BATCH * area // (4 * pixels)))
        self.model_.eval()
        for i in range(0, len(images), batch_size):
            x = as_float(to_device_uint8(images[i: i + batch_size], self.device_))
            with torch.inference_mode(), autocast(self.device_):
                if self._segments:
                    recon, maps = self.model_.reconstruct_and_segment(x)
                else:
                    recon = reconstruct(self.model_, x, *tile)
            recon = recon.float()
            if self._segments:
                maps = blur(maps.float().unsqueeze(1), s.sigma).squeeze(1)
            else:
                maps = anomaly_map(x, recon, s.method, s.sigma)
            if self._orients:
                with torch.inference_mode(), autocast(self.device_):
                    scores = self.model_.image_scores(x, recon).double().cpu().numpy()
            else:
                scores = image_scores(maps, s.method, s.top_fraction, area).double().cpu().numpy()
            if details:
                yield scores, recon.permute(0, 2, 3, 1).cpu().numpy(), maps.cpu().numpy()
            else:
                yield scores, None, None

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        """Anomaly score per image (higher = more anomalous)."""
        parts = [s for s, _, _ in self._batches(images)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """The bottleneck code of each image (n, latent_dim): the mean code for the variational kind.

        Raises:
            ModelError: the model has no one code per image (tiled models, the discriminative kind).
        """
        self._require_fitted()
        if self._segments or self.tile_ or not hasattr(self.model_, "encode"):
            raise ModelError("This model has no single code per image (it is tiled, or of the discriminative or the nearest kind).")
        images = check_images(images, self.shape_)
        self.model_.eval()
        out = []
        for i in range(0, len(images), SCORE_BATCH):
            x = as_float(to_device_uint8(images[i: i + SCORE_BATCH], self.device_))
            with torch.inference_mode():
                out.append(self.model_.encode(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.model.latent_dim), np.float32)

    def score_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, reconstructions (n,h,w,c) in [0,1], error maps (n,h,w)) for one batch."""
        out = list(self._batches(images, batch_size=max(1, len(images)), details=True))
        if not out:
            h, w, c = self.shape_
            return np.zeros(0), np.zeros((0, h, w, c), np.float32), np.zeros((0, h, w), np.float32)
        return tuple(np.concatenate(part) for part in zip(*out))

    # -- persistence (calibrate, predict, save: `calibrated.Calibrated`) -------------------
    def to_checkpoint(self) -> dict:
        """The checkpoint dict of this fitted, calibrated detector and its metadata (`meta_`)."""
        return self.checkpoint_with({k: v.detach().cpu() for k, v in self.model_.state_dict().items()})

    @classmethod
    def load(cls, path, device: str = "auto") -> AutoencoderDetector:
        """A detector from a model folder or ``model.pt`` (weights_only: runs no code)."""
        from anomaly_ae import checkpoint

        return cls.from_checkpoint(checkpoint.read(path), device)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: str = "auto") -> AutoencoderDetector:
        """A ready detector from a checkpoint dict (as `anomaly_ae.checkpoint.read` returns it): an
        `anomaly_ae.ensemble.Ensemble` of detectors of this class where the checkpoint holds several."""
        if "members" in ckpt:
            from anomaly_ae.ensemble import Ensemble

            return Ensemble.from_checkpoint(ckpt, cls, device)
        det = cls.restore(ckpt["config"], ckpt["image_shape"], ckpt["state_dict"], device)
        det.restore_calibration(ckpt)
        return det

    @classmethod
    def restore(cls, config: dict, image_shape, state_dict: dict, device: str = "auto") -> AutoencoderDetector:
        """A detector that scores with the trained network of `config` and `state_dict` (not calibrated).

        Raises:
            ModelError: the configuration is invalid, or the weights do not fit its network.
        """
        try:
            cfg = DetectorConfig.from_dict(config)
        except (ConfigError, TypeError) as exc:
            raise ModelError(f"The checkpoint's configuration is invalid: {exc}") from None
        det = cls(cfg)
        det.device_ = resolve_device(device)
        det.shape_ = tuple(int(v) for v in image_shape)
        det.tile_ = det._scoring_tile()
        det.model_ = det._build_model()
        try:
            det.model_.load_state_dict(state_dict)
        except (RuntimeError, KeyError) as exc:
            raise ModelError(f"The checkpoint's weights do not fit its model: {str(exc).splitlines()[0]}") from None
        det.model_.to(det.device_, memory_format=torch.channels_last).eval()
        return det

    def _require_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ModelError("The detector is not fitted: call fit() or load a checkpoint first.")
