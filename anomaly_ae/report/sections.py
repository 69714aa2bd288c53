"""The report's sections, each a function of the run's data returning HTML."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anomaly_ae.report.rundata import RunData
from anomaly_ae.facts import model_saw
from anomaly_ae.report.html import fact_table, fmt, name_list, notice, pct, plain, pval, tabulate, tagged


def _cards(cards: list[tuple[str, str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><span class="label">{label}</span><span class="value">{tagged(key, value)}</span></div>'
        for label, key, value in cards) + "</div>"


def summary(data: RunData) -> str:
    run, m = data.run, data.metrics
    model, th, counts = run.get("model", {}), run.get("threshold", {}), run.get("counts", {})
    scored, flagged = counts.get("scored", 0), counts.get("flagged", 0)
    share = flagged / scored if scored else None
    cards = [("items scored", "scored", str(scored)), ("flagged", "flagged", str(flagged)),
             ("flagged share", "flagged_share", pct(share)), ("rejected files", "rejects", str(data.n_rejects))]
    if m is not None:
        cards.append(("AUROC", "auroc", fmt(m.get("auroc"))))
    if th.get("target_fpr") is None:
        target = f"none: threshold fixed by hand (calibration FPR {pct(th.get('calibration_fpr'))})"
    else:
        target = (tagged("target_fpr", pct(th["target_fpr"])) + " false positives on normal images, from "
                  + tagged("n_calibration", str(th.get("n_calibration"))) + " held-out normal images")
    shape = "&times;".join(str(v) for v in model.get("image_shape") or []) or "n/a"
    kind, method = escape(str(model.get("kind"))), escape(str(model.get("score_method")))
    if model.get("kind") == "draem":
        kind, method = "draem (discriminative)", "smoothed top-k of the defect probability map"
    elif model.get("kind") == "geometric":
        kind, method = "geometric", "how badly it tells which way the image is turned, or its reconstruction error"
    noun = "autoencoder"
    if model.get("kind") == "nearest":
        noun = "kind (no network: the nearest good training image is the reconstruction)"
    tiles = f", in {int(model['tile'])}-pixel tiles" if model.get("tile") else ""
    facts = [("Model", f"{kind} {noun}, score: {method}, images {shape} (height&times;width&times;channels)"
                       f"{tiles}"),
             *_selection_fact(model.get("selection")),
             ("Trained on", f'<span class="path">{escape(str(model.get("dataset") or "n/a"))}</span>'),
             ("Normal classes", tagged("normal_classes", name_list(model.get("normal_classes")))),
             ("Scored batch", f'<span class="path">{escape(str(run.get("input")))}</span> '
                              f'({escape(str(run.get("input_kind")))}, split {escape(str(run.get("split") or "all"))})'),
             ("Threshold", tagged("threshold", fmt(th.get("threshold"), ".4g"))
              + f" ({escape(str(th.get('method')))})"),
             ("Target false-positive rate", target),
             ("Flagged", f'{tagged("flagged_count", str(flagged))} of {scored} scored items ({pct(share)})'),
             ("Labels", "known: normal and anomalous items are told apart below" if run.get("labels_known")
              else "unknown: the batch has no normal class, so accuracy cannot be measured")]
    if data.reviews and data.reviews["reviewed"]:
        r = data.reviews
        facts.append(("Reviewed", f'{r["defect"]} confirmed defects, {r["false_alarm"]} false alarms: reviewed '
                                  f'precision {fmt(r["precision"], ".2f")} (the review in <code>anomaly-ae ui</code>; rebuild '
                                  "the report with <code>anomaly-ae report</code> to bring it up to date)"))
    return _cards(cards) + "".join(_summary_notices(data)) + fact_table(facts)


def _summary_notices(data: RunData) -> list[str]:
    th, out = data.run.get("threshold", {}), []
    if th.get("limited"):
        out.append(notice("warn", f"Only {th.get('n_calibration')} calibration images: the threshold cannot "
                                   f"guarantee the target false-positive rate of {pct(th.get('target_fpr'))}; the bound "
                                   f"that holds is {pct(th.get('guaranteed_fpr'))}. Calibrate on more held-out normal images "
                                   f"(about {int(np.ceil(1 / th['target_fpr']))} or more)."))
    collapse = data.run.get("model", {}).get("collapse") or {}
    if collapse.get("collapsed"):
        out.append(notice("warn", "The model collapsed: it draws nearly the same image whatever the input, so "
                                  "its scores only measure distance to one average image. Retrain it."))
    elif collapse.get("near_constant"):
        out.append(notice("info", "The model's reconstructions are close to one typical image: the training "
                                  "images are much alike (a uniform surface), so a score says how far an image "
                                  "departs from that typical image."))
    if (data.run.get("history") or {}).get("still_improving"):
        out.append(notice("warn", "The model's training was stopped by its time budget while its held-out loss "
                                  "still fell fast: it is likely undertrained, and may miss what a longer training "
                                  "finds. Train it again with more time (--max-minutes)."))
    for sentence in data.run.get("unlike_training") or []:
        out.append(notice("warn", escape(sentence[0].upper() + sentence[1:] + ".")))
    saw = data.run.get("model_saw")
    if saw and data.metrics is not None:
        out.append(notice("warn", escape(model_saw(saw))))
    verdict, _ = _drift_verdict(data)
    if verdict:
        out.append(notice("warn", verdict + ' See <a href="#drift">the drift check</a>.'))
    if data.n_rejects:
        out.append(notice("info", f'{data.n_rejects} file(s) could not be read and were not scored; see '
                                   f'<a href="#rejects">rejected files</a>.'))
    return out


def quality(data: RunData, plots) -> str:
    m = data.metrics
    if m is None:
        return ""
    c = m.get("confusion", {})
    rows = [("AUROC", tagged("auroc", fmt(m.get("auroc")))), ("AUPRC", tagged("auprc", fmt(m.get("auprc")))),
            ("True-positive rate (recall) at the threshold", tagged("tpr", fmt(m.get("tpr")))),
            ("False-positive rate at the threshold", tagged("fpr", fmt(m.get("fpr")))),
            ("Precision at the threshold", tagged("precision", fmt(m.get("precision")))),
            ("F1 at the threshold", tagged("f1", fmt(m.get("f1"))))]
    notes = ""
    if m.get("pixel_auroc") is not None:
        rows.append(("Pixel AUROC (error maps against defect masks)", tagged("pixel_auroc", fmt(m["pixel_auroc"]))))
        notes = mask_notice(data)
    best = m.get("f1_optimal")
    if best:
        where = ("by flagging every item: no threshold separates this batch better" if best.get("flags_all")
                 else f'at threshold {fmt(best.get("threshold"), ".4g")}')
        rows.append(("Best F1 on this batch (hindsight)", f'{fmt(best.get("f1"))} {where}'))
    confusion = tabulate(["", "flagged", "not flagged"],
                       [["<strong>anomalous</strong>", tagged("tp", str(c.get("tp"))) + " caught",
                         tagged("fn", str(c.get("fn"))) + " missed"],
                        ["<strong>normal</strong>", tagged("fp", str(c.get("fp"))) + " false alarm(s)",
                         tagged("tn", str(c.get("tn"))) + " passed"]],
                       f'{m.get("n_items")} labelled items: {m.get("n_anomalous")} anomalous, '
                       f'{m.get("n_normal")} normal')
    return fact_table(rows) + notes + confusion + plots.curves_html(m)


def mask_notice(data: RunData) -> str:
    """A warning when the ground-truth masks mark most of each image as defect (likely inverted)."""
    shares = [float((np.frombuffer(e["mask"], np.uint8) > 127).mean()) for e in data.examples if e.get("mask")]
    if not shares or np.median(shares) <= 0.5:
        return ""
    return notice("warn", f"The ground-truth masks mark {pct(float(np.median(shares)))} of a typical image as defect: "
                           "they are probably inverted (defects drawn black on white). The pixel AUROC is then "
                           "measured against the wrong pixels; with the masks inverted it would read about "
                           f"{fmt(1 - data.metrics['pixel_auroc'])}.")


def distribution(data: RunData, plots) -> str:
    s = data.scores
    score = s["score"].astype(float)
    if data.run.get("labels_known"):
        labels = s["is_anomaly"]
        groups = {"normal": score[labels == False], "anomalous": score[labels == True],
                  "label unknown": score[np.array([v is None for v in labels], bool)]}
    else:
        groups = {"all items": score}
    cal = np.asarray(data.run.get("calibration_scores") or [], float)
    return plots.histogram_html(groups, cal, data.run["threshold"]["threshold"])


def _drift_verdict(data: RunData) -> tuple[str | None, str]:
    """(warning or None, plain-words reading of the drift check)."""
    d, m = data.run.get("drift") or {}, data.metrics or {}
    dn = m.get("drift_normal_only")
    if d.get("ks_statistic") is None:
        return None, "Too few scores for a drift check."
    cal = np.asarray(data.run.get("calibration_scores") or [np.nan], float)
    higher = bool(np.median(data.scores["score"]) > np.median(cal))
    whole = (f"{pct(d['flagged_share'])} of the batch was flagged where about {pct(d['expected_share'])} is expected "
             f"on normal images, and its scores run {'higher' if higher else 'lower'} than the calibration images' "
             f"(KS statistic {fmt(d['ks_statistic'], '.3f')}, p {pval(d['ks_pvalue'])})")
    if dn and dn.get("ks_statistic") is not None:  # labels known: judge the normal items, anomalies aside
        if dn["drift"]:
            warning = ("The normal items of this batch do not look like the normal images the model knows "
                       f"(KS {fmt(dn['ks_statistic'], '.3f')}, {pct(dn['flagged_share'])} of them flagged where about "
                       f"{pct(dn['expected_share'])} is expected). The images may have changed (camera, lighting, "
                       "product, preprocessing): the threshold may no longer hold. Check the images, then "
                       "recalibrate or retrain on current normal images.")
            return warning, warning
        return None, (f"Its {dn['n']} normal items score like the calibration images (KS "
                      f"{fmt(dn['ks_statistic'], '.3f')}, p {pval(dn['ks_pvalue'])}; {pct(dn['flagged_share'])} of "
                      f"them flagged): no sign that the images changed. The whole batch, anomalies included: {whole}.")
    if not d.get("drift"):
        return None, f"No sign of drift: {whole}, within what normal variation explains."
    if higher:
        advice = ("Either the batch holds many anomalies, or the images changed (camera, lighting, product, "
                  "preprocessing). Look at the top flagged items before acting on the flags; if most look normal, "
                  "recalibrate or retrain on current normal images.")
    else:
        advice = ("Scores below those of held-out normal images usually mean the batch repeats images the model was "
                  "trained on, or is easier than usual; the false-positive rate will then not match the target.")
    return f"This batch does not look like the data the model knows: {whole}. {advice}", whole + "."


_DRIFT_ROWS = [("items", "n", str), ("KS statistic", "ks_statistic", lambda v: fmt(v, ".3f")),
               ("KS p-value", "ks_pvalue", pval), ("flagged", "flagged_share", pct),
               ("expected on normal images", "expected_share", pct), ("excess p-value", "excess_pvalue", pval),
               ("verdict", "drift", lambda v: "<strong>drift</strong>" if v else "no drift")]


def drift(data: RunData, plots) -> str:
    d, m = data.run.get("drift") or {}, data.metrics or {}
    warning, reading = _drift_verdict(data)
    dn = m.get("drift_normal_only")
    columns = [("whole batch", d, "drift_")] + ([("normal items only", dn, "drift_normal_")] if dn else [])
    rows = [[label] + [tagged(prefix + key, f(col.get(key))) for _, col, prefix in columns]
            for label, key, f in _DRIFT_ROWS]
    table = tabulate(["scores of"] + [name for name, _, _ in columns], rows,
                   "Two-sample Kolmogorov-Smirnov test against the calibration scores, and a one-sided "
                   "binomial test of the flagged count against the expected false-positive rate.")
    text = notice("warn", warning) if warning else notice("ok", reading)
    normal = data.scores["score"][data.scores["is_anomaly"] == False] if dn else None
    cal = np.asarray(data.run.get("calibration_scores") or [], float)
    return text + table + plots.ecdf_html(data.scores["score"].astype(float), cal, normal,
                                          data.run["threshold"]["threshold"], d)


def per_class(data: RunData) -> str:
    m = data.metrics
    if m is not None and m.get("per_class"):
        role = {True: "anomalous", False: "normal"}
        rows = [[f'{escape(str(r["class_name"]))} <span class="muted">({role[bool(r["is_anomaly"])]})</span>',
                 tagged(f"class:{r['class_name']}:n", str(r["n"])),
                 tagged(f"class:{r['class_name']}:flagged", str(r["flagged"])),
                 tagged(f"class:{r['class_name']}:auroc", fmt(r.get("auroc"))),
                 _class_rate(r)] for r in m["per_class"]]
        return tabulate(["class", "items", "flagged", "AUROC", "FPR or TPR"], rows,
                      "AUROC: this class against all normal items (anomalous classes only). The share flagged is "
                      "the false-positive rate (FPR) of a normal class and the true-positive rate (TPR) of an "
                      "anomalous one.")
    names = data.scores["class_name"]
    known = np.array([v is not None for v in names], bool)
    if not known.any():
        return ""
    rows = []
    for cls in sorted(set(names[known].tolist()), key=str):
        sel = names == cls
        rows.append([escape(str(cls)), tagged(f"class:{cls}:n", str(int(sel.sum()))),
                     tagged(f"class:{cls}:flagged", str(int(data.scores["flagged"][sel].sum()))),
                     pct(float(data.scores["flagged"][sel].mean()))])
    return tabulate(["folder class", "items", "flagged", "flagged share"], rows,
                  "No class of this batch is a normal class of the model, so no accuracy can be given.")


def _class_rate(row: dict) -> str:
    """The flagged share of a class, named as FPR (normal class) or TPR (anomalous class)."""
    key = "tpr" if row["is_anomaly"] else "fpr"
    name = f"class:{row['class_name']}:{key}"
    return f"{key.upper()} {tagged(name, fmt(row.get(key)))}"


def training(data: RunData, plots) -> str:
    h = data.run.get("history") or {}
    if not h:
        return ""
    best = h.get("best_epoch")
    n = len(h.get("train_loss") or [])
    early = " (stopped early: the held-out loss stopped improving)" if h.get("stopped_early") else ""
    facts = [("Epochs", f"{n}{early}"),
             ("Kept epoch", "n/a" if best is None else f"{best + 1} (lowest held-out loss)"),
             ("Time", f'{fmt(h.get("seconds"), ".1f")} s on {escape(str(h.get("device")))}, {h.get("steps")} steps')]
    return fact_table(facts) + plots.training_html(h)


def rejects(data: RunData) -> str:
    if not data.n_rejects:
        return '<p>None: every file was read and scored.</p>'
    rows = [[f'<span class="path">{escape(str(src))}</span>', escape(str(reason))] for src, reason in data.rejects]
    more = f" The first {len(rows)} are listed." if data.n_rejects > len(rows) else ""
    return (f"<p>{tagged('rejects_total', str(data.n_rejects))} file(s) could not be read and were not scored."
            f"{more}</p>"
            + tabulate(["file", "reason"], rows))


def metadata(data: RunData) -> str:
    run = data.run
    model, th = run.get("model", {}), run.get("threshold", {})
    rows = [("Run id", escape(str(run.get("run_id")))), ("Scored at", escape(str(run.get("created")))),
            ("Input", f'<span class="path">{escape(str(run.get("input")))}</span>'),
            ("Model file", f'<span class="path">{escape(str(model.get("path")))}</span>'),
            ("Model trained", escape(str(model.get("trained") or "not recorded"))),
            ("Classes of its training dataset", name_list(model.get("classes")) + " (normal: "
             + name_list(model.get("normal_classes")) + "; the others were left out of training)"
             if model.get("classes") and model.get("normal_classes")
             and set(map(str, model["normal_classes"])) != set(map(str, model["classes"]))
             else name_list(model.get("classes"))),
            ("Threshold", "; ".join(f"{escape(str(k))} {escape(plain(v))}" for k, v in th.items())),
            ("Partitions", escape(str(run.get("partitions"))))]
    rows += [(f"Time: {escape(k)}", f"{fmt(v, '.2f')} s") for k, v in (run.get("timings") or {}).items()]
    rows += [(f"Version: {escape(k)}", escape(str(v))) for k, v in (run.get("versions") or {}).items()]
    return fact_table(rows)


def _selection_fact(selection: dict | None) -> list[tuple[str, str]]:
    """The 'Model choice' row of a model chosen by ``--model auto``: every candidate's AUROC."""
    from anomaly_ae.selection import explain

    if not selection:
        return []
    return [("Model choice", escape(explain(selection)))]
