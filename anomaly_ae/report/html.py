"""HTML building blocks and number formats shared by every part of the report."""

from __future__ import annotations

from html import escape


def fmt(x, spec: str = ".4f") -> str:
    """A number in the report's format ('n/a' when missing)."""
    return "n/a" if x is None else format(x, spec)


def pval(x) -> str:
    """A p-value with two significant digits ('< 0.0001' for smaller ones)."""
    return "n/a" if x is None else ("&lt; 0.0001" if x < 1e-4 else format(x, ".2g"))


def pct(x) -> str:
    """A share as a percentage with one decimal ('n/a' when missing)."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def tagged(key: str, value: str) -> str:
    """An already escaped value, tagged with the name of the metric it shows."""
    return f'<span data-metric="{escape(key)}">{value}</span>'


def tabulate(head: list[str], rows: list[list[str]], caption: str = "") -> str:
    cap = f'<p class="muted">{caption}</p>' if caption else ""
    th = "".join(f'<th scope="col">{h}</th>' for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'{cap}<div class="table-wrap"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def fact_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in rows)
    return f'<div class="table-wrap"><table class="facts"><tbody>{body}</tbody></table></div>'


def notice(kind: str, text: str) -> str:
    label = {"warn": "&#9888; Warning:", "ok": "&#10003; OK:", "info": "Note:"}[kind]
    return f'<div class="notice {kind}" role="note"><strong>{label}</strong> {text}</div>'


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}" aria-labelledby="{key}-h"><h2 id="{key}-h">{title}</h2>{body}</section>'


def plain(v) -> str:
    return format(v, ".4g") if isinstance(v, float) else str(v)


def name_list(values) -> str:
    return ", ".join(escape(str(v)) for v in values or []) or "n/a"


def css() -> str:
    """The page's style sheet (package data)."""
    from importlib.resources import files

    return files("anomaly_ae.report").joinpath("style.css").read_text(encoding="utf-8")
