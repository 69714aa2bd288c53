"""The inbox step: score the files that arrived in an inbox since the last run, exactly once.

The ledger, the staging and the commit are `anomaly_ae.inbox`'s; this step runs them around a
scoring run (see that module for what a run does and why it scores each file once).
"""

from __future__ import annotations

import logging
from pathlib import Path

from anomaly_ae.steps.runs import score

log = logging.getLogger(__name__)


def inbox_runs_without_report(state_dir: str | Path, latest: int) -> list[Path]:
    """The folders of the `latest` committed runs that hold scores but no report.html: runs
    interrupted (Ctrl-C, a crash) between their commit and their report. Their files are in the
    ledger, so no later run scores them again and builds it."""
    from anomaly_ae.inbox import committed_runs

    runs = [Path(state_dir) / "runs" / name for name in committed_runs(Path(state_dir))[-latest:]] if latest else []
    return [r for r in runs if (r / "scores.parquet").exists() and not (r / "report.html").exists()]


def inbox_has_new_files(folder: str | Path, state_dir: str | Path, settle_seconds: float = 5.0) -> bool:
    """Whether an inbox run would find settled files to score (see `anomaly_ae.inbox.has_new_files`)."""
    from anomaly_ae.inbox import has_new_files

    return has_new_files(folder, state_dir, settle_seconds)


def score_inbox(folder: str | Path, state_dir: str | Path, model: str | Path, *, settle_seconds: float = 5.0,
                max_files: int = 0, **score_options) -> dict:
    """Stage the inbox's new files, score them and commit the run, holding the inbox lock.

    `score_options` go to `score` (partitions, map_partitions, report...). Returns the inbox
    summary: the run's id and folder, the new files, those rejected before scoring (``rejected``,
    counted in ``unreadable`` and ``refused``) and the score summary.

    Raises:
        BusyError: another run holds the inbox lock.
        DataError: the inbox folder does not exist, or a working copy could not be written (a full
            disk: NoSpaceError; a read-only one: NotWritableError); the run then records nothing.
    """
    from anomaly_ae.parallel import leave_if_importing_script

    leave_if_importing_script()  # a worker importing a script without a main guard
    from anomaly_ae import facts
    from anomaly_ae.inbox import InboxRun, summary

    with InboxRun(folder, state_dir, settle_seconds=settle_seconds, max_files=max_files) as run:
        staged = run.stage(run.new_files())
        if not staged:
            log.info("no new files in %s (%d still settling)", folder, run.pending)
            return summary(run, [], None, None)
        readable = run.scoreable()
        # Exactly the staged files, as a flat list: no layout guessing may drop one.
        scored = (score(run.input_dir, model, run.out_dir, files=readable, run_id=run.run_id,
                         input_name=folder, **score_options)
                  if readable else None)
        final = run.commit(staged)
        refused = [(s.key, s.reason) for s in staged if s.reason]
        if refused:  # said once they are in the ledger: a run that fails before its commit records nothing
            log.warning("%d inbox entries cannot be scored and are recorded as rejected: %s", len(refused),
                        facts.named(refused))
        return summary(run, staged, scored, final)
