"""Example items in the report: original, reconstruction and heat map (error or defect probability) side by side."""

from __future__ import annotations

import base64
import io
from html import escape

import numpy as np

from anomaly_ae.report.figures import matplotlib_agg
from anomaly_ae.report.html import fmt, tagged

HEAT_CMAP = "inferno"


OUTLINE_RGB = (0, 255, 255)  # cyan: stands apart from every colour of the heat map


THUMB_MIN = 112  # small images are enlarged by a whole factor to at least this many pixels


def heat_lut() -> np.ndarray:
    """The heat map's 256 RGB colours (uint8)."""
    cmap = matplotlib_agg().colormaps[HEAT_CMAP]
    return np.rint(cmap(np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _to_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]


def _enlarge(rgb: np.ndarray) -> np.ndarray:
    factor = max(1, -(-THUMB_MIN // max(rgb.shape[:2])))
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else rgb


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels on the boundary between the mask's two regions (both sides; image edges are no boundary)."""
    edge = np.zeros(mask.shape, bool)
    rows, cols = mask[1:, :] != mask[:-1, :], mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= rows
    edge[:-1, :] |= rows
    edge[:, 1:] |= cols
    edge[:, :-1] |= cols
    return edge


def example_panels(pixels: np.ndarray, recon: np.ndarray, error_map: np.ndarray, mask: np.ndarray | None,
                   vmax: float, lut: np.ndarray) -> tuple[str, str, str]:
    """Original, reconstruction and error overlay (mask outlined in cyan) of one item, as base64 PNG.

    `vmax` is the error mapped to the hottest colour; it is shared by all examples so their
    maps compare.
    """
    rgb, rec = _to_rgb(pixels), _to_rgb(recon)
    overlay = heat_overlay(pixels, error_map, vmax, lut)
    if mask is not None:
        overlay[_outline(mask > 127)] = OUTLINE_RGB
    out = [base64.b64encode(png_bytes(a)).decode("ascii") for a in (rgb, rec, overlay)]
    return out[0], out[1], out[2]


def heat_overlay(pixels: np.ndarray, error_map: np.ndarray, vmax: float, lut: np.ndarray) -> np.ndarray:
    """The heat map (`error_map` up to `vmax` in the colours of `lut`) over the image in gray, RGB uint8."""
    gray = _to_rgb(pixels).astype(np.float32).mean(axis=2, keepdims=True)
    level = np.clip(np.nan_to_num(error_map.astype(np.float32)) / max(vmax, 1e-12), 0, 1)
    heat = lut[np.rint(level * 255).astype(np.uint8)].astype(np.float32)
    return np.clip(0.35 * gray + 0.65 * heat, 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An image (h, w, 1 or 3) as PNG, small images enlarged by a whole factor (THUMB_MIN)."""
    from PIL import Image

    a = _enlarge(np.ascontiguousarray(_to_rgb(rgb) if rgb.ndim == 3 and rgb.shape[2] == 1 else rgb))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _heat_scale(examples: list[dict]) -> float:
    """The error shown at full heat: the 99.5th percentile over all examples, so their maps compare."""
    maps = [np.frombuffer(e["error_map"], "<f2").astype(np.float32) for e in examples if e.get("error_map")]
    values = np.concatenate(maps) if maps else np.zeros(1, np.float32)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, 99.5)) if len(values) else 1.0


# What the heat map shows: the reconstruction error, or for the discriminative kind (draem) the
# probability of a defect that its segmentation network outputs; and what the middle panel is (for
# the nearest kind, the nearest good training image).
_RECONSTRUCTION = {"recon_title": "recon&shy;struction", "recon_alt": "Reconstruction by the autoencoder, {who}"}
_MAP_WORDS = {
    "error": {"title": "error map", "legend": "Error map", "low": "no error", "high": "large error",
              "meaning": "dark = well reconstructed, bright = large error",
              "alt": "Error heat map over the image, {who}; brighter means larger error", **_RECONSTRUCTION},
    "defect": {"title": "defect map", "legend": "Defect probability", "low": "looks normal",
               "high": "likely a defect", "meaning": "dark = looks normal, bright = likely a defect",
               "alt": "Defect-probability heat map over the image, {who}; brighter means more likely a defect",
               **_RECONSTRUCTION},
    "nearest": {"title": "difference map", "legend": "Difference from the nearest good image", "low": "the same",
                "high": "large difference", "meaning": "dark = as the nearest good image, bright = unlike it",
                "alt": "Heat map of the difference from the nearest good training image, {who}; brighter means "
                       "more unlike it", "recon_title": "nearest good image",
                "recon_alt": "The nearest good training image, {who}"},
}


def map_words(kind: str | None) -> dict:
    """The words that name the heat map (and the image beside it) of a model `kind`."""
    return _MAP_WORDS["defect" if kind == "draem" else "nearest" if kind == "nearest" else "error"]


def _legend(vmax: float, lut: np.ndarray, masks: bool, words: dict) -> str:
    stops = ",".join("#%02x%02x%02x" % tuple(int(c) for c in lut[i]) for i in np.linspace(0, 255, 8).astype(int))
    outline = "; <strong>cyan outline</strong>: ground-truth defect region" if masks else ""
    return (f'<p class="legend">{words["legend"]}: 0 <span class="bar" role="img" aria-label="colour scale from '
            f'dark ({words["low"]}) to bright yellow ({words["high"]})" '
            f'style="background:linear-gradient(to right,{stops})"></span> '
            f'&ge; {vmax:.3g} ({words["meaning"]}){outline}.</p>')


def _truth(e: dict) -> str:
    cls = f" (class {escape(str(e['class_name']))})" if e.get("class_name") is not None else ""
    if e.get("is_anomaly") is None:
        return "label unknown" + cls
    if bool(e["is_anomaly"]) != bool(e.get("flagged")):
        return ("anomalous" + cls + ": <strong>missed</strong>") if e["is_anomaly"] else (
            "normal" + cls + ": <strong>false alarm</strong>")
    return ("anomalous" if e["is_anomaly"] else "normal") + cls


def _card(e: dict, rank: int | None, n: int, shape: list[int], vmax: float, lut: np.ndarray, words: dict) -> str:
    h, w, c = shape
    pixels = np.frombuffer(e["pixels"], np.uint8).reshape(h, w, c)
    recon = np.frombuffer(e["recon"], np.uint8).reshape(h, w, c)
    error = np.frombuffer(e["error_map"], "<f2").reshape(h, w)
    mask = np.frombuffer(e["mask"], np.uint8).reshape(h, w) if e.get("mask") else None
    imgs = example_panels(pixels, recon, error, mask, vmax, lut)
    who = f"item ranked {rank}" if rank else "item"
    alts = [f"Original image, {who}", words["recon_alt"].format(who=who),
            words["alt"].format(who=who)
            + ("; a cyan outline marks the ground-truth defect" if mask is not None else "")]
    titles = ("original", words["recon_title"], words["title"])
    panels = "".join(f'<figure><img src="data:image/png;base64,{b}" alt="{escape(a)}">'
                     f"<figcaption>{t}</figcaption></figure>" for b, a, t in zip(imgs, alts, titles))
    decision = '<span class="tag">FLAGGED</span>' if e.get("flagged") else "not flagged"
    facts = [("rank", f"{rank} of {n}" if rank else "n/a"), ("score", fmt(e["score"], ".4g")),
             ("p-value", fmt(e["p_value"], ".3g")), ("decision", decision), ("truth", _truth(e))]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    path = escape(str(e.get("path")))
    flag_class = " is-flagged" if e.get("flagged") else ""
    return (f'<article class="item{flag_class}" data-image-id="{escape(str(e["image_id"]))}">'
            f'<div class="panels">{panels}</div><dl>{dl}</dl><p class="path" title="{path}">{path}</p></article>')


def example_grid(data, kind: str) -> str:
    """The top flagged (`kind` 'top') or borderline items, each as original, reconstruction and heat map."""
    run, s = data.run, data.scores
    threshold = run["threshold"]["threshold"]
    items = sorted((e for e in data.examples if e["kind"] == kind and (kind != "top" or e["flagged"])),
                   key=lambda e: -e["score"])
    if kind != "top":  # a small batch's borderline items can be its top ones too: each item is shown once
        shown = {e["image_id"] for e in data.examples if e["kind"] == "top" and e["flagged"]}
        items = [e for e in items if e["image_id"] not in shown]
    n_flagged = run.get("counts", {}).get("flagged", int(s["flagged"].sum()))
    if data.examples_missing:
        return ("<p>The pictures of the flagged and borderline items cannot be shown: the run folder has lost its "
                "examples.parquet (its scores.parquet and flagged.csv list every item).</p>" if kind == "top" else "")
    if kind == "top":
        if not items:
            return "<p>No item was flagged.</p>"
        intro = (f"{tagged('top_flagged', str(n_flagged))} items were flagged; the {len(items)} with the highest "
                 "scores are shown, most anomalous first." if n_flagged != 1 else
                 f"{tagged('top_flagged', '1')} item was flagged.")
    else:
        if not items:
            return ""
        intro = (f"The {len(items)} items scoring closest to the threshold ({fmt(threshold, '.4g')}), on both sides: "
                 "the decisions a slightly different threshold would change.")
    n_cal = run.get("threshold", {}).get("n_calibration") or len(run.get("calibration_scores") or [])
    if n_cal:
        intro += (f" p-value: the share of calibration images scoring at least as high (with {n_cal} calibration "
                  f"images it cannot go below {1 / (n_cal + 1):.3g}).")
    lut, vmax, words = heat_lut(), _heat_scale(data.examples), map_words(run.get("model", {}).get("kind"))
    ranks = dict(zip(s["image_id"].tolist(), s["rank"].tolist()))
    shape = run["model"]["image_shape"]

    def grid(group: list[dict]) -> str:
        cards = "".join(_card(e, ranks.get(e["image_id"]), len(s["score"]), shape, vmax, lut, words) for e in group)
        size = "items big" if max(shape[:2]) >= 64 else "items"  # larger images get larger cards
        return f'<div class="{size}">{cards}</div>' if group else '<p class="muted">None.</p>'

    body = grid(items) if kind == "top" else (
        f"<h3>Just above the threshold: flagged ({sum(e['flagged'] for e in items)})</h3>"
        + grid([e for e in items if e["flagged"]])
        + f"<h3>Just below the threshold: not flagged ({sum(not e['flagged'] for e in items)})</h3>"
        + grid([e for e in items if not e["flagged"]]))
    return f"<p>{intro}</p>" + _legend(vmax, lut, any(e.get("mask") for e in items), words) + body
