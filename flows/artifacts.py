"""Artifacts and alerts of a scoring run: a markdown summary, a table of the top flagged items,
a link to the report; keyed per pipeline (``<pipeline>-<kind>-summary`` ...) so they version.
"""

from __future__ import annotations

import csv
from pathlib import Path

TOP_FLAGGED = 20


def artifact_key(pipeline: str, kind: str, what: str) -> str:
    """``<pipeline>-<kind>-<what>``: lowercase letters, digits and dashes, as Prefect requires."""
    import re

    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{pipeline}-{kind}-{what}".lower())).strip("-")


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_markdown(pipeline: str, kind: str, score: dict, run_dir: Path, extra: dict | None = None,
                     links: dict | None = None) -> str:
    """The markdown summary of one scoring run; with console `links` (`steps.console_links`) its
    links open the console over HTTP and the top flagged items show as heat-map thumbnails."""
    report = run_dir / "report.html"
    lines = [f"# {pipeline}: {kind} scoring run", ""]
    if links:
        lines.append(f"Run: [{run_dir.name}]({links['run']}) (review the flagged items there)")
        if report.exists():
            lines.append(f"  \nReport: [report.html]({links['report']})  \nModel: [layers, latent space]({links['model']})")
    else:
        lines.append(f"Run folder: [{run_dir}]({run_dir.resolve().as_uri()})")
        if report.exists():
            lines.append(f"  \nReport: [report.html]({report.resolve().as_uri()})")
    lines += ["", "| measure | value |", "|---|---|"]
    rows = {**(extra or {}), "scored": score.get("scored"), "flagged": score.get("flagged"),
            "rejected (unreadable)": score.get("rejects"), "threshold": score.get("threshold"),
            "target FPR": score.get("target_fpr"), "drift warning": score.get("drift")}
    for name in ("auroc", "auprc", "fpr", "tpr", "f1", "pixel_auroc"):
        if score.get(name) is not None:
            rows[name.upper() if name != "pixel_auroc" else "pixel AUROC"] = score[name]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]
    if links and links["thumbs"]:
        lines += ["", f"Top {len(links['thumbs'])} flagged items (heat map over the image):", "",
                  " ".join(f"[![{t['path']} {t['score']:.4g}]({t['url']})]({links['run']})" for t in links["thumbs"])]
    return "\n".join(lines) + "\n"


def top_flagged(run_dir: Path, n: int = TOP_FLAGGED) -> list[dict]:
    """The `n` highest-ranked flagged items of a run folder (from flagged.csv)."""
    path = run_dir / "flagged.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{"rank": int(r["rank"]), "path": r["path"], "score": float(r["score"]), "p_value": float(r["p_value"]),
             "class": r["class_name"]} for r in rows[:n]]


def publish(pipeline: str, kind: str, score: dict, run_dir: str | Path, extra: dict | None = None,
            console_url: str = "") -> dict:
    """Create the run's markdown, table and link artifacts; returns their keys. With a
    `console_url` (the pipeline's ``[output] console_url``) the links go to the console over HTTP,
    which browsers open from the Prefect UI (they refuse file:// links there)."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    from anomaly_ae import steps

    run_dir = Path(run_dir)
    links = steps.console_links(run_dir, console_url) if console_url else None
    keys = {w: artifact_key(pipeline, kind, w) for w in ("summary", "flagged", "report")}
    create_markdown_artifact(summary_markdown(pipeline, kind, score, run_dir, extra, links), key=keys["summary"],
                             description=f"{pipeline}: counts, threshold and metrics of the latest {kind} run")
    rows = top_flagged(run_dir)
    table = rows or {"rank": [], "path": [], "score": [], "p_value": [], "class": []}
    create_table_artifact(table, key=keys["flagged"],
                          description=f"{pipeline}: top {TOP_FLAGGED} flagged items of the latest {kind} run")
    target = run_dir / "report.html"
    target = target if target.exists() else run_dir
    if links:
        url, text = (links["report"] if target.name == "report.html" else links["run"]), f"{run_dir.name} in the console"
    else:
        url, text = target.resolve().as_uri(), str(target)
    create_link_artifact(url, link_text=text, key=keys["report"],
                         description=f"{pipeline}: the latest {kind} run's outputs")
    return keys


def alert(pipeline: str, kind: str, score: dict, run_dir: str | Path, min_flagged: int, logger) -> bool:
    """Warn (run log) and emit a Prefect event when the run flagged at least `min_flagged` items.

    Automations can act on the event ``anomaly-ae.items.flagged`` (notify, open a ticket...).
    """
    flagged = int(score.get("flagged") or 0)
    if not min_flagged or flagged < min_flagged:
        return False
    from prefect.events import emit_event

    logger.warning("ALERT %s: %d of %d items flagged as anomalous (run %s)", pipeline, flagged,
                   score.get("scored") or 0, run_dir)
    emit_event(event="anomaly-ae.items.flagged",
               resource={"prefect.resource.id": f"anomaly-ae.pipeline.{pipeline}", "prefect.resource.name": pipeline},
               payload={"kind": kind, "flagged": flagged, "scored": score.get("scored"), "run_dir": str(run_dir),
                        "threshold": score.get("threshold")})
    return True


def finish(pipeline: str, result: dict, score: dict | None, message: str | None = None):
    """The flow run's final state: Completed, with a message saying what the run found (by default
    ``4/9 flagged, 1 unreadable, drift: none``) and `result` as its data; the run is tagged with the
    pipeline's name and, when it scored, ``flagged`` or ``clean``."""
    from prefect.states import Completed

    from anomaly_ae.facts import run_message

    tags = [pipeline] + ([("flagged" if score["flagged"] else "clean")] if score else [])
    _tag_flow_run(tags)
    return Completed(message=message or run_message(score), data=result)


def _tag_flow_run(tags: list[str]) -> None:
    """Add `tags` to the current flow run (a failure is logged: tags must never fail a run)."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id).tags
            client.update_flow_run(flow_run.id, tags=sorted({*current, *tags}))
    except Exception as exc:  # the run's results stand without its tags
        get_run_logger().warning("could not tag the flow run with %s: %s", ", ".join(tags), exc)
