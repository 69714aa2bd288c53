"""The report's plots: matplotlib figures as base64 PNG, framed with alt text and captions.

Every figure tells its series apart by line style, marker or hatching as well as colour, so
nothing depends on seeing colour. Figures are drawn on `matplotlib.figure.Figure` objects
(no pyplot state), which keeps building a report safe inside other programs.
"""

from __future__ import annotations

import base64
import io
import sys
from html import escape

import numpy as np

from anomaly_ae.report.html import fmt


def matplotlib_agg():
    """Import matplotlib on first use, with the Agg backend unless pyplot is already in use."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # never switch the backend under a running notebook
        matplotlib.use("Agg")
    return matplotlib


def _figure(width: float = 5.0, height: float = 4.2):
    from matplotlib.figure import Figure

    matplotlib_agg()
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    return fig, fig.add_subplot()


def _legend_below(fig, ax) -> None:
    """The legend under the plot, where it hides no line (and stays legible on a phone's width)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=10, frameon=False)


def png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _curve_figure(x, y, label: str, reference, point, point_label: str, axes: tuple[str, str, str],
                  legend: str, **curve) -> str:
    """A curve with a dotted reference (`reference(ax)` draws it) and the operating point ringed."""
    fig, ax = _figure()
    ax.plot(x, y, "-", lw=2, color="#1f5fa8", label=label, **curve)
    reference(ax)
    if None not in point:
        ax.plot([point[0]], [point[1]], "o", ms=11, mfc="none", mec="#c0392b", mew=2.5, label=point_label)
    ax.set(xlabel=axes[0], ylabel=axes[1], xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=axes[2])
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=9)
    return png_b64(fig)


def roc_figure(roc: dict, auroc: float, fpr: float | None, tpr: float | None) -> str:
    """ROC curve with the chance diagonal and the operating point ringed."""
    return _curve_figure(
        roc["fpr"], roc["tpr"], f"ROC (AUROC {auroc:.4f})",
        lambda ax: ax.plot([0, 1], [0, 1], ":", color="#777777", label="chance"),
        (fpr, tpr), f"operating point: FPR {fpr or 0:.4f}, TPR {tpr or 0:.4f}",
        ("false-positive rate (normals flagged)", "true-positive rate", "ROC curve"), "lower right")


def pr_figure(pr: dict, auprc: float, precision: float | None, recall: float | None, prevalence: float) -> str:
    """Precision-recall curve with the no-skill line and the operating point ringed."""
    return _curve_figure(
        pr["recall"], pr["precision"], f"PR (AUPRC {auprc:.4f})",
        lambda ax: ax.axhline(prevalence, ls=":", color="#777777",
                              label=f"no skill (share of anomalies {prevalence:.3f})"),
        (recall, precision), f"operating point: recall {recall or 0:.4f}, precision {precision or 0:.4f}",
        ("recall (anomalies flagged)", "precision", "Precision-recall curve"), "lower left",
        drawstyle="steps-post")


def score_bins(*arrays: np.ndarray) -> tuple[np.ndarray, bool]:
    """Shared histogram bins for all score arrays (fewer for small groups); logarithmic when scores span decades."""
    n = int(np.clip(2 * np.sqrt(max(len(a) for a in arrays)), 10, 50))
    values = np.concatenate([a for a in arrays if len(a)]) if any(len(a) for a in arrays) else np.zeros(1)
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if lo > 0 and np.percentile(values, 99) / max(np.percentile(values, 1), 1e-300) > 30:
        return np.geomspace(lo, hi * 1.0001, n + 1), True
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1), False


# Per group: (face colour, face opacity, hatch, edge colour): told apart by hatching and outline, not hue only


_STYLES = {
    "normal": ("#4c9be8", 0.45, None, "#1f5fa8"),
    "anomalous": ("#c0392b", 0.0, "////", "#c0392b"),
    "label unknown": ("#999999", 0.45, "..", "#444444"),
    "all items": ("#4c9be8", 0.45, None, "#1f5fa8"),
}


def histogram_figure(groups: dict[str, np.ndarray], calibration: np.ndarray, threshold: float) -> str:
    """Score histograms per group (share of the group per bin), calibration overlaid, threshold marked."""
    from matplotlib.colors import to_rgba

    bins, log = score_bins(calibration, *groups.values())
    fig, ax = _figure(6.0, 4.2)
    for name, scores in groups.items():
        if not len(scores):
            continue
        face, alpha, hatch, edge = _STYLES.get(name, _STYLES["all items"])
        counts, _ = np.histogram(scores, bins)
        ax.stairs(counts / len(scores), bins, fill=True, facecolor=to_rgba(face, alpha), edgecolor=edge,
                  hatch=hatch, lw=1.5, label=f"{name} ({len(scores)} item{'s' if len(scores) != 1 else ''})")
    if len(calibration):
        counts, _ = np.histogram(calibration, bins)
        ax.stairs(counts / len(calibration), bins, color="#222222", lw=2, ls="--",
                  label=f"calibration images ({len(calibration)}, held-out normals)")
    ax.axvline(threshold, color="#000000", lw=2, ls="-.", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score" + (" (log scale)" if log else ""),
           ylabel="share of the group's items per bin", title="Score distribution")
    if log:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return png_b64(fig)


def ecdf_figure(batch: np.ndarray, calibration: np.ndarray, normal_only: np.ndarray | None,
                threshold: float) -> str:
    """Cumulative score distributions of the batch and of the calibration images (the KS test's view)."""
    fig, ax = _figure(6.0, 4.0)
    series = [("this batch", batch, "-", "#1f5fa8"), ("calibration images", calibration, "--", "#222222")]
    if normal_only is not None and len(normal_only):
        series.insert(1, ("normal items of this batch", normal_only, ":", "#2e7d32"))
    for name, values, ls, colour in series:
        if len(values):
            x = np.sort(values)  # from 0 below the lowest score, so a batch of one item shows its step too
            ax.step(np.r_[x[0], x], np.r_[0, np.arange(1, len(x) + 1)] / len(x), where="post", ls=ls, lw=2,
                    color=colour, label=f"{name} ({len(x)})")
    ax.axvline(threshold, color="#000000", lw=1.5, ls="-.", label=f"threshold {threshold:.4g}")
    _, log = score_bins(batch, calibration)
    if log:
        ax.set_xscale("log")
    ax.set(xlabel="anomaly score" + (" (log scale)" if log else ""), ylabel="share of items scoring at most x",
           ylim=(-0.02, 1.02), title="Cumulative score distributions")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return png_b64(fig)


def training_figure(history: dict) -> str | None:
    """Training and held-out loss per epoch with the kept (best) epoch marked; None without history."""
    train, val = history.get("train_loss") or [], history.get("val_loss") or []
    if not train and not val:
        return None
    fig, ax = _figure(6.0, 3.8)
    if train:
        ax.plot(np.arange(1, len(train) + 1), train, "-o", ms=3, color="#1f5fa8", label="training loss")
    if val:
        ax.plot(np.arange(1, len(val) + 1), val, "--s", ms=3, color="#c0392b", label="held-out loss")
    best = history.get("best_epoch")
    if best is not None and 0 <= best < max(len(train), len(val)):
        ax.axvline(best + 1, color="#000000", ls=":", lw=1.5, label=f"kept epoch {best + 1}")
    positive = all(v > 0 for v in list(train) + list(val))
    if positive:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss" + (" (log scale)" if positive else ""), title="Training curve")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return png_b64(fig)


def figure(b64: str, alt: str, caption: str = "", wide: bool = False) -> str:
    """An embedded PNG with its alt text and an optional caption (caption: HTML, already escaped)."""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    kind = "plot wide" if wide else "plot"
    return f'<figure class="{kind}"><img src="data:image/png;base64,{b64}" alt="{escape(alt)}">{cap}</figure>'


def curves_html(m: dict) -> str:
    """ROC and precision-recall curves side by side (nothing when only one kind of item is present)."""
    if not m.get("roc") or not m.get("pr"):
        return '<p class="muted">No ROC or precision-recall curve: the batch needs both normal and anomalous items.</p>'
    prevalence = m["n_anomalous"] / m["n_items"] if m.get("n_items") else 0.0
    point = (f"the operating point (threshold {fmt(m.get('threshold'), '.4g')}) is ringed: FPR {fmt(m.get('fpr'))}, "
             f"TPR {fmt(m.get('tpr'))}, precision {fmt(m.get('precision'))}")
    roc = figure(roc_figure(m["roc"], m["auroc"], m.get("fpr"), m.get("tpr")),
                 f"ROC curve, AUROC {fmt(m['auroc'])}; dotted diagonal is chance; {point}.",
                 "ROC: solid line; chance: dotted; operating point: ring.")
    pr = figure(pr_figure(m["pr"], m["auprc"], m.get("precision"), m.get("recall"), prevalence),
                f"Precision-recall curve, AUPRC {fmt(m['auprc'])}; dotted line is no skill; {point}.",
                "Precision-recall: solid line; no skill: dotted; operating point: ring.")
    return f'<div class="figs">{roc}{pr}</div>'


def histogram_html(groups: dict[str, np.ndarray], calibration: np.ndarray, threshold: float) -> str:
    """The score histogram figure with its explanation."""
    names = ", ".join(f"{k} ({len(v)})" for k, v in groups.items() if len(v))
    alt = (f"Histogram of anomaly scores for {names}, with the calibration images' scores as a dashed outline and "
           f"the threshold {threshold:.4g} as a dash-dot vertical line; items right of it are flagged.")
    labelled = any(k != "all items" for k, v in groups.items() if len(v))
    kinds = ("Normal items: filled bars; anomalous items: hatched outline; " if labelled else
             "The batch's items (unlabelled: nothing says which are anomalous): filled bars; ")
    caption = ("Each group is scaled to its own size, so groups of different sizes compare. " + kinds +
               "calibration images (held-out normal images that set the threshold): dashed; threshold: dash-dot "
               "line, items to its right are flagged.")
    return figure(histogram_figure(groups, calibration, threshold), alt, caption, wide=True)


def ecdf_html(batch: np.ndarray, calibration: np.ndarray, normal_only: np.ndarray | None, threshold: float,
              drift: dict) -> str:
    """The cumulative score distributions behind the drift check."""
    alt = ("Cumulative distributions of the scores of this batch (solid) and of the calibration images (dashed)"
           + (", and of the batch's normal items (dotted)" if normal_only is not None else "")
           + f"; the largest vertical gap between batch and calibration is the KS statistic, "
           f"{fmt(drift.get('ks_statistic'), '.3f')}.")
    caption = ("The KS statistic is the largest vertical gap between the solid (batch) and dashed (calibration) "
               "curves; a curve shifted right means higher scores than the model saw on normal images.")
    return figure(ecdf_figure(batch, calibration, normal_only, threshold), alt, caption, wide=True)


def training_html(history: dict) -> str:
    """The training curve, or a note that the model holds no history."""
    b64 = training_figure(history)
    if b64 is None:
        return '<p class="muted">The model holds no training history.</p>'
    best = history.get("best_epoch")
    alt = (f"Training loss (solid, circles) and held-out loss (dashed, squares) over "
           f"{len(history.get('train_loss') or [])} epochs; the kept epoch "
           f"{'n/a' if best is None else best + 1} is a dotted vertical line.")
    return figure(b64, alt, "Training loss: solid with circles; held-out loss: dashed with squares; "
                  "kept epoch: dotted.", wide=True)
