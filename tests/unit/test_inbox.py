"""The inbox's exactly-once machinery: settling, the ledger, the lock and the commit point.

Scoring itself is replaced by a stand-in that writes an empty run folder (scoring has its own
tests); what is under test here is which files get scored, once, whatever happens (through
`anomaly_ae.steps.score_inbox`, the one path the CLI and flows take)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from anomaly_ae import inbox as inbox_mod
from anomaly_ae.arrivals import InboxFile, settled_files
from anomaly_ae.errors import BusyError, DataError, NoSpaceError, NotWritableError
from anomaly_ae.inbox import InboxRun, read_ledger
from anomaly_ae.schema import write_table
from anomaly_ae.steps import inbox as steps_inbox
from anomaly_ae.steps import score_inbox

SCORED: list[list[str]] = []


@pytest.fixture(autouse=True)
def fake_scoring(monkeypatch):
    """Scoring writes the run folder (rejecting files named bad*) and records what it saw."""
    SCORED.clear()

    def score(input_dir, model, out_dir, *, files, run_id, **kwargs):
        seen = sorted(p.relative_to(input_dir).as_posix() for p in Path(input_dir).rglob("*") if p.is_file())
        assert seen == sorted(files)  # exactly the staged files are handed to scoring
        SCORED.append(seen)
        Path(out_dir).mkdir(parents=True)
        bad = [f for f in seen if Path(f).name.startswith("bad")]
        write_table(Path(out_dir) / "rejects.parquet", "rejects", {"source": bad, "reason": ["broken"] * len(bad)})
        return {"run": str(out_dir), "scored": len(seen) - len(bad), "run_id": run_id}

    monkeypatch.setattr(steps_inbox, "score", score)


def put(folder: Path, name: str, data: bytes = b"png bytes", age: float = 60.0) -> Path:
    """Write a file and set its mtime `age` seconds back (its ctime stays "now")."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def run(tmp_path, **kw) -> dict:
    kw.setdefault("settle_seconds", 0)
    return score_inbox(tmp_path / "inbox", tmp_path / "state", "model", **kw)


def ledger(tmp_path) -> list[str]:
    return sorted(read_ledger(tmp_path / "state", consolidate=False)["path"].to_pylist())


def test_listing_ignores_partial_hidden_and_non_images(tmp_path):
    box = tmp_path / "inbox"
    for name in ("a.png", "sub/b.JPG", "c.png.part", "d.tmp", "e.png.partial", "f.png.crdownload",
                 ".g.png", ".hidden/h.png", "notes.txt"):
        put(box, name)
    files, pending = settled_files(box, settle_seconds=5, now=time.time() + 10)
    assert [f.path for f in files] == ["a.png", "sub/b.JPG"] and pending == 0


def test_recent_changes_wait_even_with_an_old_mtime(tmp_path):
    box = tmp_path / "inbox"
    put(box, "old.png")
    time.sleep(0.6)
    before = time.time()  # old.png changed at least 0.6 s earlier; the next two at or after it
    put(box, "copied.png")  # cp -p style: just written, mtime set back; the ctime says "just now"
    put(box, "writing.png", age=0)
    # A fixed "now" (not the clock after the writes, which a busy machine may delay past the settling time).
    files, pending = settled_files(box, settle_seconds=0.5, now=before + 0.3)
    assert [f.path for f in files] == ["old.png"] and pending == 2
    files, pending = settled_files(box, settle_seconds=0.5, now=time.time() + 1)
    assert len(files) == 3 and pending == 0


def test_missing_inbox_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        settled_files(tmp_path / "nope", 1)


def test_each_file_once_across_runs_with_rejects_recorded(tmp_path):
    box = tmp_path / "inbox"
    put(box, "a.png")
    put(box, "bad.png")
    r1 = run(tmp_path)
    assert r1["new_files"] == 2 and SCORED == [["a.png", "bad.png"]]
    put(box, "b.png")
    r2 = run(tmp_path)
    assert r2["files"] == ["b.png"]
    assert run(tmp_path)["run_id"] is None and len(SCORED) == 2
    table = read_ledger(tmp_path / "state").to_pylist()
    assert {r["path"]: r["status"] for r in table} == {"a.png": "scored", "bad.png": "rejected", "b.png": "scored"}
    assert {r["run_id"] for r in table} == {r1["run_id"], r2["run_id"]}
    runs = sorted(p.name for p in (tmp_path / "state" / "runs").iterdir())
    assert runs == sorted([r1["run_id"], r2["run_id"]])
    assert all((tmp_path / "state" / "runs" / r / "ledger.parquet").exists() for r in runs)


def test_touched_file_is_not_rescored_but_changed_content_is(tmp_path):
    from anomaly_ae.inbox import has_new_files

    box = tmp_path / "inbox"
    put(box, "a.png", b"v1")
    run(tmp_path)
    put(box, "a.png", b"v1", age=30)  # same bytes, new mtime
    assert has_new_files(box, tmp_path / "state", 0)  # a new version, as far as one stat can tell
    assert run(tmp_path)["new_files"] == 0
    assert not has_new_files(box, tmp_path / "state", 0)  # known now: no run is started for it again
    put(box, "a.png", b"v2", age=20)
    assert run(tmp_path)["files"] == ["a.png"]
    status = read_ledger(tmp_path / "state")["status"].to_pylist()
    assert sorted(status) == ["scored", "scored", "touched"]  # two versions of a.png, each scored once


def test_max_files_takes_the_oldest_first(tmp_path):
    box = tmp_path / "inbox"
    for k, name in enumerate(["c.png", "a.png", "b.png"]):
        put(box, name, age=100 - k)
    assert run(tmp_path, max_files=2)["files"] == ["c.png", "a.png"]
    assert run(tmp_path, max_files=2)["files"] == ["b.png"]


def test_file_changing_while_copied_is_left_for_later(tmp_path):
    box = tmp_path / "inbox"
    put(box, "a.png", b"12345")
    with InboxRun(box, tmp_path / "state", settle_seconds=0) as r:
        stale = InboxFile("a.png", size=3, mtime_ns=1)  # what a listing saw before the writer went on
        assert r.stage([stale]) == []
        assert not (r.input_dir / "a.png").exists()


def test_overlapping_runs_are_refused(tmp_path):
    put(tmp_path / "inbox", "a.png")
    with InboxRun(tmp_path / "inbox", tmp_path / "state"):
        with pytest.raises(BusyError, match="Inbox .* is in use by process"):
            run(tmp_path)
    assert run(tmp_path)["new_files"] == 1


def test_concurrent_threads_score_each_file_once(tmp_path):
    box = tmp_path / "inbox"
    for k in range(20):
        put(box, f"{k:02d}.png")
    outcomes = []

    def worker():
        for _ in range(5):
            try:
                outcomes.append(run(tmp_path)["new_files"])
            except BusyError:
                outcomes.append("busy")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(o for o in outcomes if o != "busy") == 20
    assert ledger(tmp_path) == sorted(f"{k:02d}.png" for k in range(20))
    assert sorted(f for batch in SCORED for f in batch) == sorted(f"{k:02d}.png" for k in range(20))


def test_failed_run_commits_nothing_and_the_next_run_catches_up(tmp_path, monkeypatch):
    box = tmp_path / "inbox"
    put(box, "a.png")
    put(box, "b.png")

    def crash(self, staged):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(InboxRun, "commit", crash)
        with pytest.raises(OSError, match="disk full"):
            run(tmp_path)
    assert ledger(tmp_path) == [] and not (tmp_path / "state" / "runs").exists()
    put(box, "c.png")
    assert run(tmp_path)["files"] == ["a.png", "b.png", "c.png"]
    assert not any((tmp_path / "state" / ".work").glob("*"))


def test_crash_after_the_commit_keeps_the_run(tmp_path, monkeypatch):
    """The run folder's rename is the commit: a stale consolidated ledger is brought up to date."""
    box = tmp_path / "inbox"
    put(box, "a.png")
    run(tmp_path)
    put(box, "b.png")
    real = inbox_mod.read_ledger
    calls = []

    def refresh_fails(state_dir, consolidate=True):
        calls.append(1)
        if len(calls) == 2:  # the refresh right after the rename
            raise OSError("killed")
        return real(state_dir, consolidate=consolidate)

    with monkeypatch.context() as m:
        m.setattr(inbox_mod, "read_ledger", refresh_fails)
        run(tmp_path)
    assert ledger(tmp_path) == ["a.png", "b.png"]
    assert run(tmp_path)["new_files"] == 0


def test_ledger_cache_outlives_deleted_run_folders(tmp_path):
    import shutil

    put(tmp_path / "inbox", "a.png")
    r = run(tmp_path)
    shutil.rmtree(r["run_dir"])  # retention: old run folders removed
    assert ledger(tmp_path) == ["a.png"] and run(tmp_path)["new_files"] == 0


def test_a_damaged_ledger_cache_is_set_aside_and_rebuilt_from_the_runs(tmp_path, caplog):
    import logging

    box = tmp_path / "inbox"
    put(box, "a.png")
    run(tmp_path)
    put(box, "b.png")
    run(tmp_path)
    cache = tmp_path / "state" / "ledger.parquet"
    cache.write_bytes(cache.read_bytes()[:100])  # cut short: a crash of the disk, not of anomaly-ae
    with caplog.at_level(logging.WARNING):
        assert run(tmp_path)["new_files"] == 0  # nothing scored twice: the runs' parts know both files
    assert "could not be read" in caplog.text and "rebuilt from the run folders" in caplog.text
    assert ledger(tmp_path) == ["a.png", "b.png"]
    assert len(list(cache.parent.glob("ledger.parquet.damaged-*"))) == 1
    put(box, "c.png")
    assert run(tmp_path)["files"] == ["c.png"]


def test_leftovers_of_a_killed_run_are_cleared(tmp_path):
    put(tmp_path / "inbox", "a.png")
    junk = tmp_path / "state" / ".work" / "20200101T000000-dead00" / "input" / "x.png"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"half")
    assert run(tmp_path)["files"] == ["a.png"]
    assert not junk.exists()


def test_links_pipes_and_folders_named_like_images_are_recorded_as_rejected(tmp_path):
    """Nothing with an image name is skipped silently: each entry that is no regular file is in
    the ledger as rejected, once, with its reason in the run's rejects table."""
    box = tmp_path / "inbox"
    put(box, "good.png")
    outside = put(tmp_path / "elsewhere", "x.png")
    os.symlink(box / "good.png", box / "inside-link.png")
    os.symlink(outside, box / "outside-link.png")
    os.symlink(box / "gone.png", box / "broken.png")
    os.mkfifo(box / "pipe.png")
    (box / "dir.png").mkdir()
    os.symlink(tmp_path / "elsewhere", box / "linked-folder")
    r = run(tmp_path)
    reasons = inbox_mod.rejected_reasons(tmp_path / "state")
    table = read_ledger(tmp_path / "state", consolidate=False)
    status = dict(zip(table["path"].to_pylist(), table["status"].to_pylist()))
    rejected = {"inside-link.png", "outside-link.png", "broken.png", "pipe.png", "dir.png", "linked-folder"}
    assert status == {"good.png": "scored", **{k: "rejected" for k in rejected}}
    assert set(reasons) == rejected and r["rejected"] == reasons
    assert (r["refused"], r["unreadable"]) == (len(rejected), 0)  # counted, for the run's state message
    assert reasons["pipe.png"] == "not a regular file"
    assert reasons["dir.png"] == "is a directory, not an image file"
    assert reasons["broken.png"].startswith("broken symbolic link")
    assert reasons["inside-link.png"].startswith("symbolic link (to ") and "regular files only" in reasons["inside-link.png"]
    assert SCORED == [["good.png"]]  # the pipe was never opened (that would hang)
    assert run(tmp_path)["new_files"] == 0  # recorded once, not again on every run
    (box / "dir.png" / "a.png").write_bytes(b"png bytes")  # a folder that now holds a file is walked into
    os.utime(box / "dir.png" / "a.png", (time.time() - 60, time.time() - 60))
    assert run(tmp_path)["files"] == ["dir.png/a.png"]


class _FailingFile:
    """A file object whose reads or writes fail with `code` (a full disk, an I/O error...)."""

    def __init__(self, real, code: int, op: str):
        self._real, self._code, self._op = real, code, op

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()

    def close(self):
        self._real.close()

    def read(self, *args):
        if self._op == "read":
            raise OSError(self._code, os.strerror(self._code))
        return self._real.read(*args)

    def write(self, data):
        if self._op == "write":
            raise OSError(self._code, os.strerror(self._code))
        return self._real.write(data)


def fail_io(monkeypatch, tmp_path, code: int, op: str) -> None:
    """Make the inbox's file copies fail with `code`: reading the inbox file ("read"), opening its
    working copy ("open") or writing to it ("write")."""
    import builtins

    def failing_open(path, mode="r", *args, **kwargs):
        ours = Path(path).is_relative_to(tmp_path / ("inbox" if op == "read" else "state"))
        if ours and op == "open" and "w" in mode:
            raise OSError(code, os.strerror(code), str(path))
        f = builtins.open(path, mode, *args, **kwargs)
        return _FailingFile(f, code, op) if ours and op != "open" else f

    monkeypatch.setattr(inbox_mod, "open", failing_open, raising=False)


@pytest.mark.parametrize(("code", "op", "error", "message"), [
    (errno.ENOSPC, "write", NoSpaceError, r"No space left on .* while writing .*state/\.work/"),
    (errno.EDQUOT, "write", NoSpaceError, r"No space left on .* while writing .*state/\.work/"),
    (errno.EROFS, "open", NotWritableError, r"Cannot stage the inbox's files in .*state: .* is on a read-only"),
    (errno.EIO, "write", DataError, r"Cannot write the working copy .*state/\.work/.*Input/output error"),
])
def test_a_failed_write_of_a_working_copy_fails_the_run_and_records_nothing(tmp_path, monkeypatch, caplog, code, op,
                                                                             error, message):
    """The output's disk, not the inbox file: the run fails naming it, records nothing (no
    rejected entry, no warning saying so) and the next run scores the file."""
    box = tmp_path / "inbox"
    put(box, "a.png")
    os.symlink(box / "gone.png", box / "broken.png")  # a refused entry: not recorded either
    with monkeypatch.context() as m:
        fail_io(m, tmp_path, code, op)
        with pytest.raises(error, match=message):
            run(tmp_path)
    assert ledger(tmp_path) == [] and SCORED == []
    assert not any("recorded as rejected" in r.getMessage() for r in caplog.records)
    r = run(tmp_path)
    assert r["files"] == ["a.png", "broken.png"] and SCORED == [["a.png"]]
    assert (r["unreadable"], r["refused"]) == (0, 1)
    assert any("recorded as rejected" in rec.getMessage() for rec in caplog.records)


def test_a_file_that_cannot_be_read_is_recorded_as_rejected(tmp_path, monkeypatch):
    """Reading the inbox file fails: that file is rejected (it cannot block later runs); the
    others are scored."""
    box = tmp_path / "inbox"
    put(box, "a.png")
    with monkeypatch.context() as m:
        fail_io(m, tmp_path, errno.EIO, "read")
        r = run(tmp_path)
    assert r["rejected"] == {"a.png": "could not read the file: Input/output error"}
    assert (r["unreadable"], r["refused"]) == (1, 0) and SCORED == []
    assert ledger(tmp_path) == ["a.png"] and run(tmp_path)["new_files"] == 0


def test_the_arrival_check_sees_only_settled_unscored_files(tmp_path):
    from anomaly_ae.inbox import has_new_files

    box, state = tmp_path / "inbox", tmp_path / "state"
    box.mkdir()
    assert not has_new_files(box, state, 0)
    put(box, "fresh.png", age=0)
    assert not has_new_files(box, state, 60)  # still settling
    assert has_new_files(box, state, 0)
    run(tmp_path)
    assert not has_new_files(box, state, 0)  # scored: the ledger holds it
    put(box, "later.png")
    assert has_new_files(box, state, 0)
