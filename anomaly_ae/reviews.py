"""Review of a run's items: "defect confirmed" or "false alarm", stored beside the run.

Every decision is a row of ``reviews.parquet`` in the run folder (schema ``reviews``: item,
decision, note, time, who); the last row of an item is its decision and ``clear`` withdraws it,
so nothing is ever overwritten and the history stays. Writes take the run's review lock, read the
table again and replace it atomically: two reviewers at once both land, and a crash leaves the
previous table whole.

Reviewed false alarms feed calibration (`false_alarm_scores`): they are normal items the model
scored above its threshold, and adding them to the calibration scores can only raise the
threshold, so the false-positive guarantee still holds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from anomaly_ae.errors import BusyError, DataError

REVIEWS_FILE = "reviews.parquet"
DEFECT, FALSE_ALARM, CLEAR = "defect", "false_alarm", "clear"
DECISIONS = (DEFECT, FALSE_ALARM, CLEAR)
MAX_NOTE = 2000  # characters of a note
LOCK_WAIT_S = 5.0  # how long a write waits for another process's review lock

_THREAD_LOCK = threading.Lock()  # one writer at a time within a process (the lock file is per process)


def path(run_dir: str | Path) -> Path:
    return Path(run_dir) / REVIEWS_FILE


def read(run_dir: str | Path):
    """Every decision recorded for the run, oldest first (an empty table when none)."""
    import pyarrow as pa

    from anomaly_ae.schema import read_parquet, schema

    p = path(run_dir)
    return read_parquet(p) if p.exists() else pa.table({f.name: [] for f in schema("reviews")}, schema=schema("reviews"))


def latest(run_dir: str | Path) -> dict[str, dict]:
    """item -> its standing decision (the last row; items whose last decision is "clear" are left out)."""
    out: dict[str, dict] = {}
    for row in read(run_dir).to_pylist():
        out[row["item"]] = row
    return {k: v for k, v in out.items() if v["decision"] != CLEAR}


def counts(decisions: dict[str, dict]) -> dict:
    """Confirmed defects, false alarms and the reviewed precision (None before any review)."""
    defects = sum(1 for d in decisions.values() if d["decision"] == DEFECT)
    false_alarms = sum(1 for d in decisions.values() if d["decision"] == FALSE_ALARM)
    reviewed = defects + false_alarms
    return {"defect": defects, "false_alarm": false_alarms, "reviewed": reviewed,
            "precision": defects / reviewed if reviewed else None}


def record(run_dir: str | Path, item: str, decision: str, note: str = "", who: str = "",
           known_items=None) -> dict:
    """Record one decision on `item` of the run; returns the row written.

    `known_items` (a set of the run's item ids) saves reading scores.parquet again.

    Raises:
        DataError: not a run folder, an item the run did not score, an unknown decision or a
            note that is too long.
        BusyError: another process held the run's review lock for longer than LOCK_WAIT_S.
    """
    from anomaly_ae.locks import FileLock
    from anomaly_ae.runid import utc_now
    from anomaly_ae.schema import write_table

    run_dir = Path(run_dir)
    if decision not in DECISIONS:
        raise DataError(f"Unknown review decision {decision!r}: one of {', '.join(DECISIONS)}.")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise DataError(f"A review note is text of at most {MAX_NOTE} characters.")
    items = known_items if known_items is not None else item_ids(run_dir)
    if item not in items:
        raise DataError(f"{run_dir.name} scored no item {item!r}.")
    row = {"item": item, "decision": decision, "note": note, "time": utc_now(), "who": who or ""}
    with _THREAD_LOCK, _waiting(lambda: FileLock(run_dir / f".{REVIEWS_FILE}.lock", f"Reviews of {run_dir}")):
        table = read(run_dir).to_pydict()
        for k, v in row.items():
            table[k].append(v)
        write_table(path(run_dir), "reviews", table)
    return row


def item_ids(run_dir: str | Path) -> set[str]:
    """The ids of every item the run scored.

    Raises:
        DataError: `run_dir` holds no scores.parquet.
    """
    from anomaly_ae.schema import read_parquet

    scores = Path(run_dir) / "scores.parquet"
    if not scores.exists():
        raise DataError(f"{run_dir} is not a run folder (no scores.parquet).")
    return set(read_parquet(scores, columns=["image_id"])["image_id"].to_pylist())


def false_alarm_scores(run_dir: str | Path, with_ids: bool = False):
    """Scores of the run's flagged items that a reviewer marked as false alarms (an array, or a
    dict item -> score `with_ids`)."""
    from anomaly_ae.schema import read_parquet

    marked = {k for k, v in latest(run_dir).items() if v["decision"] == FALSE_ALARM}
    t = read_parquet(Path(run_dir) / "scores.parquet", columns=["image_id", "score", "flagged"])
    ids, score, flagged = (t[c].to_numpy(zero_copy_only=False) for c in ("image_id", "score", "flagged"))
    keep = np.array([i in marked for i in ids], bool) & flagged.astype(bool)
    if with_ids:
        return {str(i): float(v) for i, v in zip(ids[keep], score[keep])}
    return score[keep].astype(np.float64)


class _waiting:
    """Enter a non-blocking lock, retrying until LOCK_WAIT_S has passed."""

    def __init__(self, make):
        self.make, self.lock = make, None

    def __enter__(self):
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                self.lock = self.make()
                return self.lock.__enter__()
            except BusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)
