"""Run ids and timestamps, all in UTC: one format for run folders, run.json, inbox runs and flow runs."""

from __future__ import annotations

import datetime as dt
import secrets


def stamp() -> str:
    """The current UTC time as ``yyyymmddThhmmssZ`` (sorts in time order as text)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def new_run_id() -> str:
    """A sortable, unique run id: the UTC `stamp` plus a random suffix, e.g. ``20261130T204300Z-3fa2c1``."""
    return f"{stamp()}-{secrets.token_hex(3)}"


def utc_now() -> str:
    """The current UTC time in ISO 8601 to the second, for ``created`` fields."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
