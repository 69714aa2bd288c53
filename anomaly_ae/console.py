"""What the command line shows: logging, progress bars and summaries, with rich (no typer here)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from rich.console import Console

# Output that is not a terminal (a pipe, a file) is not wrapped: a path stays on one line.
PIPED_WIDTH = 100_000
# Without a terminal, progress is a log line (shown with --verbose) at most this often, and at the end.
PROGRESS_LINE_SECONDS = 30.0


def _console(stderr: bool = False) -> Console:
    """A console that prints text as it is given: user text (paths, class names, messages) may
    hold brackets, so markup is off, and nothing is highlighted."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=piped,
                   width=PIPED_WIDTH if piped else None)


out_console = _console()
err_console = _console(stderr=True)


def setup_logging(verbose: bool) -> None:
    """Library logs to stderr: warnings, or everything from INFO with --verbose.

    On a terminal through rich; elsewhere one plain line per message (``WARNING: ...``).
    """
    from rich.highlighter import NullHighlighter
    from rich.logging import RichHandler

    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(console=err_console, show_path=False, markup=False,
                                               highlighter=NullHighlighter())
        fmt = "%(message)s"
    else:
        handler, fmt = logging.StreamHandler(sys.stderr), "%(levelname)s: %(message)s"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=fmt,
                        handlers=[handler], force=True)


@contextlib.contextmanager
def progress(label: str):
    """A progress bar on stderr; yields a callback ``(done, total, **fields)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not err_console.is_terminal:  # a bar cannot redraw in a pipe or file; it would leave blank lines
        yield progress_lines(label)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None, note="")

        def update(done: int, total: int | None, **fields) -> None:
            bar.update(task, completed=done, total=total, note=_fields(fields))

        yield update


def _fields(fields: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def progress_lines(label: str, every: float = PROGRESS_LINE_SECONDS):
    """Progress where no bar can be drawn (a log file, a scheduler's output): a callback like
    `progress`'s that logs one INFO line at most every `every` seconds and one when done, with the
    time so far and, when the total is known, about how long is left."""
    log = logging.getLogger("anomaly_ae.progress")
    start, last = time.monotonic(), [float("-inf")]

    def update(done: int, total: int | None, **fields) -> None:
        now = time.monotonic()
        finished = bool(total) and done >= total
        if now - last[0] < every and not finished:
            return
        last[0] = now
        elapsed = now - start
        left = f", about {_duration(elapsed * (total - done) / done)} left" if total and 0 < done < total else ""
        note = f" ({_fields(fields)})" if fields else ""
        log.info("%s: %s%s%s, %s so far%s", label, done, f" of {total}" if total else "", note, _duration(elapsed),
                 left)

    return update


def print_json(obj) -> None:
    out_console.print_json(json.dumps(obj, default=str))


def print_model_summary(s: dict, verb: str) -> None:
    """A model summary (from `train` or `info`) in one line, after how `auto` chose it, if it did."""
    from anomaly_ae import facts
    from anomaly_ae.selection import explain

    if s.get("selection"):
        out_console.print(explain(s["selection"]))
    if s.get("score_choice"):
        from anomaly_ae.scorechoice import describe as describe_score

        out_console.print(f"score method {s['score_choice']['chosen']}: {describe_score(s['score_choice'])}")
    out_console.print(
        f"Model {s['model']}{verb}: {s['kind']} on {', '.join(s['normal_classes'] or []) or 'all images'} "
        f"({facts.images(s)}, {facts.epochs(s)} on {s['device']}, {s['seconds']:.1f} s); threshold "
        f"{s['threshold']:.4g} for target FPR {s['target_fpr']:g} from {s['n_calibration']} held-out images.")
    if s.get("stopped") == "time, still improving":
        out_console.print("Its training was stopped by the time budget while the held-out loss still fell fast: it is "
                          "likely undertrained (train it again with more --max-minutes).")


def describe_preprocess(p: dict) -> str:
    """A preprocessing policy in words: 'L, resized bilinear, crop 0,0,10,10, 16-bit images read as 12-bit'."""
    how = [p["channels"], f"resized {p['resize']}"] + (["crop " + ",".join(map(str, p["crop"]))] if p.get("crop") else [])
    return ", ".join(how + ([f"16-bit images read as {p['bit_depth']}-bit"] if p.get("bit_depth") else []))


def print_layer_table(s: dict) -> None:
    """A model's layers (as torchsummary prints them): output shape and parameters of each."""
    from rich.table import Table

    table = Table("layer", "type", "output shape", "parameters",
                  title=f"Layers for one {'x'.join(map(str, s['input']))} input (h x w x channels)"
                        + (f"; {s['input_note']}" if s.get("input_note") else ""))
    for r in s["layers"]:
        table.add_row(r["layer"], r["type"], " x ".join(map(str, r["output"])), f"{r['parameters']:,}")
    out_console.print(table)
    out_console.print(f"{s['parameters']:,} parameters in all.")


def print_score_summary(s: dict) -> None:
    from rich.table import Table

    table = Table("", "", show_header=False, box=None)
    rows = [("scored", s["scored"]), ("flagged", f"{s['flagged']} ({s['flagged'] / max(s['scored'], 1):.1%})"),
            ("rejected", s["rejects"]), ("threshold", f"{s['threshold']:.4g}")]
    if s.get("target_fpr") is not None:
        rows.append(("target FPR", f"{s['target_fpr']:g}"))
    if s.get("guaranteed_fpr") is not None:
        rows.append(("guaranteed FPR", f"{s['guaranteed_fpr']:.3g} (only {s['n_calibration']} calibration images: "
                                       "the most the threshold can promise)"))
    for key, label in (("auroc", "AUROC"), ("auprc", "AUPRC"), ("fpr", "FPR at threshold"),
                       ("tpr", "TPR at threshold"), ("f1", "F1 at threshold"), ("pixel_auroc", "pixel AUROC")):
        if s.get(key) is not None:
            rows.append((label, f"{s[key]:.4f}"))
    if s.get("drift"):
        rows.append(("drift", "this batch's scores differ from the calibration images' (see the report)"))
    for k, v in rows:
        table.add_row(k, str(v))
    out_console.print(table)
    out_console.print(f"Run folder: {s['run']}" + (f"  report: {Path(s['run']) / s['report']}" if s.get("report") else ""))
