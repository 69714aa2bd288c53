"""How long the batch report takes for a large batch (the goal: 10,000 items in under 30 s on a CPU).

A real run folder is copied and its scores.parquet replaced by N synthetic rows drawn from the
real scores (run.json's counts follow); the report of the real run is the baseline, built in
the same process. Without --run, a small real run is made first from the bundled 8x8 digits.

    python bench/report_speed.py                      # 10,000 items
    python bench/report_speed.py --run data/runs/x --items 100000

Results are printed and written to bench/results/report_speed.json.
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

from anomaly_ae import report, steps
from anomaly_ae.config import DetectorConfig, TrainConfig
from anomaly_ae.schema import write_table

RESULTS = Path(__file__).parent / "results" / "report_speed.json"


def small_run(workdir: Path) -> Path:
    """A real scoring run of the bundled digits (digit 0 normal, one training epoch)."""
    steps.ingest("sample:digits", workdir / "ds")
    steps.train(workdir / "ds", workdir / "model", normal=["0"], config=DetectorConfig(train=TrainConfig(epochs=1)))
    steps.score(workdir / "ds", workdir / "model", workdir / "run", split="test", report=False)
    return workdir / "run"


def enlarge(run_dir: Path, out: Path, n: int, seed: int = 0) -> Path:
    """Copy `run_dir` to `out` with `n` synthetic score rows resampled from the real ones."""
    import pyarrow.parquet as pq

    shutil.copytree(run_dir, out)
    real = pq.read_table(run_dir / "scores.parquet").to_pydict()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(real["score"]), n)
    score = np.asarray(real["score"])[pick] * rng.lognormal(0.0, 0.05, n)
    run = json.loads((run_dir / "run.json").read_text())
    threshold = run["threshold"]["threshold"]
    cal = np.sort(np.asarray(run["calibration_scores"]))
    rank = np.empty(n, np.int64)
    rank[np.argsort(-score, kind="stable")] = np.arange(1, n + 1)
    table = {"image_id": [f"{i:016x}" for i in range(n)], "path": [f"synthetic/{i}.png" for i in range(n)],
             "split": ["test"] * n, "label": [real["label"][k] for k in pick],
             "class_name": [real["class_name"][k] for k in pick], "is_anomaly": [real["is_anomaly"][k] for k in pick],
             "score": score, "p_value": (1 + len(cal) - np.searchsorted(cal, score, "left")) / (len(cal) + 1),
             "flagged": score > threshold, "rank": rank, "sha256": ["0" * 64] * n}
    write_table(out / "scores.parquet", "scores", table, extra={"threshold": threshold})
    run["counts"].update(items=n, scored=n, flagged=int((score > threshold).sum()))
    (out / "run.json").write_text(json.dumps(run))
    return out


def timed_build(run_dir: Path) -> float:
    t0 = time.perf_counter()
    report.build(run_dir)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a real run folder to start from (default: make a small one)")
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.run or small_run(tmp / "small")
        baseline = timed_build(shutil.copytree(source, tmp / "baseline"))  # also warms the imports
        baseline = min(baseline, timed_build(tmp / "baseline"))
        big = enlarge(source, tmp / "big", args.items)
        seconds = min(timed_build(big) for _ in range(2))
        size = (big / "report.html").stat().st_size
        baseline_items = json.loads((source / "run.json").read_text())["counts"]["scored"]
    result = {"items": args.items, "seconds": round(seconds, 3), "baseline_items": baseline_items,
              "baseline_seconds": round(baseline, 3), "ratio": round(seconds / baseline, 2), "report_bytes": size,
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "python": platform.python_version()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"report for {args.items} items: {seconds:.2f} s (baseline {result['baseline_items']} items: "
          f"{baseline:.2f} s, ratio {result['ratio']}); {size / 1e6:.1f} MB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
