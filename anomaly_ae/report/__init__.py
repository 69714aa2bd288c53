"""The batch report: one self-contained HTML page per run folder (``report.html``).

The page needs nothing but a browser: styles are inline, plots and thumbnails are embedded
as base64 PNG, and it reads well on a laptop or a phone. It is built from the run folder's
files only (run.json, metrics.json, scores.parquet, examples.parquet, rejects.parquet), so
`anomaly-ae report RUN_DIR` can rebuild it at any time. Only a few columns of scores.parquet
are read and only the stored examples are drawn, so a large batch reports quickly.

Every number shown carries a ``data-metric`` attribute naming it, so tests and scripts can
read the page back.
"""

from __future__ import annotations

import logging
import time
from html import escape
from pathlib import Path

from anomaly_ae.report.html import css, section, tagged
from anomaly_ae.report.rundata import RunData, load
from anomaly_ae.runid import utc_now

log = logging.getLogger(__name__)

__all__ = ["RunData", "build", "load", "render"]


def build(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the run folder's files.

    Returns:
        The path of the report.

    Raises:
        DataError: `run_dir` is not a complete run folder.
    """
    from anomaly_ae.fsio import atomic_write_text

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    page = render(load(run_dir))
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    log.info("report written to %s (%.1f kB) in %.1f s", out, len(page) / 1024, time.perf_counter() - t0)
    return out


def render(data: RunData) -> str:
    """The whole HTML page for a run."""
    from anomaly_ae.report import examples, figures
    from anomaly_ae.report import sections as sec

    parts = [("summary", "Summary", sec.summary(data)),
             ("quality", "Detection quality", sec.quality(data, figures)),
             ("scores", "Score distribution", sec.distribution(data, figures)),
             ("drift", "Drift check", sec.drift(data, figures)),
             ("top", "Top flagged items", examples.example_grid(data, "top")),
             ("borderline", "Borderline items", examples.example_grid(data, "borderline")),
             ("classes", "Per class", sec.per_class(data)),
             ("training", "Training", sec.training(data, figures)),
             ("rejects", "Rejected files", sec.rejects(data)),
             ("metadata", "Run metadata", sec.metadata(data))]
    parts = [p for p in parts if p[2]]
    nav = "".join(f'<li><a href="#{k}">{t}</a></li>' for k, t, _ in parts)
    run_id = escape(str(data.run.get("run_id", "")))
    built = utc_now()
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Anomaly report {run_id}</title><style>{css()}</style></head><body><main>"
            f'<header><h1>Anomaly report</h1><p class="sub">Run {tagged("run_id", run_id)} &middot; scored '
            f'{escape(str(data.run.get("created", "")))} &middot; report built {built}</p>'
            f'<nav aria-label="Sections"><ul>{nav}</ul></nav></header>'
            + "".join(section(k, t, b) for k, t, b in parts)
            + "</main></body></html>\n")
