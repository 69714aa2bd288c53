"""What every benchmark shares: the machine it ran on, and writing results as JSON + Markdown."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """CPU, cores, memory, GPU and library versions of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": mem,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": str(torch.__version__), "platform": platform.platform(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", f"bench.{Path(sys.argv[0]).stem}" if sys.argv[0] else "?", *sys.argv[1:]]),
        # Other work on the machine inflates the seconds (not the AUROCs): the load average says how busy it was.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """bench/results/<name>.json and .md (with the machine appended to both)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **payload}
    m = payload["machine"]
    md = (markdown.rstrip() + f"\n\nMachine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
          f"GPU {m['gpu'] or 'none'}; Python {m['python']}, torch {m['torch']}; {m['date']}; "
          f"load average at the end {m['load_average_1m']}.\n"
          f"Command: `{m['command']}`\n")
    j, k = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    j.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    k.write_text(md)
    return j, k


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats printed with 3 decimals."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
