"""Forward the library's log records (logger ``anomaly_ae``) to the current Prefect run.

Inside a flow or task run, each record of the library is also sent to the Prefect API under
that run, so it shows in the UI next to Prefect's own messages; outside a run the handler
does nothing. Console output is left to whatever configured logging (Prefect or the CLI).
"""

from __future__ import annotations

import logging

from prefect.logging.handlers import APILogHandler

import flows.offline  # noqa: F401  (every flow module imports this one: telemetry defaults)

LIBRARY_LOGGER = "anomaly_ae"


class RunLogForwarder(APILogHandler):
    """Prefect's API log handler, active only within a flow or task run."""

    def emit(self, record: logging.LogRecord) -> None:
        """Send the record to the API when a run context exists; otherwise drop it."""
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


def forward_library_logs(level: int = logging.INFO) -> None:
    """Attach the forwarder to the ``anomaly_ae`` logger once per process (idempotent).

    The library logger's level is set to `level` only when it was not set, so that INFO
    progress messages reach the run logs.
    """
    logger = logging.getLogger(LIBRARY_LOGGER)
    if not any(isinstance(h, RunLogForwarder) for h in logger.handlers):
        logger.addHandler(RunLogForwarder())
    if logger.level == logging.NOTSET:
        logger.setLevel(level)
