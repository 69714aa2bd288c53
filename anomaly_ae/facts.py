"""What a step did, in one line for the logs: the work done (or skipped, and why), with its numbers.

The steps log these lines at INFO on the ``anomaly_ae`` logger, so they show in a Prefect run's
logs (flows forward the library's records) and with ``anomaly-ae ... -v``.
"""

from __future__ import annotations

# Rejected files named in a line, at most; the rest are counted.
MAX_NAMED = 5


def named(rejects: list[tuple[str, str]], total: int | None = None) -> str:
    """``a.png (empty file); b.png (corrupt ...) and 3 more``: the first MAX_NAMED of `total`."""
    total = len(rejects) if total is None else total
    shown = "; ".join(f"{source} ({reason})" for source, reason in rejects[:MAX_NAMED])
    more = total - min(len(rejects), MAX_NAMED)
    return shown + (f" and {more} more" if more > 0 else "")


def ingest(s: dict, rejects: list[tuple[str, str]]) -> str:
    """The ingest step's line."""
    counts, shape = s["counts"], "x".join(map(str, s["image_shape"]))
    if s["cached"]:
        return f"skipped ingest: {s['dataset']} is up to date with its source ({counts['images']} images {shape})"
    line = (f"ingested {counts['images']} images {shape} of {len(s['classes'])} classes into {s['dataset']}, "
            f"{counts['masks']} masks, {counts['rejects']} rejected")
    return line + (f": {named(rejects, counts['rejects'])}" if counts["rejects"] else "")


def train(s: dict) -> str:
    """The train step's line."""
    from anomaly_ae.selection import chosen_text

    if s["cached"]:
        return f"skipped training: {s['model']} was trained from the same data and settings ({s['kind']})"
    stop = {"early": "stopped early", "time": "stopped by the time budget",
            "time, still improving": "stopped by the time budget while still improving: likely undertrained"
            }.get(s.get("stopped"), "all epochs")
    chosen = f" (auto chose it: {chosen_text(s['selection'])})" if s.get("selection") else ""
    if s.get("member_epochs") or s.get("kept") is not None:  # several models, or one that keeps images
        return (f"trained {s['kind']}{chosen} on {images(s)}: {epochs(s)}, {s['seconds']:.0f} s on "
                f"{s['device']}; {threshold(s)}")
    return (f"trained {s['kind']}{chosen} on {images(s)}: {s['epochs']} epochs ({stop}), best epoch "
            f"{s['best_epoch']} with loss {s['train_loss']:.4g} / held-out {s['held_out_loss']:.4g}, "
            f"{s['seconds']:.0f} s on {s['device']}; {threshold(s)}")


def epochs(s: dict) -> str:
    """``12 epochs``, or for an ensemble each member's: ``epochs ae 26, draem 30, geometric 18``, or for
    the nearest kind the images it keeps: ``no epochs, it keeps 905 of them, compared at 100x100``."""
    if s.get("kept") is not None:
        at = s.get("compared_at")
        return f"no epochs, it keeps {s['kept']} of them" + (f", compared at {at[1]}x{at[0]}" if at else "")
    if s.get("member_epochs"):
        return "epochs " + ", ".join(f"{kind} {n}" for kind, n in s["member_epochs"].items())
    return f"{s['epochs']} epochs"


def threshold(s: dict) -> str:
    """``threshold 0.0312 for a 1% target (guaranteed 1%, 105 calibration images)``."""
    guaranteed = s.get("guaranteed_fpr")
    held = f"guaranteed {guaranteed:.3g}, " if guaranteed is not None else ""
    return (f"threshold {s['threshold']:.4g} for a {s['target_fpr']:.3g} false-positive target "
            f"({held}{s['n_calibration']} calibration images)")


def calibrate(s: dict) -> str:
    """The calibrate step's line."""
    if s.get("cached"):
        return f"skipped calibration: {s['model']} already holds the target ({threshold(s)})"
    return f"calibrated {s['model']} on {s['source']}: {threshold(s)}"


def score(s: dict, rejects: list[tuple[str, str]]) -> str:
    """The score step's line."""
    line = f"scored {s['scored']} items into {s['run']}: {run_message(s)}"
    if s.get("auroc") is not None:
        line += f"; AUROC {s['auroc']:.3f}"
    return line + (f"; unreadable: {named(rejects, s['rejects'])}" if s["rejects"] else "")


def images(s: dict) -> str:
    """The images a model trained on: '240 images', or '240 images and 8 reviewed false alarms'."""
    extra = s.get("n_reviewed_normals") or 0
    return f"{s['n_train']} images" + (f" and {extra} reviewed false alarms" if extra else "")


def model_saw(saw: dict) -> str:
    """The warning of a labelled run that scored images the model trained or calibrated on."""
    again = saw.get("recalibration", 0)
    parts = ([f"its dataset's split {saw['split']}"] if saw.get("split") else []) + (
        [f"{again} of them the images its threshold was last calibrated on"] if again else [])
    where = f" ({'; '.join(parts)})" if parts else ""
    also = (" Score --split with a split it never saw (e.g. --split test) to measure it."
            if saw.get("split") and not saw.get("scored_split") else "")  # "split": some of them trained it
    return (f"{saw['n_items']} of the scored items are images that trained or calibrated the model{where}: "
            "the metrics count them, so they overstate how well the model does." + also)


def run_message(s: dict) -> str:
    """A scoring run in a few words, for a run's state: ``4/9 flagged, 1 unreadable, drift: none``."""
    return (f"{s['flagged']}/{s['scored']} flagged, {s['rejects']} unreadable, "
            f"drift: {'warning' if s.get('drift') else 'none'}")
