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


class UserErrorsInOneLine(logging.Filter):
    """Drop the traceback from Prefect's record of a run that failed on a user error
    (`AnomalyAEError`: bad data, settings or paths): its message says what to do, and a traceback
    would bury it. Other errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        from anomaly_ae.errors import AnomalyAEError

        if record.exc_info and isinstance(record.exc_info[1], AnomalyAEError):
            record.exc_info, record.exc_text = None, None
        return True


# Prefect's loggers of task and flow runs, which log a failure with its traceback.
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def forward_library_logs(level: int = logging.INFO) -> None:
    """Attach the forwarder to the ``anomaly_ae`` logger once per process (idempotent), and keep
    user errors to one line in Prefect's run logs.

    The library logger's level is set to `level` only when it was not set, so that INFO
    progress messages reach the run logs.
    """
    logger = logging.getLogger(LIBRARY_LOGGER)
    if not any(isinstance(h, RunLogForwarder) for h in logger.handlers):
        logger.addHandler(RunLogForwarder())
    if logger.level == logging.NOTSET:
        logger.setLevel(level)
    for name in RUN_LOGGERS:
        run_logger = logging.getLogger(name)
        if not any(isinstance(f, UserErrorsInOneLine) for f in run_logger.filters):
            run_logger.addFilter(UserErrorsInOneLine())
