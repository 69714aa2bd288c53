"""What a report shows, read from a run folder: the run's record, metrics, scores, examples and rejects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from anomaly_ae.errors import DataError
from anomaly_ae.fsio import read_json

MAX_REJECTS = 50


SCORE_COLUMNS = ["image_id", "class_name", "is_anomaly", "score", "flagged", "rank"]


@dataclass
class RunData:
    """What the report shows, read from a run folder."""

    run: dict
    metrics: dict | None
    scores: dict  # column name -> numpy array (object arrays for strings and nullable booleans)
    examples: list[dict] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)
    n_rejects: int = 0
    reviews: dict | None = None  # counts of the review decisions (anomaly_ae.reviews.counts), when any
    examples_missing: bool = False  # the run folder has lost its examples.parquet (the items' pictures)


def load(run_dir: str | Path) -> RunData:
    """Read what the report needs from a run folder.

    Raises:
        DataError: `run_dir` has no run.json or no scores.parquet.
    """
    from anomaly_ae.schema import read_parquet

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists() or not (run_dir / "scores.parquet").exists():
        raise DataError(f"{run_dir} is not a complete run folder (run.json and scores.parquet are needed). "
                        "Score a batch with `anomaly-ae score` first.")
    run = read_json(run_dir / "run.json")
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else None
    table = read_parquet(run_dir / "scores.parquet", columns=SCORE_COLUMNS)
    scores = {c: table[c].to_numpy(zero_copy_only=False) for c in SCORE_COLUMNS}
    examples_path = run_dir / "examples.parquet"
    examples = read_parquet(examples_path).to_pylist() if examples_path.exists() else []
    if not examples_path.exists():
        import logging

        logging.getLogger(__name__).warning("%s is missing: the report shows no pictures of the flagged and borderline "
                                            "items (score the batch again to have them)", examples_path)
    rejects, n_rejects = [], 0
    if (run_dir / "rejects.parquet").exists():
        rej = read_parquet(run_dir / "rejects.parquet")
        n_rejects = rej.num_rows
        head = rej.slice(0, MAX_REJECTS)
        rejects = list(zip(head["source"].to_pylist(), head["reason"].to_pylist()))
    from anomaly_ae import reviews as review_decisions

    decided = (review_decisions.counts(review_decisions.latest(run_dir))
               if (run_dir / review_decisions.REVIEWS_FILE).exists() else None)
    return RunData(run, metrics, scores, examples, rejects, max(n_rejects, run.get("counts", {}).get("rejects", 0)),
                   decided, examples_missing=not examples_path.exists())
