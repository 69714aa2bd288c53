"""The runs under the console's root folders: found by walking, summarised from run.json, cached.

A run folder holds run.json and scores.parquet (what `anomaly-ae score`, pipeline and inbox runs
write). Runs are addressed by a key derived from their resolved path, never by a path a request
carries: a URL can only name a run the walk found under a root. The walk does not follow links,
skips hidden folders (work areas) and leaves out any run whose files lead outside its root.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from anomaly_ae.errors import AnomalyAEError
from anomaly_ae.pipeline import is_web_url

MAX_DEPTH = 6  # folders below a root that the walk looks into
RUN_FILES = ("run.json", "scores.parquet")
SERVED_FILES = ("report.html", "flagged.csv", "scores.parquet")  # the files of a run the console serves


def run_key(run_dir: str | Path) -> str:
    """The console's key of a run folder (12 hex digits of its resolved path's SHA-1): the same in
    every process on the machine, so a flow can link to a run's console page."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


@dataclass
class Run:
    key: str
    dir: Path
    root: Path
    pipeline: str
    summary: dict
    stamp: tuple = field(default=(), repr=False)

    def file(self, name: str) -> Path | None:
        """One of SERVED_FILES of the run, when it is a plain file inside the root (else None)."""
        if name not in SERVED_FILES:
            return None
        p = self.dir / name
        if p.is_symlink() or not p.is_file() or not p.resolve().is_relative_to(self.root):
            return None
        return p


class Catalog:
    """Every run under `roots`, newest first; `refresh` walks again and re-reads only changed runs."""

    def __init__(self, roots: list[str | Path]):
        self.roots = [Path(r).resolve() for r in roots]
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def refresh(self) -> list[Run]:
        with self._lock:
            found: dict[str, Run] = {}
            for root in self.roots:
                for run_dir in _walk(root):
                    key = run_key(run_dir)
                    stamp = _stamp(run_dir)
                    old = self._runs.get(key)
                    if old is not None and old.stamp == stamp:
                        found[key] = old
                        continue
                    summary = _summary(run_dir)
                    if summary is not None:
                        found[key] = Run(key, run_dir, root, _pipeline(run_dir, root), summary, stamp)
            self._runs = found
            return self.runs()

    def runs(self) -> list[Run]:
        return sorted(self._runs.values(), key=lambda r: (r.summary["created"], r.summary["id"]), reverse=True)

    def get(self, key: str) -> Run | None:
        """The run of `key`, walking again once if it is not known yet (a run written since)."""
        if key not in self._runs:
            self.refresh()
        return self._runs.get(key)

    def neighbours(self, run: Run) -> tuple[Run | None, Run | None]:
        """(previous, next) run of the same pipeline in time."""
        same = [r for r in reversed(self.runs()) if r.pipeline == run.pipeline]
        i = next(k for k, r in enumerate(same) if r.key == run.key)
        return (same[i - 1] if i > 0 else None), (same[i + 1] if i + 1 < len(same) else None)


def _walk(root: Path):
    if not root.is_dir():
        return
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        names = {e.name for e in entries}
        if all(n in names for n in RUN_FILES):
            if _inside(folder, root):
                yield folder
            continue
        if depth >= MAX_DEPTH:
            continue
        for e in entries:
            if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
                continue
            stack.append((Path(e.path), depth + 1))


def _inside(run_dir: Path, root: Path) -> bool:
    """Whether the run's files stay inside the root: the walk reaches no folder through a link, so
    that holds unless one of the files is a link itself."""
    for name in (*RUN_FILES, "metrics.json", "reviews.parquet"):
        try:
            if stat.S_ISLNK(os.lstat(run_dir / name).st_mode):
                return False
        except FileNotFoundError:
            continue
    return True


def _stamp(run_dir: Path) -> tuple:
    out = []
    for name in ("run.json", "metrics.json", "reviews.parquet"):
        try:
            st = os.stat(run_dir / name)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _pipeline(run_dir: Path, root: Path) -> str:
    """What the runs of one pipeline share: the folder that holds their `runs/` (or their parent)."""
    home = run_dir.parent.parent if run_dir.parent.name == "runs" else run_dir.parent
    if not home.is_relative_to(root):  # the root is the runs/ folder itself: its runs are grouped under it
        home = root
    rel = home.relative_to(root)
    return str(Path(root.name) / rel) if str(rel) != "." else root.name


def _summary(run_dir: Path) -> dict | None:
    """What the runs page shows of a run, from run.json, metrics.json and the reviews; None when
    run.json cannot be read (a run being written, or damaged)."""
    from anomaly_ae import reviews

    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    auroc, normal_only = (run.get("quality") or {}).get("auroc"), run.get("drift_normal_only")
    older = "quality" not in run or (run.get("labels_known") and "drift_normal_only" not in run)
    if older and (run_dir / "metrics.json").exists():  # runs written before run.json had these
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            auroc, normal_only = metrics.get("auroc", auroc), metrics.get("drift_normal_only")
        except (OSError, ValueError):
            pass
    counts = run.get("counts") or {}
    # With labels, anomalies are expected to score high: drift is judged on the normal items, as the
    # report and the command line judge it.
    drift = (normal_only if normal_only and normal_only.get("ks_statistic") is not None else run.get("drift")) or {}
    th = run.get("threshold") or {}
    scored = counts.get("scored") or 0
    try:
        decided = reviews.counts(reviews.latest(run_dir) if (run_dir / reviews.REVIEWS_FILE).exists() else {})
    except (OSError, ValueError, AnomalyAEError):  # damaged: the run's page says so
        decided = reviews.counts({})
    return {
        "id": run.get("run_id") or run_dir.name, "created": run.get("created") or "",
        "input": run.get("input"), "model": (run.get("model") or {}).get("path"),
        "kind": (run.get("model") or {}).get("kind"),
        "scored": scored, "flagged": counts.get("flagged") or 0, "rejects": counts.get("rejects") or 0,
        "flagged_share": (counts.get("flagged") or 0) / scored if scored else None,
        "drift": drift.get("drift"), "ks": drift.get("ks_statistic"),
        "guaranteed_fpr": th.get("guaranteed_fpr"), "target_fpr": th.get("target_fpr"),
        "threshold": th.get("threshold"), "auroc": auroc, "reviews": decided,
        "model_saw": (run.get("model_saw") or {}).get("n_items"),  # scored items that trained the model
        "labels_known": bool(run.get("labels_known")),
        "image_shape": list(((run.get("model") or {}).get("image_shape") or [])[:2]),
        # Runs of earlier versions may hold "None/flow-runs/..." (no Prefect UI): no link then.
        "flow_run_url": run.get("flow_run_url") if is_web_url(run.get("flow_run_url")) else None,
    }

