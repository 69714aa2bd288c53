"""Configuration files: TOML read and written, and dataclass sections built from tables with errors
that name the file, the table and the key."""

from __future__ import annotations

from dataclasses import fields

from anomaly_ae.config import DETECTOR_SECTIONS, DetectorConfig
from anomaly_ae.errors import ConfigError


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


_WORDS = {int: ("a whole number", "whole numbers"), float: ("a number", "numbers"), str: ("text", "texts"),
          bool: ("true or false", "trues or falses"), dict: ("a table", "tables")}


def _words(hint, plural: bool = False) -> str:
    """A type hint as a config file's reader says it: `int | None` -> 'a whole number'."""
    import typing

    args = [a for a in typing.get_args(hint) if a is not Ellipsis and a is not type(None)]
    if typing.get_origin(hint) is typing.Union or str(typing.get_origin(hint)) == "<class 'types.UnionType'>":
        return " or ".join(_words(a, plural) for a in args)
    if typing.get_origin(hint) in (tuple, list):
        return f"a list of {_words(args[0], plural=True)}" if args else "a list"
    return _WORDS.get(hint, (getattr(hint, "__name__", str(hint)),) * 2)[plural]


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
            raise ConfigError(f"{where}.{key}: expected {_words(hints[key])}, got {_toml_value(value)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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


def reject_unknown_tables(doc: dict, where: str, known) -> None:
    """Refuse a table (or a top-level key) that is not one of `known`, naming the closest known one."""
    import difflib

    for key in doc:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else f" (known tables: {', '.join(known)})"
            raise ConfigError(f"{where}: unknown table or key '{key}'{hint}")
        if key != "schedule" and not isinstance(doc[key], dict):
            raise ConfigError(f"{where}: '{key}' must be a table [{key}], got {type(doc[key]).__name__}")


def load_detector_config(path, pipeline_tables=()) -> DetectorConfig:
    """DetectorConfig from a TOML file (a model's config.toml, or a pipeline file: its other tables,
    `pipeline_tables`, are not used here, and a warning says so); any other table is refused."""
    import logging

    doc = read_toml(path)
    reject_unknown_tables(doc, str(path), (*DETECTOR_SECTIONS, *pipeline_tables))
    unused = [f"[{k}]" for k in doc if k not in DETECTOR_SECTIONS]
    if unused:
        logging.getLogger(__name__).warning(
            "%s: %s not used: training reads only [model], [train], [score] and [threshold] (the other tables are "
            "a pipeline's: `anomaly-ae run %s` uses them all)", path, ", ".join(unused), path)
    return detector_config_from(doc, str(path))
