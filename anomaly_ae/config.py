"""One frozen, typed configuration: model, training, scoring and threshold settings, and pipelines.

Defaults were chosen by measurement (see bench/README.md). Override with
``dataclasses.replace``; ``load_pipeline`` reads a pipeline TOML file and rejects unknown keys,
wrong types and impossible values, naming the file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from anomaly_ae.errors import ConfigError


def require(ok: bool, key: str, message: str) -> None:
    """Raise ConfigError naming `key` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


# "auto" trains the candidates and keeps them all together (selection.py).
MODEL_KINDS = ("ae", "denoising", "vae", "draem", "geometric", "nearest", "auto")


@dataclass(frozen=True)
class ModelConfig:
    """Which autoencoder and how big."""

    # ae | denoising | vae | draem (discriminative, trained on simulated defects) | geometric (also
    # learns which way images are turned: for natural images, where the anomaly is the whole image) |
    # nearest (no network: the nearest normal training image is the reconstruction) | auto
    kind: str = "ae"
    latent_dim: int = 32
    # Channels of the first stage and the most of any stage; 0: sized from the input (32 / 256, and
    # narrower for the reconstruction kinds on inputs of 256 pixels a side or more: see
    # `models.default_widths`). A trained model records the widths it was built with.
    base_channels: int = 0
    max_channels: int = 0
    noise_std: float = 0.1  # denoising: Gaussian noise added to training inputs
    kl_weight: float = 0.01  # vae: weight of the KL term (per pixel)
    # Side of the square tiles the model works on; 0 = the whole image. For large images with
    # small defects: train on random tiles and score every image tile by tile at full resolution.
    tile: int = 0

    def __post_init__(self):
        require(self.kind in MODEL_KINDS, "model.kind", f"must be {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        require(1 <= self.latent_dim <= 4096, "model.latent_dim", f"must be 1..4096, got {self.latent_dim}")
        require(0 <= self.base_channels <= 512, "model.base_channels",
                f"must be 1..512 (or 0: sized from the images), got {self.base_channels}")
        require(self.max_channels == 0 or self.base_channels <= self.max_channels <= 2048, "model.max_channels",
                f"must be base_channels..2048 (or 0: sized from the images), got {self.max_channels}")
        require(0.0 <= self.noise_std <= 1.0, "model.noise_std", f"must be 0..1, got {self.noise_std}")
        require(self.kl_weight >= 0.0, "model.kl_weight", f"must be >= 0, got {self.kl_weight}")
        require(self.tile == 0 or 8 <= self.tile <= 8192, "model.tile",
                f"must be 0 (whole image) or 8..8192 pixels, got {self.tile}")
        require(self.tile == 0 or self.kind != "geometric", "model.tile",
                "must be 0 for the geometric kind (it learns which way whole images are turned)")
        require(self.tile == 0 or self.kind != "nearest", "model.tile",
                "must be 0 for the nearest kind (it compares whole images)")

    def resolved(self, height: int, width: int) -> ModelConfig:
        """This configuration with the widths left at 0 sized for inputs (images, or tiles) of
        height x width. ``auto`` resolves as the discriminative kind does (its candidates resolve
        their own widths when they train)."""
        if self.base_channels and self.max_channels:
            return self
        from anomaly_ae.models import default_widths

        base, cap = default_widths(self.kind, height, width)
        base = self.base_channels or base
        return dataclasses.replace(self, base_channels=base, max_channels=self.max_channels or max(cap, base))


# Learning rate of each model kind when ``train.lr`` is 0. The discriminative kind trains at a higher
# rate: on generated textured surfaces (20 epochs of 20 steps, 2 CPU cores) its AUROC went 0.70 /
# 0.92 / 0.97 / 0.97 at 2e-3 / 8e-3 / 1.6e-2 / 3e-2; the reconstruction kinds keep the 2e-3 they had.
KIND_LR = {"draem": 1.6e-2}
DEFAULT_LR = 2e-3


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained on the normal images."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.0  # AdamW learning rate; 0: the model kind's own (KIND_LR)
    weight_decay: float = 1e-4
    min_steps_per_epoch: int = 20  # small datasets repeat their images to make an epoch
    patience: int = 6  # epochs without held-out improvement before stopping
    calib_fraction: float = 0.2
    # Share of the training images held back to decide when to stop (never the calibration images,
    # so the threshold's false-positive guarantee holds); 0 trains every epoch on all of them.
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    allow_collapsed: bool = False
    # Most minutes of training (0: no limit): the epochs that fit are planned after the first.
    max_minutes: float = 0.0

    def lr_for(self, kind: str) -> float:
        """The learning rate that trains model `kind`: ``lr``, or the kind's default when it is 0."""
        return self.lr or KIND_LR.get(kind, DEFAULT_LR)

    def __post_init__(self):
        require(1 <= self.epochs <= 100_000, "train.epochs", f"must be 1..100000, got {self.epochs}")
        require(2 <= self.batch_size <= 65_536, "train.batch_size", f"must be 2..65536, got {self.batch_size}")
        require(0.0 <= self.lr < 1.0, "train.lr",
                f"must be between 0 and 1 (0: the model kind's default), got {self.lr}")
        require(0.0 <= self.weight_decay < 1.0, "train.weight_decay", f"must be 0..1, got {self.weight_decay}")
        require(self.min_steps_per_epoch >= 1, "train.min_steps_per_epoch", "must be >= 1")
        require(self.patience >= 1, "train.patience", f"must be >= 1, got {self.patience}")
        require(0.0 < self.calib_fraction < 1.0, "train.calib_fraction",
                 f"must be between 0 and 1, got {self.calib_fraction}")
        require(0.0 <= self.val_fraction < 1.0, "train.val_fraction",
                f"must be 0 (no early stopping) or between 0 and 1, got {self.val_fraction}")
        require(0.0 <= self.max_minutes <= 1e6, "train.max_minutes", f"must be 0 (no limit) or more, got {self.max_minutes}")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                 "train.device", f"must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True)
class ScoreConfig:
    """How an image's score is drawn from its reconstruction error."""

    # auto (measured per model on held-back images: anomaly_ae.scorechoice) | topk | mse | ssim
    method: str = "auto"
    sigma: float = 2.0  # smoothing of the error map (pixels) for topk
    top_fraction: float = 0.01  # share of the largest map values averaged for topk / ssim

    def __post_init__(self):
        require(self.method in ("auto", "mse", "topk", "ssim"), "score.method",
                 f"must be auto, mse, topk or ssim, got {self.method!r}")
        require(0.0 <= self.sigma <= 64.0, "score.sigma", f"must be 0..64, got {self.sigma}")
        require(0.0 < self.top_fraction <= 1.0, "score.top_fraction", f"must be in (0, 1], got {self.top_fraction}")


@dataclass(frozen=True)
class ThresholdConfig:
    """The operating point: the false-positive rate to hold on normal images."""

    target_fpr: float = 0.01

    def __post_init__(self):
        require(0.0 < self.target_fpr < 1.0, "threshold.target_fpr",
                 f"must be between 0 and 1 (0.01 = 1%), got {self.target_fpr}")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything a detector is built from."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)

    def as_trained(self) -> DetectorConfig:
        """This configuration with the learning rate that trains its kind written out (for files
        that say how a model was trained); ``auto`` keeps 0, since its kind is chosen later."""
        if self.model.kind == "auto":
            return self
        return dataclasses.replace(self, train=dataclasses.replace(self.train, lr=self.train.lr_for(self.model.kind)))

    def to_dict(self) -> dict:
        """Plain nested dict (for checkpoints and JSON). ``model.tile`` and ``train.max_minutes``
        appear only when set, so other models keep the configuration (and data fingerprint) they
        had before those keys existed, and stay readable by releases that do not know them."""
        d = dataclasses.asdict(self)
        if not d["model"]["tile"]:
            del d["model"]["tile"]
        if not d["train"]["max_minutes"]:
            del d["train"]["max_minutes"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        """Inverse of `to_dict`; unknown keys raise ConfigError."""
        parts = {}
        for f in fields(cls):
            sub = dict(d.get(f.name, {}))
            sub_cls = f.default_factory
            known = {x.name for x in fields(sub_cls)}
            unknown = sorted(set(sub) - known)
            if unknown:
                raise ConfigError(f"{f.name}: unknown key(s) {', '.join(unknown)}")
            parts[f.name] = sub_cls(**sub)
        return cls(**parts)


DETECTOR_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "score": ScoreConfig, "threshold": ThresholdConfig}


# Ingest settings that entered dataset fingerprints from the start; any later one enters only when
# set, so datasets ingested before it existed stay up to date.
FIRST_INGEST_KEYS = ("size", "channels", "resize", "test_fraction", "seed", "max_pixels")


@dataclass(frozen=True)
class IngestConfig:
    """How a source's images become a dataset (and, recorded in its preprocessing policy, how images
    are prepared again at scoring time). Read from the CLI's ingest options and from a pipeline
    file's [data] table by the same fields."""

    size: str | int | None = None  # "256" or "256x192" (height x width), or 256; None / "auto": from the images
    channels: str | None = None  # L or RGB; None: L when every image is gray
    resize: str = "bilinear"  # bilinear | bicubic | area | lanczos | nearest
    # A fixed region of interest, (top, left, height, width) in the source image's pixels, cut out
    # before resizing; "TOP,LEFT,HEIGHT,WIDTH" is accepted too. None: the whole image.
    crop: tuple[int, ...] | str | None = None
    # Bits that 16-bit gray images really hold (a 12-bit camera's PNGs: 12): scaled to 8 bits from
    # 0..2**bit_depth - 1 instead of 0..65535. None: the full 16-bit range. 8-bit images are unchanged.
    bit_depth: int | None = None
    test_fraction: float | None = None  # share of each class marked 'test' (sources without splits)
    seed: int = 0  # seed of that split
    max_pixels: int = 64_000_000  # images with more pixels are rejected (decompression-bomb guard)

    def __post_init__(self):
        from anomaly_ae.imaging import BIT_DEPTHS, RESIZE_METHODS, is_bit_depth, is_crop, parse_size

        if isinstance(self.size, int) and not isinstance(self.size, bool):
            object.__setattr__(self, "size", str(self.size))
        if isinstance(self.crop, str):
            object.__setattr__(self, "crop", _parse_crop(self.crop))
        elif self.crop is not None:
            object.__setattr__(self, "crop", tuple(self.crop))
        parse_size(self.size)
        require(self.channels in (None, "L", "RGB"), "channels", f"must be L or RGB, got {self.channels!r}")
        require(self.resize in RESIZE_METHODS, "resize", f"must be one of {', '.join(RESIZE_METHODS)}, "
                f"got {self.resize!r}")
        require(is_crop(self.crop), "crop", f"must be TOP,LEFT,HEIGHT,WIDTH (whole pixels; top and left >= 0, height and width "
                f">= 1), got {self.crop!r}")
        require(is_bit_depth(self.bit_depth), "bit_depth", f"must be a whole number of bits within "
                f"{BIT_DEPTHS[0]}..{BIT_DEPTHS[-1]} (the bits a 16-bit image's camera writes), got {self.bit_depth!r}")
        require(self.test_fraction is None or 0.0 < self.test_fraction < 1.0, "test_fraction",
                f"must be between 0 and 1 (exclusive), got {self.test_fraction}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.max_pixels >= 1, "max_pixels", f"must be at least 1, got {self.max_pixels}")

    def fingerprint_parts(self) -> list:
        """What of these settings a dataset's fingerprint holds (see FIRST_INGEST_KEYS)."""
        from anomaly_ae.imaging import parse_size

        size = parse_size(self.size)
        parts = [[list(size) if size else None, self.channels, self.resize],
                 {"test_fraction": self.test_fraction, "seed": self.seed, "max_pixels": self.max_pixels}]
        later = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name not in FIRST_INGEST_KEYS and getattr(self, f.name) != f.default}
        return parts + [later] if later else parts


def _parse_crop(text: str) -> tuple[int, ...] | str:
    """'10,20,200,300' -> (10, 20, 200, 300); anything else is returned for the check to refuse."""
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        return text


@dataclass(frozen=True)
class ScoreRunConfig:
    """How a batch is scored: the operating point, which part of the input, and the work's size.
    Read from the score command's options by the same fields (an option named like the field)."""

    threshold: float | None = None  # a fixed threshold instead of the calibrated one
    target_fpr: float | None = None  # the conformal threshold of this rate over the stored calibration scores
    split: str | None = None  # only this split of a dataset
    batch_size: int | None = None  # images per batch; None: from the image size
    workers: int | None = None  # decode processes; None: all cores
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    report: bool = True  # write report.html into the run folder
    partitions: int = 1  # slices of the input, scored one after the other or by a task runner
    backend: str = "auto"  # auto | torch | onnxruntime: where scoring runs (auto: the faster, measured)

    def __post_init__(self):  # the operating point is checked by the detector that applies it
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.workers is None or self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        require(1 <= self.partitions <= 10_000, "partitions", f"must be 1..10000, got {self.partitions}")
        require(self.backend in ("auto", "torch", "onnxruntime", "openvino"), "backend",
                f"must be auto, torch, onnxruntime or openvino, got {self.backend!r}")
