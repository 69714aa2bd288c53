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


# "auto" trains the candidates and keeps the one that best finds simulated defects (selection.py).
MODEL_KINDS = ("ae", "denoising", "vae", "draem", "auto")


@dataclass(frozen=True)
class ModelConfig:
    """Which autoencoder and how big."""

    kind: str = "ae"  # ae | denoising | vae | draem (discriminative, trained on simulated defects) | auto
    latent_dim: int = 32
    base_channels: int = 32
    max_channels: int = 256
    noise_std: float = 0.1  # denoising: Gaussian noise added to training inputs
    kl_weight: float = 0.01  # vae: weight of the KL term (per pixel)
    # Side of the square tiles the model works on; 0 = the whole image. For large images with
    # small defects: train on random tiles and score every image tile by tile at full resolution.
    tile: int = 0

    def __post_init__(self):
        require(self.kind in MODEL_KINDS, "model.kind", f"must be {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        require(1 <= self.latent_dim <= 4096, "model.latent_dim", f"must be 1..4096, got {self.latent_dim}")
        require(1 <= self.base_channels <= 512, "model.base_channels", f"must be 1..512, got {self.base_channels}")
        require(self.base_channels <= self.max_channels <= 2048, "model.max_channels",
                 f"must be base_channels..2048, got {self.max_channels}")
        require(0.0 <= self.noise_std <= 1.0, "model.noise_std", f"must be 0..1, got {self.noise_std}")
        require(self.kl_weight >= 0.0, "model.kl_weight", f"must be >= 0, got {self.kl_weight}")
        require(self.tile == 0 or 8 <= self.tile <= 8192, "model.tile",
                f"must be 0 (whole image) or 8..8192 pixels, got {self.tile}")


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

    method: str = "topk"  # topk (default: measured best on MNIST and PIPED) | mse | ssim
    sigma: float = 2.0  # smoothing of the error map (pixels) for topk
    top_fraction: float = 0.01  # share of the largest map values averaged for topk / ssim

    def __post_init__(self):
        require(self.method in ("mse", "topk", "ssim"), "score.method",
                 f"must be mse, topk or ssim, got {self.method!r}")
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


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        raise ValueError("TOML has no null")
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def dump_toml(tables: dict) -> str:
    """Nested dict (one level of tables, scalar or list values; None skipped) -> TOML text."""
    lines = []
    for key, value in tables.items():
        if not isinstance(value, dict) and value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _type_ok(value, hint) -> bool:
    import typing

    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def build_section(cls, table: dict, where: str):
    """Instantiate dataclass `cls` from a TOML table, naming `where` (file and section) in errors.

    Raises:
        ConfigError: unknown keys (with the closest known one), wrong types or impossible values.
    """
    import difflib
    import typing

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key, value in table.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
        if not _type_ok(value, hints[key]):
            name = getattr(hints[key], "__name__", str(hints[key]))
            raise ConfigError(f"{where}.{key}: expected {name}, got {type(value).__name__} {value!r}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


DETECTOR_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "score": ScoreConfig, "threshold": ThresholdConfig}


def read_toml(path) -> dict:
    """Parse a TOML file; errors name the file and the line."""
    import tomllib
    from pathlib import Path

    try:
        with open(Path(path), "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at line {line}); "
                          "TOML files must be UTF-8: save the file as UTF-8.") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a pipeline or config file; pass the .toml file.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: could not be read ({exc.strerror or exc}); check the file's permissions.") from None


def detector_config_from(doc: dict, where: str) -> DetectorConfig:
    """DetectorConfig from the [model], [train], [score] and [threshold] tables of a document."""
    parts = {name: build_section(cls, doc.get(name, {}), f"{where} [{name}]")
             for name, cls in DETECTOR_SECTIONS.items()}
    return DetectorConfig(**parts)


def load_detector_config(path) -> DetectorConfig:
    """DetectorConfig from a TOML file (a pipeline file or a model's config.toml); other tables are ignored."""
    return detector_config_from(read_toml(path), str(path))
