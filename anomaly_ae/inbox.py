"""Inbox scoring, exactly once: each run scores the files that arrived since the last one.

A product line drops images into an inbox folder; a scheduled run scores what is new.

Which files are read
    Image files (known extensions) anywhere under the inbox, except hidden names (``.name``)
    and names ending in ``.part``, ``.tmp``, ``.partial``, ``.crdownload`` or ``.filepart``.
    A file is read only once it has *settled*: its last change (the later of mtime and ctime)
    is at least ``settle_seconds`` old, and its size and mtime do not change while it is
    copied. The safest way to deliver a file is the rename convention: write it under a
    hidden or ``.part`` name, then rename it to its final name (a rename is atomic).

What a run does, holding the inbox lock (``<state>/.lock``, an flock: a second run started
meanwhile gets BusyError and scores nothing, so overlapping runs never score a file twice)
    1. reads the ledger (which file versions were scored: path, sha256, size, mtime);
    2. copies the settled, unscored files into ``<state>/.work/<run>/input`` (hashing them);
    3. the caller scores that copy into ``<state>/.work/<run>/run`` (`anomaly_ae.steps.score_inbox`);
    4. writes the run's ledger part (``ledger.parquet``) inside that run folder;
    5. renames the run folder to ``<state>/runs/<run>``: the single commit point.

The ledger is the union of the committed runs' parts. ``<state>/ledger.parquet`` is a
consolidated copy, refreshed from the run folders on every run (it also keeps the rows of
run folders deleted since). A run that fails before step 5 commits nothing: the next run
scores its files again. Never edit or delete files under ``.work`` while a run is going.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pyarrow as pa
import pyarrow.parquet as pq

from anomaly_ae import schema
from anomaly_ae.arrivals import InboxFile, settled_files
from anomaly_ae.diskfull import raise_if_user_fixable
from anomaly_ae.errors import DataError
from anomaly_ae.fsio import atomic_write_json, fsync_dir, remove_stale_temps
from anomaly_ae.locks import FileLock
from anomaly_ae.runid import new_run_id, utc_now

log = logging.getLogger(__name__)

LEDGER = "ledger.parquet"
STATUS_SCORED, STATUS_REJECTED = "scored", "rejected"
# A scored file whose times changed but not its bytes (touch, cp -p, rsync -t): recorded in the
# ledger's cache so that the cheap check (`has_new_files`) stops seeing it as new.
STATUS_TOUCHED = "touched"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedFile(InboxFile):
    """A file copied for scoring, with the sha256 of the copied bytes ("" when `reason` says why it
    could not be read)."""

    sha256: str = ""
    unreadable: bool = False  # the file could not be read (`reason` says why), rather than refused unopened


def _empty_ledger() -> pa.Table:
    return schema.schema("ledger").empty_table()


def committed_runs(state_dir: Path) -> list[str]:
    """The names of the committed runs under `state_dir`/runs, oldest first."""
    runs = state_dir / "runs"
    if not runs.is_dir():
        return []
    return sorted(e.name for e in os.scandir(runs)
                  if e.is_dir() and not e.name.startswith(".") and (Path(e.path) / LEDGER).exists())


def read_ledger(state_dir: str | Path, *, consolidate: bool = True) -> pa.Table:
    """The ledger: every scored file version (the cache plus committed runs not in it yet).

    With `consolidate` the cache ``<state>/ledger.parquet`` is rewritten when runs were
    missing from it; call it only while holding the inbox lock.
    """
    state_dir = Path(state_dir)
    cache_path = state_dir / LEDGER
    table, covered = _empty_ledger(), []
    if cache_path.exists():
        try:
            covered = schema.read_meta(cache_path, "ledger").get("runs", [])
            table = schema.validate(pq.read_table(cache_path), "ledger")
        except (OSError, ValueError, KeyError, DataError) as exc:  # a damaged cache: the runs' own parts rebuild it
            table, covered = _empty_ledger(), []
            if consolidate:
                _set_aside(cache_path, exc)
    missing = [r for r in committed_runs(state_dir) if r not in set(covered)]
    if not missing:
        return table
    parts = [schema.validate(pq.read_table(state_dir / "runs" / r / LEDGER), "ledger") for r in missing]
    table = pa.concat_tables([table, *parts])
    if consolidate:
        schema.write_table(cache_path, "ledger", table, extra={"runs": sorted([*covered, *missing])})
        log.info("ledger %s now covers %d run(s), %d file(s)", cache_path, len(covered) + len(missing), table.num_rows)
    return table


def _set_aside(cache_path: Path, exc: Exception) -> None:
    """Move a damaged ledger cache aside (kept for a look, never read again); the caller rebuilds it."""
    aside = cache_path.with_name(f"{cache_path.name}.damaged-{new_run_id()}")
    os.replace(cache_path, aside)
    log.warning("The inbox's ledger cache %s could not be read (%s): moved aside to %s and rebuilt from the run "
                "folders under %s. Files scored by runs whose folders were deleted are scored again.",
                cache_path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, aside.name,
                cache_path.parent / "runs")


class _Known:
    """What the ledger knows per path: exact (size, mtime) versions and content hashes."""

    def __init__(self, ledger: pa.Table):
        self.stats: set[tuple[str, int, int]] = set()
        self.hashes: set[tuple[str, str]] = set()
        for p, h, s, m in zip(*(ledger[c].to_pylist() for c in ("path", "sha256", "size", "mtime_ns"))):
            self.stats.add((p, s, m))
            self.hashes.add((p, h))

    def unchanged(self, f: InboxFile) -> bool:
        return (f.key, f.size, f.mtime_ns) in self.stats

    def scored(self, path: str, sha256: str) -> bool:
        return (path, sha256) in self.hashes


def has_new_files(folder: str | Path, state_dir: str | Path, settle_seconds: float) -> bool:
    """True when the inbox holds settled files whose version the ledger does not hold: a cheap check
    (one stat per file, the ledger read without the lock) of whether a run would find work.

    Raises:
        DataError: the inbox folder does not exist.
    """
    settled, _ = settled_files(folder, settle_seconds)
    if not settled:
        return False
    known = _Known(read_ledger(state_dir, consolidate=False))
    return any(not known.unchanged(f) for f in settled)


class InboxRun:
    """One inbox run: hold the lock, stage the new files, score them, commit (see module doc).

    Use as a context manager; entering takes the lock (BusyError when another run holds it),
    clears what dead runs left in ``.work`` and reads the ledger.
    """

    def __init__(self, folder: str | Path, state_dir: str | Path, *, settle_seconds: float = 5.0,
                 max_files: int = 0):
        self.folder, self.state_dir = Path(folder), Path(state_dir)
        self.settle_seconds, self.max_files = settle_seconds, max_files
        self.run_id = new_run_id()
        self.work = self.state_dir / ".work" / self.run_id
        self.input_dir, self.out_dir = self.work / "input", self.work / "run"
        self.final_dir = self.state_dir / "runs" / self.run_id
        self.pending = 0
        self.staged: list[StagedFile] = []
        self.touched: list[InboxFile] = []  # scored before, under other times
        self._touched_digests: dict[str, str] = {}
        self._lock = FileLock(self.state_dir / ".lock", f"Inbox {self.folder}")
        self._known: _Known | None = None

    def __enter__(self) -> InboxRun:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        try:
            shutil.rmtree(self.state_dir / ".work", ignore_errors=True)  # only dead runs' leftovers
            remove_stale_temps(self.state_dir)
            self._known = _Known(read_ledger(self.state_dir))
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            shutil.rmtree(self.work, ignore_errors=True)
        finally:
            self._lock.__exit__(*exc)

    def new_files(self) -> list[InboxFile]:
        """Settled files whose (path, size, mtime) the ledger does not hold, oldest first."""
        settled, self.pending = settled_files(self.folder, self.settle_seconds)
        new = [f for f in settled if not self._known.unchanged(f)]
        new.sort(key=lambda f: (f.mtime_ns, f.path))
        if self.max_files and len(new) > self.max_files:
            log.info("%d new files; scoring the oldest %d now, the rest in later runs", len(new), self.max_files)
            new = new[: self.max_files]
        return new

    def stage(self, files: list[InboxFile]) -> list[StagedFile]:
        """Copy `files` into the run's input folder; drops files that changed, vanished or were scored."""
        staged = []
        for f in files:
            item = self._stage_one(f)
            if item is not None:
                staged.append(item)
        self.staged = staged
        log.info("inbox %s: %d new files staged (%d still settling)", self.folder, len(staged), self.pending)
        if self.touched:
            self._remember_touched()
        return staged

    def _remember_touched(self) -> None:
        """Add the touched files' new versions to the ledger's cache (held under the lock): the
        next check then sees them as known, and no run is started for them again."""
        cache = self.state_dir / LEDGER
        table = read_ledger(self.state_dir)  # the cache, made current
        covered = schema.read_meta(cache, "ledger").get("runs", []) if cache.exists() else []
        now, fs = utc_now(), self.touched
        rows = pa.table({"path": [f.key for f in fs], "sha256": [self._touched_digests[f.key] for f in fs],
                         "size": [f.size for f in fs], "mtime_ns": [f.mtime_ns for f in fs],
                         "run_id": [self.run_id] * len(fs), "scored_at": [now] * len(fs),
                         "status": [STATUS_TOUCHED] * len(fs)}, schema=schema.schema("ledger"))
        schema.write_table(cache, "ledger", pa.concat_tables([table, rows]), extra={"runs": covered})
        log.info("%d files were touched since they were scored (the same bytes): not scored again", len(fs))

    def _stage_one(self, f: InboxFile) -> StagedFile | None:
        if f.reason:  # a link, pipe or folder: recorded as rejected, never opened
            return StagedFile(f.path, f.size, f.mtime_ns, f.reason)
        src, dst = self.folder / f.path, self.input_dir / f.path
        try:
            digest = _copy(src, dst)
            st = _stat(src) if digest is not None else None
        except _Unreadable as exc:  # recorded as rejected, so it cannot block later runs
            _discard(dst)
            return StagedFile(f.path, f.size, f.mtime_ns, f"could not read the file: {exc}", unreadable=True)
        except OSError as exc:  # writing the copy failed: the output's disk, not the inbox file
            _discard(dst)
            self._cannot_stage(exc, dst)
        if st is None:
            log.info("%s disappeared before it was read; skipped", f.key)
            _discard(dst)
            return None
        if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
            log.info("%s changed while it was read; it will be scored once it settles", f.key)
            _discard(dst)
            return None
        if self._known.scored(f.key, digest):
            _discard(dst)  # touched, not changed: already scored
            self.touched.append(f)
            self._touched_digests[f.key] = digest
            return None
        return StagedFile(f.path, f.size, f.mtime_ns, sha256=digest)

    def _cannot_stage(self, exc: OSError, dst: Path) -> NoReturn:
        """Fail the run on a failed write of a working copy: nothing is recorded for the file, so
        the next run reads it again (a full or read-only disk is said as such, naming that disk)."""
        raise_if_user_fixable(exc, dst, what=f"Cannot stage the inbox's files in {self.state_dir}")
        raise DataError(f"Cannot write the working copy {dst} of an inbox file ({exc.strerror or exc}); nothing "
                        f"was recorded, and the next run reads the file again. Check the disk that holds "
                        f"{self.state_dir}.") from None

    def scoreable(self) -> list[str]:
        """The staged files that could be read (relative paths), to be scored."""
        return [s.path for s in self.staged if s.reason is None]

    def commit(self, staged: list[StagedFile]) -> Path:
        """Write the ledger part into the run folder and rename it into ``runs/``: the commit."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _add_rejects(self.out_dir, [(s.key, s.reason) for s in staged if s.reason])
        rejected = _rejected_paths(self.out_dir)
        now = utc_now()
        schema.write_table(self.out_dir / LEDGER, "ledger", {
            "path": [s.key for s in staged], "sha256": [s.sha256 for s in staged],
            "size": [s.size for s in staged], "mtime_ns": [s.mtime_ns for s in staged],
            "run_id": [self.run_id] * len(staged), "scored_at": [now] * len(staged),
            "status": [STATUS_REJECTED if s.reason or s.key in rejected else STATUS_SCORED for s in staged]})
        atomic_write_json(self.out_dir / "inbox.json", {
            "run_id": self.run_id, "inbox": str(self.folder.resolve()), "committed": now,
            "files": len(staged), "rejected": len(rejected), "still_settling": self.pending})
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.out_dir, self.final_dir)
        fsync_dir(self.final_dir.parent)
        log.info("inbox run %s committed: %d files", self.run_id, len(staged))
        try:
            read_ledger(self.state_dir)  # refresh the cache; the run folder already counts
        except Exception:  # the cache is derived: the next run rebuilds it
            log.exception("refreshing %s failed; the next run will retry", self.state_dir / LEDGER)
        return self.final_dir


class _Unreadable(Exception):
    """Reading an inbox file failed (not writing its copy); the message is the reason."""


def _copy(src: Path, dst: Path) -> str | None:
    """Copy `src` to `dst` and return the sha256 of the bytes copied, or None when `src` is gone.

    Raises:
        _Unreadable: `src` could not be opened or read.
        OSError: `dst` could not be written (its folder, its disk).
    """
    try:
        fin = open(src, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from exc
    digest = hashlib.sha256()
    with fin:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "wb") as fout:
            while True:
                try:
                    chunk = fin.read(_CHUNK)
                except OSError as exc:
                    raise _Unreadable(exc.strerror or str(exc)) from exc
                if not chunk:
                    break
                digest.update(chunk)
                fout.write(chunk)
    return digest.hexdigest()


def _stat(src: Path) -> os.stat_result | None:
    """`src`'s stat after its copy (None when it is gone by now)."""
    try:
        return os.stat(src)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from exc


def _discard(path: Path) -> None:
    """Remove a working copy; a failure is left to the run's cleanup (it removes the whole folder)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _add_rejects(run_dir: Path, rejects: list[tuple[str, str]]) -> None:
    """Add files rejected before scoring (unreadable, links, pipes, folders) to the run's rejects table."""
    if not rejects:
        return
    path = run_dir / "rejects.parquet"
    if path.exists():
        table = schema.validate(pq.read_table(path), "rejects")
        rejects = [*zip(table["source"].to_pylist(), table["reason"].to_pylist()), *rejects]
    schema.write_table(path, "rejects", schema.rejects_columns(rejects))


def rejected_reasons(state_dir: str | Path) -> dict[str, str]:
    """{path: reason} of every file the committed inbox runs rejected (from their rejects tables)."""
    out: dict[str, str] = {}
    for run in committed_runs(Path(state_dir)):
        path = Path(state_dir) / "runs" / run / "rejects.parquet"
        if path.exists():
            table = pq.read_table(path, columns=["source", "reason"])
            out.update(zip(table["source"].to_pylist(), table["reason"].to_pylist()))
    return out


def _rejected_paths(run_dir: Path) -> set[str]:
    path = run_dir / "rejects.parquet"
    if not path.exists():
        return set()
    return set(pq.read_table(path, columns=["source"])["source"].to_pylist())


def summary(run: InboxRun, staged: list[StagedFile], scored: dict | None, final: Path | None) -> dict:
    """The JSON-able summary of an inbox run. Besides scoring's own rejects (in ``score``), it counts
    the files rejected before scoring: ``unreadable`` (reading them failed) and ``refused`` (never
    opened: links, pipes, folders); ``rejected`` names both with their reasons."""
    if scored is not None:
        scored = {**scored, "run": str(final)}
    return {"inbox": str(run.folder), "run_id": run.run_id if staged else None,
            "run_dir": str(final) if final else None, "new_files": len(staged), "pending": run.pending,
            "files": [s.key for s in staged], "score": scored,
            "rejected": {s.key: s.reason for s in staged if s.reason},
            "unreadable": sum(s.unreadable for s in staged),
            "refused": sum(bool(s.reason) and not s.unreadable for s in staged)}
