"""SIGKILL during ingest, training and scoring: nothing partial is left visible, and a rerun gives
the same result as an uninterrupted run (training resumes from its last epoch with --resume)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_png

EXE = str(Path(sys.executable).with_name("anomaly-ae"))
RTOL = 1e-5  # floats computed in other processes agree to this relative tolerance
pytestmark = pytest.mark.slow


def run(*args):
    proc = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def kill_when(args, ready, timeout=600.0, sig=signal.SIGKILL) -> tuple[set[int] | None, int]:
    """Start a command, send it `sig` as soon as `ready(its pid)` is true and wait for it to end;
    returns the processes it had started by then (its decode workers, their fork server and the
    resource tracker), or None if it finished first, and its exit status."""
    proc = subprocess.Popen([EXE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready(proc.pid):
            started = descendants(proc.pid)
            os.kill(proc.pid, sig)
            proc.communicate(timeout=120)
            return started, proc.returncode
        time.sleep(0.02)
    proc.communicate()
    return None, proc.returncode


def workers_run(pid: int) -> bool:
    """Decode workers run: the fork server has started at least one (besides the resource tracker)."""
    return len(descendants(pid)) >= 3


def descendants(pid: int) -> set[int]:
    """Live processes started by `pid`, directly or not."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(d.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def all_gone(pids: set[int], timeout: float = 120.0) -> bool:
    """Wait (a generous ceiling: a loaded machine is slow) until none of `pids` runs."""
    deadline = time.monotonic() + timeout
    while any(running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def assert_same_scores(a, b, det) -> None:
    """Two scores tables of one input scored by the model `det`: the same rows and labels; scores
    (computed in other processes, perhaps by other backends) within RTOL; flags alike except for
    scores within RTOL of the threshold, and p-values alike except for scores within RTOL of a
    calibration score (the calibration images themselves, when they are scored, tie with it)."""
    rest = [c for c in a.column_names if c not in ("score", "p_value", "flagged", "rank")]
    assert a.select(rest).equals(b.select(rest))
    score = b["score"].to_numpy()
    np.testing.assert_allclose(a["score"].to_numpy(), score, rtol=RTOL, atol=1e-12)
    differ = a["flagged"].to_numpy(zero_copy_only=False) != b["flagged"].to_numpy(zero_copy_only=False)
    near = np.abs(score - det.threshold_) <= RTOL * abs(det.threshold_)
    assert not (differ & ~near).any(), "flags differ for scores away from the threshold"
    cal = np.asarray(det.calibration_scores_)
    tie = (np.abs(score[:, None] - cal[None, :]) <= RTOL * np.abs(cal)[None, :]).any(1)
    step = 1 / (len(cal) + 1)
    gap = np.abs(a["p_value"].to_numpy() - b["p_value"].to_numpy())
    assert not (gap[~tie] > 1e-12).any(), "p-values differ for scores away from every calibration score"
    assert (gap[tie] <= step + 1e-12).all(), "a p-value moved more than one step"


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def many_pngs(mnist_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("many") / "pngs"
    pixels, classes, _ = mnist_images
    for k in range(3000):
        write_png(root / classes[k] / f"{k:05d}.png", pixels[k, :, :, 0])
    return root


def test_killed_ingest_leaves_nothing_and_rerun_matches(many_pngs, tmp_path):
    out = tmp_path / "ds"
    started, _ = kill_when(["ingest", many_pngs, "--out", out],
                           lambda pid: any(tmp_path.glob(".ds.tmp-*")) and workers_run(pid))
    assert started, "ingest finished before it could be interrupted"
    assert all_gone(started), "decode workers outlived the killed ingest"
    assert visible(tmp_path) == []
    run("ingest", many_pngs, "--out", out)
    run("ingest", many_pngs, "--out", tmp_path / "clean")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "ds"]  # the killed run's temporary is gone
    assert pq.read_table(out / "images.parquet").equals(pq.read_table(tmp_path / "clean" / "images.parquet"))


@pytest.mark.parametrize("command", ["ingest", "score"])
def test_ctrl_c_stops_at_once_and_leaves_nothing(command, many_pngs, mnist_model, tmp_path):
    """Ctrl-C while the decode workers run: the command ends within a bounded time with the
    usual 130, its temporary output is gone and so are its workers."""
    out = tmp_path / "out"
    args = ["ingest", many_pngs, "--out", out] if command == "ingest" else \
        ["score", many_pngs, "--model", mnist_model, "--out", out, "--no-report"]
    started, status = kill_when(args, lambda pid: any(tmp_path.glob(".out.tmp-*")) and workers_run(pid),
                                sig=signal.SIGINT)
    assert started, f"{command} finished before it could be interrupted"
    assert status == 130
    assert all_gone(started), "decode workers outlived the interrupted command"
    assert visible(tmp_path) == [] and not any(tmp_path.glob(".out.tmp-*"))


def test_killed_training_resumes_to_the_same_model(mnist_ds, mnist_images, tmp_path):
    args = ["train", mnist_ds, "--normal", "3", "--epochs", "6", "--seed", "1"]
    out = tmp_path / "m"
    state = lambda: list(tmp_path.glob(".m.train-*.pt"))
    assert kill_when([*args, "--out", out], lambda pid: bool(state()))[0] is not None
    assert visible(tmp_path) == [] and state(), "the per-epoch state should survive the kill"
    run(*args, "--out", out, "--resume")
    assert not state()
    run(*args, "--out", tmp_path / "clean")
    from anomaly_ae.detector import AutoencoderDetector

    test = mnist_images[0][:300]
    resumed, clean = AutoencoderDetector.load(out), AutoencoderDetector.load(tmp_path / "clean")
    # Trained in other processes: the same within a stated tolerance, not bit for bit.
    np.testing.assert_allclose(resumed.history_["train_loss"], clean.history_["train_loss"], rtol=RTOL)
    np.testing.assert_allclose(resumed.score_samples(test), clean.score_samples(test), rtol=RTOL)
    assert resumed.threshold_ == pytest.approx(clean.threshold_, rel=RTOL)


def test_killed_scoring_leaves_no_run_and_rerun_matches(many_pngs, mnist_model, tmp_path):
    out = tmp_path / "run"
    started, _ = kill_when(["score", many_pngs, "--model", mnist_model, "--out", out, "--no-report"],
                           lambda pid: any(tmp_path.glob(".run.tmp-*/.parts/*/scores.parquet")))
    # Killed once a partition's output exists: its decode workers may have ended by then (an empty set).
    assert started is not None, "scoring finished before it could be interrupted"
    assert all_gone(started), "decode workers outlived the killed scoring run"
    assert visible(tmp_path) == []
    run("score", many_pngs, "--model", mnist_model, "--out", out, "--no-report")
    run("score", many_pngs, "--model", mnist_model, "--out", tmp_path / "clean", "--no-report")
    from anomaly_ae.detector import AutoencoderDetector

    assert_same_scores(pq.read_table(out / "scores.parquet"), pq.read_table(tmp_path / "clean" / "scores.parquet"),
                       AutoencoderDetector.load(mnist_model))


def test_concurrent_scoring_into_one_folder_is_kept_apart(mnist_folder, mnist_model, tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen([EXE, "score", str(mnist_folder), "--model", str(mnist_model), "--out", str(out),
                               "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use" in refused or "already exists" in refused
    assert pq.read_table(out / "scores.parquet").num_rows == 1500


def children_of(pid: int) -> dict[int, bytes]:
    """{pid: command line} of the live child processes of `pid`."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out[int(d.name)] = cmd
    return out


def alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state


@contextlib.contextmanager
def with_prefect_server(args: list[str], tmp_path: Path, server: bytes = b"uvicorn", **popen):
    """Run `anomaly-ae ARGS` with no Prefect server configured; yields (the process, the pid of the
    temporary server it started) once that server runs; both are killed at the end if still alive."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.Popen([EXE, *args], env=env, stdout=subprocess.DEVNULL, **popen)
    found: list[int] = []
    try:
        deadline = time.monotonic() + 600  # starting a server on a loaded machine takes a while
        while not found and time.monotonic() < deadline and proc.poll() is None:
            found = [pid for pid, cmd in children_of(proc.pid).items() if server in cmd]
            time.sleep(0.2)
        assert found, f"`anomaly-ae {args[0]}` started no Prefect server (exit code {proc.poll()})"
        yield proc, found[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in found:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def stops_within(pid: int, seconds: float = 120.0) -> bool:
    """Whether process `pid` is gone within `seconds` (a generous ceiling: an idle server stops in one)."""
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive(pid)


def inbox_pipeline(tmp_path: Path, **tables) -> Path:
    from tests.integration.conftest import write_pipeline

    (tmp_path / "inbox").mkdir()
    return write_pipeline(tmp_path / "p.toml", {
        "pipeline": {"name": "p"}, "data": {"source": "sample:digits", "normal": ["0"]}, **tables,
        "output": {"folder": str(tmp_path / "out")}, "inbox": {"folder": str(tmp_path / "inbox")}})


@pytest.mark.parametrize("command,server", [("inbox", b"uvicorn"), ("serve", b"server\0start")])
def test_killed_command_takes_its_prefect_server_with_it(command, server, tmp_path):
    """SIGKILL of a command that started a Prefect server (none configured): the server stops too."""
    pipeline = inbox_pipeline(tmp_path)
    with with_prefect_server([command, str(pipeline)], tmp_path, server, stderr=subprocess.DEVNULL) as (proc, pid):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert stops_within(pid), "the Prefect server outlived the killed command"


def test_ctrl_c_during_training_says_how_to_go_on(mnist_ds, tmp_path):
    """Ctrl-C once an epoch is done: exit 130, and a line saying where the finished epochs are
    kept and that --resume goes on from there."""
    out = tmp_path / "m"
    proc = subprocess.Popen([EXE, "train", mnist_ds, "--normal", "3", "--epochs", "30", "--out", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not any(tmp_path.glob(".m.train-*.pt")):
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"training of {out} interrupted" in err and "--resume" in err, err
    assert visible(tmp_path) == [] and any(tmp_path.glob(".m.train-*.pt"))


EXIT_BLOCKED = """
import sys, threading
import anomaly_ae.cli as cli
cli.EXIT_GRACE_SECONDS = 1.0
threading.Thread(target=threading.Event().wait, name="never-ends").start()  # what exit would join forever

def interrupted():
    raise SystemExit(cli.INTERRUPTED)

cli.app = interrupted
cli.main()
"""


def test_ctrl_c_ends_the_process_even_when_its_exit_would_wait_forever():
    """After Ctrl-C the interpreter's exit joins threads and worker pools; one that never ends
    (an interrupted pool's manager waiting for a result) must not keep the command alive."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", EXIT_BLOCKED], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and "interrupted" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 60


def test_ctrl_c_of_a_prefect_command_is_one_line_and_130(tmp_path):
    """Ctrl-C in a terminal signals the whole foreground group: the temporary Prefect server must
    outlive it long enough to record the interrupted run (no failed-connection tracebacks, exit
    130, not 1), and then stop with the command."""
    pipeline = inbox_pipeline(tmp_path, train={"epochs": 200, "patience": 200})  # long enough to interrupt
    with with_prefect_server(["inbox", str(pipeline)], tmp_path, stderr=subprocess.PIPE, text=True,
                             start_new_session=True) as (proc, pid):  # its own group, as a terminal's job
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any((tmp_path / "out").rglob(".*.train-*.pt")) \
                and proc.poll() is None:
            time.sleep(0.2)  # the flow is running: training has finished an epoch
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "Connection refused" not in err and "interrupted" in err, err
        assert stops_within(pid), "the Prefect server outlived the interrupted command"
