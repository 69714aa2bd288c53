"""Trend charts of a pipeline's runs as inline SVG (no plotting library, no script): one panel per
measure, oldest run on the left, a hover title on every point."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD, LEFT, TOP = 420, 130, 30, 52, 30  # LEFT: room for the scale's labels; TOP: for the title
MAX_POINTS = 500  # the newest runs a chart draws


def trend_svg(runs: list[dict]) -> str:
    """Flagged share (with the threshold's guaranteed false-positive rate as a dashed reference),
    drift statistic, rejects and the threshold (it moves when the model is recalibrated, e.g. with
    reviewed false alarms) over `runs` (summaries, oldest first)."""
    runs = runs[-MAX_POINTS:]
    panels = [
        ("flagged share", [r["flagged_share"] for r in runs], [r["guaranteed_fpr"] for r in runs], True),
        ("drift statistic (KS)", [r["ks"] for r in runs], None, False),
        ("rejects", [r["rejects"] for r in runs], None, False),
        ("threshold", [r["threshold"] for r in runs], None, False),
    ]
    ids = [r["id"] for r in runs]
    return "\n".join(_panel(title, values, ids, ref, pct) for title, values, ref, pct in panels)


def _panel(title: str, values: list, ids: list[str], reference: list | None, percent: bool) -> str:
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    refs = [v for v in (reference or []) if v is not None]
    top = 1.1 * (max([v for _, v in pts] + refs + [0]) or 1)
    n = max(len(values) - 1, 1)

    def xy(i, v):
        return (LEFT + (WIDTH - LEFT - PAD / 2) * i / n, HEIGHT - PAD / 2 - (HEIGHT - PAD / 2 - TOP) * v / top)

    def fmt(v):
        return f"{100 * v:.2f}%" if percent else (f"{v:.3g}" if isinstance(v, float) else str(v))

    parts = [f'<svg class="trend" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<text x="4" y="14" class="t">{escape(title)}</text>',
             f'<text x="{LEFT - 6}" y="{xy(0, top)[1] + 4:.1f}" class="ax" text-anchor="end">{escape(fmt(top))}</text>',
             f'<text x="{LEFT - 6}" y="{HEIGHT - PAD / 2 + 4}" class="ax" text-anchor="end">{escape(fmt(0))}</text>',
             f'<line x1="{LEFT}" y1="{xy(0, top)[1]:.1f}" x2="{WIDTH - PAD / 2}" y2="{xy(0, top)[1]:.1f}" class="axis"/>',
             f'<line x1="{LEFT}" y1="{HEIGHT - PAD / 2}" x2="{WIDTH - PAD / 2}" y2="{HEIGHT - PAD / 2}" class="axis"/>']
    if refs:
        ref = refs[-1]
        y = xy(0, ref)[1]
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - PAD / 2}" y2="{y:.1f}" class="ref">'
                     f'<title>guaranteed false-positive rate {fmt(ref)}</title></line>')
    if pts:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
        parts.append(f'<polyline points="{line}" class="line"/>')
        for i, v in pts:
            x, y = xy(i, v)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{escape(ids[i])}: {escape(fmt(v))}'
                         f'</title></circle>')
    parts.append("</svg>")
    return "".join(parts)
