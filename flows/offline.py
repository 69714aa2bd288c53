"""Prefect defaults for machines without internet access: telemetry off unless the user chose.

Pipelines often run next to production lines with no way out; there Prefect's telemetry can
only fail and log errors. ``DO_NOT_TRACK`` and ``PREFECT_SERVER_ANALYTICS_ENABLED`` are set
only when the environment does not set them already. Prefect servers started by a flow
inherit them (the temporary server, or the one `flows.serve` starts). The temporary server's
startup timeout is raised the same way (see `flows.tempserver`).
"""

import os

DEFAULTS = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Prefect waits 20 s for a temporary server; a loaded machine needs longer.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}

for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)
