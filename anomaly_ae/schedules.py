"""Schedules of a pipeline's flows: one [[schedule]] entry, checked as the scheduler will read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anomaly_ae.config import require
from anomaly_ae.errors import ConfigError

FLOWS = ("inbox", "pipeline")
_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


@dataclass(frozen=True)
class Schedule:
    """One [[schedule]] entry: when a flow of the pipeline runs (cron or interval)."""

    flow: str = "inbox"  # inbox | pipeline
    cron: str | None = None
    interval: float | None = None  # seconds
    timezone: str | None = None

    def __post_init__(self):
        require(self.flow in FLOWS, "flow", f"must be one of {', '.join(FLOWS)}, got {self.flow!r}")
        require((self.cron is None) != (self.interval is None), "cron",
               "give exactly one of cron = \"...\" or interval = <seconds>")
        if self.interval is not None:
            require(1 <= self.interval <= 366 * 86_400, "interval",
                   f"must be 1 second .. 366 days (in seconds), got {self.interval}")
        if self.cron is not None:
            fields_ = self.cron.split()
            require(self.cron.strip().lower() in _CRON_ALIASES or len(fields_) == 5, "cron",
                   f"must have 5 fields (minute hour day month weekday) or be an alias like @hourly, "
                   f"got {self.cron!r}")
            _check_cron(self.cron)
        if self.timezone is not None:
            _check_timezone(self.timezone)


def _cron_parser():
    """The cron parser Prefect's schedules validate with (croniter), or None when there is none.

    Prefect ships its own copy of croniter; it is loaded from Prefect's folder by file, because
    importing it the usual way would import prefect itself, which the library never does.
    """
    import importlib.util
    import sys

    name = "anomaly_ae._scheduler_croniter"
    if name not in sys.modules:
        found = importlib.util.find_spec("prefect")  # locates the package without importing it
        vendored = (Path(found.submodule_search_locations[0]) / "_vendor" / "croniter" / "croniter.py"
                    if found and found.submodule_search_locations else None)
        if vendored is None or not vendored.is_file():
            try:  # a Prefect that uses croniter as a package of its own
                from croniter import croniter
            except ImportError:  # pragma: no cover - Prefect is a dependency
                return None
            return croniter
        spec = importlib.util.spec_from_file_location(name, vendored)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].croniter


def _check_cron(cron: str) -> None:
    """Reject a cron line the scheduler would refuse, with the parser the scheduler uses."""
    croniter = _cron_parser()
    if croniter is None:  # pragma: no cover - Prefect is a dependency
        return
    if not croniter.is_valid(cron):
        raise ConfigError(f"cron: {cron!r} is not a valid cron line: each field must be in range "
                          "(minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-6) and written with "
                          "numbers, names, *, ranges (1-5), lists (1,15) and steps (*/5), e.g. \"*/5 * * * *\"")
    if any(part.casefold() in ("r", "h") for part in cron.split()):
        raise ConfigError(f"cron: {cron!r} uses a random (R) or hashed (H) field, which the scheduler "
                          "does not support; write the minute or hour as a number instead")


def _check_timezone(name: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone: unknown time zone {name!r} (use an IANA name like Europe/Berlin)") from None
