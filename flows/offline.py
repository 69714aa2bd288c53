"""Prefect defaults for machines without internet access: telemetry off unless the user chose.

Pipelines often run next to production lines with no way out; there Prefect's telemetry can
only fail and log errors. ``DO_NOT_TRACK`` and ``PREFECT_SERVER_ANALYTICS_ENABLED`` are set
only when the environment does not set them already. Prefect servers started by a flow
inherit them (the temporary server, or the one `flows.serve` starts).
"""

import os

DEFAULTS = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)
