"""Prefect flows over `anomaly_ae.steps`: thin faces for scheduling, retries, logs and artifacts.

Only this package imports prefect; the library (`anomaly_ae`) never does. `flows.entry` holds
the plain functions the command line calls (`run`, `serve`, `inbox`); `flows.offline` turns
Prefect's telemetry off unless the environment says otherwise; `flows.preflight` checks a
pipeline's paths before any work and `flows.tempserver` starts the temporary Prefect server
(once, waiting long enough for a busy machine, stopped when its parent dies).
"""

from flows import offline  # noqa: F401  (telemetry defaults, before any server starts)
