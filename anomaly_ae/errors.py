"""The exceptions anomaly-ae raises for problems a user can fix.

Every message says what happened, what was found and what to do. The CLI prints an
``AnomalyAEError`` in one line and exits with code 2; any other exception is a bug and keeps
its traceback.
"""


class AnomalyAEError(Exception):
    """Base class of every error a user can act on."""


class DataError(AnomalyAEError):
    """Input data is missing, empty, unreadable or does not fit the model."""


class SchemaError(DataError):
    """A Parquet table does not match the schema anomaly-ae expects."""


class ConfigError(AnomalyAEError):
    """A pipeline file or option has an unknown key or an impossible value."""


class ModelError(AnomalyAEError):
    """A model failed to train, collapsed, or a checkpoint cannot be trusted."""


class BusyError(AnomalyAEError):
    """Another run holds the lock on an output folder or inbox."""


class NoSpaceError(DataError):
    """The disk filled up while writing; what was being written has been removed."""


class NotWritableError(DataError):
    """An output cannot be written where it was asked for (permissions, a read-only file system)."""
