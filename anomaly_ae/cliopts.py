"""How the command line reads and shows its options: the help style, options turned into
configurations (an option named like a field sets that field), and configuration keys in the
library's messages written as the options that set them."""

from __future__ import annotations

import contextlib
import inspect
import re
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from anomaly_ae.errors import AnomalyAEError


class _HelpStyle:
    """Help in the usual style: ``DATASET`` in the usage line (not ``{dataset}``), no ``<bool>``
    type beside a flag and no ``[default: no-force]`` for a flag that is off unless given."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
                if param.default is False:
                    param.show_default = False
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1].upper() if p.startswith("{") and p.endswith("}") else p for p in pieces]


class Command(_HelpStyle, TyperCommand):
    """A command with anomaly-ae's help style; in the list of commands its summary is the first
    paragraph of its help as one line (a docstring's line breaks are not kept there)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.short_help and self.help:
            self.short_help = " ".join(inspect.cleandoc(self.help).split("\n\n")[0].split())


class Group(_HelpStyle, TyperGroup):
    """The command group with anomaly-ae's help style."""


def _set(cls, options: dict, flags_off_unset: bool = False) -> dict:
    """{field: value} of the command's options named like the fields of `cls` that were given (not
    None; with `flags_off_unset`, a flag left off (False) is not given either)."""
    import dataclasses

    return {f.name: options[f.name] for f in dataclasses.fields(cls) if options.get(f.name) is not None
            and not (flags_off_unset and options[f.name] is False)}


def given(cls, options: dict):
    """A `cls` configuration from the command's options named like its fields (those not given keep
    the defaults): a new setting is one field of `cls` and one option of the same name."""
    return cls(**_set(cls, options))


def detector_config(config: Path | None, options: dict):
    """DetectorConfig from defaults, a pipeline/config TOML file, then the command's options (named like
    the fields of its sections; a flag left off is not an override)."""
    import dataclasses

    from anomaly_ae.config import DETECTOR_SECTIONS, DetectorConfig
    from anomaly_ae.configfile import load_detector_config
    from anomaly_ae.pipeline import KNOWN_TABLES

    cfg = load_detector_config(config, KNOWN_TABLES) if config else DetectorConfig()
    for section in DETECTOR_SECTIONS:
        current = getattr(cfg, section)
        values = _set(type(current), options, flags_off_unset=True)
        if values:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(current, **values)})
    return cfg


# Configuration keys the library names in its messages ("train.lr"), and the train options that set them.
_CONFIG_KEY = re.compile(r"\b(model|train|score|threshold)\.([a-z_]+)\b")
_OPTION_OF_FIELD = {"kind": "model", "method": "score"}  # fields whose option has another name


@contextlib.contextmanager
def named_as_flags(command, config_file: Path | None):
    """Re-raise the library's errors with the configuration keys `command` has options for written as
    those options (``train.lr`` -> ``--lr``); errors about the --config file keep its keys."""
    try:
        yield
    except AnomalyAEError as exc:
        text = str(exc)
        if config_file is not None and str(config_file) in text:
            raise
        params = set(inspect.signature(command).parameters)

        def flag(m: re.Match) -> str:  # the command's parameters are named like the fields
            field = m.group(2)
            if field not in params:
                return m.group(0)
            return "--" + _OPTION_OF_FIELD.get(field, field).replace("_", "-")

        mapped = _CONFIG_KEY.sub(flag, text)
        if mapped == text:
            raise
        raise type(exc)(mapped) from exc


def apply_help_style(typer_app: typer.Typer) -> None:
    """Give every command of `typer_app` anomaly-ae's help style, whoever declared it."""
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = Command
