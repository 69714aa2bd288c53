"""Decode workers: they start clean, whatever other threads of the caller hold; a dropped pool
lets the chunk in hand finish; and a script that re-runs its work in every worker still gets its
images decoded, with a message that says why."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from anomaly_ae.parallel import _close_pool, _make_pool
from tests.conftest import write_png

REPO = Path(__file__).resolve().parents[2]


def test_workers_start_clean_while_another_thread_holds_a_lock(tmp_path, monkeypatch):
    """Another thread is half-way through importing a module (it holds that module's import lock)
    when workers start, and a worker then imports the same module. A worker forked from this
    process would copy the held lock and wait for it forever; a clean worker imports it at once."""
    release = tmp_path / "release"
    (tmp_path / "half_imported.py").write_text(
        "import os, time\n"
        f"if os.getpid() == {os.getpid()}:  # only the importing test process waits\n"
        f"    while not os.path.exists({str(release)!r}):\n"
        "        time.sleep(0.01)\n"
    )
    (tmp_path / "imports_it.py").write_text("def load():\n    import half_imported\n    return 'imported'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import imports_it

    importer = threading.Thread(target=__import__, args=("half_imported",), daemon=True)
    importer.start()
    while "half_imported" not in sys.modules:  # the other thread is inside the module's body
        time.sleep(0.01)
    pool = _make_pool(1)
    try:
        assert pool.submit(imports_it.load).result(timeout=120) == "imported"
    finally:
        _close_pool(pool, finished=False)
        release.touch()
        importer.join(10)
        sys.modules.pop("half_imported", None)
        sys.modules.pop("imports_it", None)


def test_a_script_without_a_main_guard_still_ingests_and_is_told_why(tmp_path):
    """Each worker process imports the calling script; one whose work is not under
    `if __name__ == "__main__":` would start it again in every worker. Its images are decoded in
    its own process instead, and a warning says how to get the workers back."""
    rng = np.random.default_rng(0)
    for k in range(60):  # enough files for a worker pool
        write_png(tmp_path / "src" / f"{k:02d}.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "from anomaly_ae import steps\n"
        "meta = steps.ingest(sys.argv[1], sys.argv[2])\n"
        "print('images', meta['counts']['images'])\n"
    )
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "src"), str(tmp_path / "ds")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "images 60" in proc.stdout
    assert "Decode worker processes cannot start" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr  # the workers leave quietly
    assert proc.stdout.count("images 60") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src", "unguarded.py"]


def test_a_script_without_a_main_guard_does_its_steps_once(tmp_path):
    """Training, then scoring a folder: the workers the scoring starts import the script, whose
    training step would run again in them (a second training into the same folder). The steps
    leave such a process at once, so each step runs once, in the script's own process."""
    from anomaly_ae import steps

    rng = np.random.default_rng(0)
    for k in range(60):
        write_png(tmp_path / "src" / f"{k:02d}.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    steps.ingest(str(tmp_path / "src"), tmp_path / "ds")
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "from anomaly_ae import steps\n"
        "from anomaly_ae.config import DetectorConfig, TrainConfig\n"
        "print('script started')\n"
        "steps.train(sys.argv[1], sys.argv[2], config=DetectorConfig(train=TrainConfig(epochs=1)), force=True)\n"
        "print('trained')\n"
        "summary = steps.score(sys.argv[3], sys.argv[2], sys.argv[4], report=False)\n"
        "print('scored', summary['scored'])\n"
    )
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ds"), str(tmp_path / "model"),
                           str(tmp_path / "src"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.count("trained") == 1, proc.stdout
    assert "scored 60" in proc.stdout
    assert proc.stdout.count("script started") >= 2  # the workers did import the script


def test_a_dropped_pool_lets_the_chunk_in_hand_finish(tmp_path):
    """After an interruption the pool is dropped with a chunk still being decoded: the worker
    finishes and sends it (a worker leaving in the middle of sending would leave the pool's
    reader waiting forever for the rest); workers leave on their own only when this process dies."""
    import gc

    pool = _make_pool(1)
    fut = pool.submit(time.sleep, 1.0)
    time.sleep(0.3)  # the worker holds the task
    _close_pool(pool, finished=False)
    del pool
    gc.collect()
    assert fut.result(timeout=60) is None and not fut.cancelled()
