"""When a failed task is worth retrying: not for errors the user must fix."""

from __future__ import annotations


def transient_only(task, task_run, state) -> bool:
    """Retry condition: retry unless the failure is an `AnomalyAEError` (bad data, config, busy)."""
    from anomaly_ae.errors import AnomalyAEError

    try:
        state.result()
    except AnomalyAEError:
        return False
    except Exception:
        return True
    return True
