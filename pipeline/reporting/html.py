"""One self-contained HTML page: sections with stable ids, tables from frames, plots inlined as PNG."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import pandas as pd

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warn{color:#a15c00;font-weight:600}.alert{color:#b00020;font-weight:600}.ok{color:#1b7f3b}
section{margin-bottom:2em}img{max-width:100%}
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


def plt() -> Any:
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3})
    return pyplot


def png(fig: Any, alt: str) -> str:
    """``fig`` as an inline PNG ``<img>`` (the figure is closed)."""
    pyplot = plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot.close(fig)
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"
    return esc(value)


def table(df: pd.DataFrame | None, *, digits: int = 4, empty: str = "nothing to show") -> str:
    if df is None or df.empty:
        return f"<p>{esc(empty)}</p>"
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v, digits)}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, sections: Sequence[str], subtitle: str = "") -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>"
            + "".join(sections) + "</body></html>")
