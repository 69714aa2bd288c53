"""Configurations: checked values, the per-kind learning rate, files written and read back, and the
ingest settings' part of a dataset's fingerprint."""

from __future__ import annotations

import pytest

from anomaly_ae.cliopts import detector_config, given
from anomaly_ae.config import DetectorConfig, IngestConfig, ModelConfig, TrainConfig
from anomaly_ae.configfile import dump_toml, load_detector_config, read_toml
from anomaly_ae.errors import ConfigError


def test_the_learning_rate_is_the_kinds_own_unless_set():
    assert TrainConfig().lr_for("ae") == 2e-3 and TrainConfig().lr_for("draem") == 1.6e-2
    assert TrainConfig(lr=5e-4).lr_for("draem") == 5e-4
    trained = DetectorConfig(model=ModelConfig(kind="draem")).as_trained()
    assert trained.train.lr == 1.6e-2
    assert DetectorConfig(model=ModelConfig(kind="auto")).as_trained().train.lr == 0.0  # chosen later


def test_detector_config_survives_a_file_and_a_dict(tmp_path):
    cfg = DetectorConfig(model=ModelConfig(kind="vae", tile=32), train=TrainConfig(epochs=7, max_minutes=2.5))
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg.to_dict()))
    assert load_detector_config(path) == cfg and read_toml(path)["train"]["epochs"] == 7
    with pytest.raises(ConfigError, match="unknown key"):
        DetectorConfig.from_dict({"train": {"epoch": 3}})


def test_a_config_file_with_a_misspelt_table_is_refused_and_a_pipelines_tables_are_said_unused(tmp_path, caplog):
    """train --config: `[modle]` is a typo, not something to skip (the kind asked for would be
    lost); a pipeline file's own tables are allowed, and named as not used by training."""
    import logging

    path = tmp_path / "c.toml"
    path.write_text('[modle]\nkind = "vae"\n[train]\nepochs = 1\n')
    with pytest.raises(ConfigError, match=r"c.toml: unknown table or key 'modle' \(did you mean \[model\]\?\)"):
        detector_config(path, {})
    path.write_text('[data]\nsource = "x"\ncrop = [0, 0, 10, 10]\n[model]\nkind = "vae"\n')
    with caplog.at_level(logging.WARNING):
        assert detector_config(path, {}).model.kind == "vae"
    assert "c.toml: [data] not used: training reads only [model], [train], [score] and [threshold]" in caplog.text


@pytest.mark.parametrize("crop", ["10,20,30,40", (10, 20, 30, 40), [10, 20, 30, 40], " 10, 20 ,30,40"])
def test_crop_reads_as_text_or_numbers(crop):
    assert IngestConfig(crop=crop).crop == (10, 20, 30, 40)


@pytest.mark.parametrize("crop", ["10,20,30", "a,b,c,d", (0, 0, 0, 5), (-1, 0, 5, 5), "1.5,0,5,5"])
def test_impossible_crops_are_refused(crop):
    with pytest.raises(ConfigError, match="crop"):
        IngestConfig(crop=crop)


@pytest.mark.parametrize("field,value", [("channels", "CMYK"), ("resize", "cubic"), ("test_fraction", 1.0),
                                         ("seed", -1), ("max_pixels", 0), ("size", "0x5")])
def test_impossible_ingest_settings_are_refused(field, value):
    with pytest.raises(ConfigError):
        IngestConfig(**{field: value})


def test_settings_from_before_the_crop_keep_their_fingerprint():
    """Datasets ingested before a setting existed stay up to date: a new setting enters the
    fingerprint only when it is set."""
    default = IngestConfig().fingerprint_parts()
    assert default == [[None, None, "bilinear"], {"test_fraction": None, "seed": 0, "max_pixels": 64_000_000}]
    assert IngestConfig(size="28").fingerprint_parts()[0] == [[28, 28], None, "bilinear"]
    cropped = IngestConfig(crop="0,0,5,5").fingerprint_parts()
    assert cropped[:2] == default and cropped[2] == {"crop": (0, 0, 5, 5)}


def test_command_options_named_like_fields_set_them(tmp_path):
    options = {"size": "64", "crop": "1,2,3,4", "seed": None, "workers": 3, "overwrite": False}
    assert given(IngestConfig, options) == IngestConfig(size="64", crop=(1, 2, 3, 4))
    file = tmp_path / "c.toml"
    file.write_text('[train]\nepochs = 4\nlr = 0.001\n[model]\nkind = "vae"\n')
    cfg = detector_config(file, {"epochs": 9, "kind": None, "method": "mse", "allow_collapsed": False,
                                 "tile": 0, "target_fpr": 0.05})
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.kind, cfg.score.method) == (9, 0.001, "vae", "mse")
    assert cfg.model.tile == 0 and cfg.threshold.target_fpr == 0.05 and not cfg.train.allow_collapsed


def test_score_run_settings_are_checked_and_read_from_options():
    from anomaly_ae.config import ScoreRunConfig

    cfg = given(ScoreRunConfig, {"split": "test", "report": False, "batch_size": None, "model": "m"})
    assert cfg == ScoreRunConfig(split="test", report=False)
    for bad in ({"partitions": 0}, {"workers": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            ScoreRunConfig(**bad)


def test_default_widths_keep_the_training_fingerprint_of_models_trained_before_them():
    from anomaly_ae.steps.training import _weights_config

    small = _weights_config(DetectorConfig(), (28, 28, 1))["model"]
    assert (small["base_channels"], small["max_channels"]) == (32, 256)
    large = _weights_config(DetectorConfig(), (256, 256, 1))["model"]
    assert (large["base_channels"], large["max_channels"]) == (8, 128)
    tiled = _weights_config(DetectorConfig(model=ModelConfig(tile=32)), (640, 640, 1))["model"]
    assert (tiled["base_channels"], tiled["max_channels"]) == (32, 256)
