"""How fast the console opens with a long history (the goal: 1,000 runs holding 100,000 scored
items, runs page in under 1 s).

A real run folder is made from the bundled 8x8 digits (or --run), then copied N times into
pipeline folders under one root, each copy with a fresh run id and time and its scores.parquet
resampled to ITEMS/N rows. Measured through the ASGI app in this process (no network): the runs
page cold (the first request walks the root and reads every run.json), warm (nothing changed),
after one new run, and a run page with its flagged list. The baseline, in the same run: reading
every run's scores.parquet, which is what a page computing its numbers from the scores would do.

    python bench/console_speed.py                   # 1,000 runs, 100,000 items
    python bench/console_speed.py --runs 200 --items 20000

Results are printed and written to bench/results/console_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from anomaly_ae import steps
from anomaly_ae.config import DetectorConfig, TrainConfig
from anomaly_ae.schema import write_table

RESULTS = Path(__file__).parent / "results" / "console_speed.json"
PIPELINES = 10


def make_history(template: Path, root: Path, runs: int, items: int) -> None:
    """`runs` copies of the template run in PIPELINES pipeline folders, `items` scored rows in all."""
    scores = pq.read_table(template / "scores.parquet")
    run = json.loads((template / "run.json").read_text())
    rng = np.random.default_rng(0)
    per_run = max(1, items // runs)
    for k in range(runs):
        out = root / f"line-{k % PIPELINES}" / "runs" / f"run-{k:05d}"
        out.mkdir(parents=True)
        rows = scores.take(rng.integers(0, scores.num_rows, per_run)).to_pydict()
        rows["image_id"] = [f"{k:05d}-{i:06d}" for i in range(per_run)]
        rows["rank"] = list(range(1, per_run + 1))
        write_table(out / "scores.parquet", "scores", rows)
        for name in ("metrics.json", "report.html", "flagged.csv"):
            if (template / name).exists():
                shutil.copy(template / name, out / name)
        flagged = int(np.sum(rows["flagged"]))
        record = {**run, "run_id": f"2026{k:08d}", "created": f"2026-01-01T00:00:{k % 60:02d}+00:00-{k:05d}",
                  "counts": {**run["counts"], "items": per_run, "scored": per_run, "flagged": flagged}}
        (out / "run.json").write_text(json.dumps(record))


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    from starlette.testclient import TestClient

    from anomaly_ae.ui.app import create_app

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--run", type=Path, default=None, help="a run folder to copy (default: one made here)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="console-speed-"))
    try:
        template = args.run
        if template is None:
            steps.ingest("sample:digits", work / "ds")
            steps.train(work / "ds", work / "model", normal=["0"], config=DetectorConfig(train=TrainConfig(epochs=2)))
            steps.score(work / "ds", work / "model", work / "template", split="test")
            template = work / "template"
        root = work / "root"
        t0 = time.perf_counter()
        make_history(template, root, args.runs, args.items)
        made = time.perf_counter() - t0
        client = TestClient(create_app([root]))

        def runs_page():
            r = client.get("/")
            assert r.status_code == 200 and r.text.count('class="run-link"') >= args.runs

        cold = timed(runs_page)
        warm = timed(runs_page, repeat=5)
        shutil.copytree(root / "line-0" / "runs" / "run-00000", root / "line-0" / "runs" / "run-new")
        one_new = timed(runs_page)
        key = client.get("/api/runs").json()[0]["key"]
        run_page = timed(lambda: client.get(f"/runs/{key}"), repeat=3)
        baseline = timed(lambda: [pq.read_table(p) for p in root.glob("*/runs/*/scores.parquet")])
        result = {
            "runs": args.runs, "items": args.items, "history_made_s": round(made, 2),
            "runs_page_cold_s": round(cold, 3), "runs_page_warm_s": round(warm, 3),
            "runs_page_after_one_new_run_s": round(one_new, 3), "run_page_s": round(run_page, 3),
            "baseline_read_every_scores_parquet_s": round(baseline, 3),
            "warm_vs_baseline": round(baseline / warm, 1) if warm else None,
            "target": "runs page < 1 s", "met_cold": cold < 1.0, "met_warm": warm < 1.0,
            "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        print(json.dumps(result, indent=2))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
