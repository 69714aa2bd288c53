"""The pipeline's steps (ingest, info, train, calibrate, score, report, inbox): what the CLI and flows call.

Each step takes plain values, does one job through the library modules below it and returns a
plain, JSON-able summary. Steps never import prefect or typer, and no library module imports them.
"""

from anomaly_ae.steps.calibration import calibrate
from anomaly_ae.steps.datasets import Progress, info, ingest
from anomaly_ae.steps.demo import DEMO_SOURCE, demo
from anomaly_ae.steps.inbox import inbox_has_new_files, inbox_runs_without_report, score_inbox
from anomaly_ae.steps.runs import console_links, report, report_or_none, score, score_partition
from anomaly_ae.steps.training import HELD_OUT_SOURCE, export, model_info, train, unlike_its_pipeline

__all__ = ["DEMO_SOURCE", "HELD_OUT_SOURCE", "Progress", "calibrate", "console_links", "demo", "export",
           "inbox_has_new_files", "inbox_runs_without_report", "info", "ingest", "model_info", "report",
           "report_or_none", "score", "score_inbox", "score_partition", "train", "unlike_its_pipeline"]
