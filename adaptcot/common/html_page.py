"""Static HTML pages with figures embedded as PNG (no network, no scripts): what `report` and `compare` write.

A section is a title plus either a figure (matplotlib, drawn off-screen) or a line saying which data is missing;
tables are plain HTML. Every figure carries `data-figure=<key>` and every missing one `data-missing=<key>`, so a
test (or a user's script) can tell what a page holds without reading pixels.
"""

from __future__ import annotations

import base64
import html
import io

STYLE = ("body{font-family:sans-serif;max-width:62em;margin:2em auto;color:#222}img{max-width:100%}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
         "text-align:right}td:first-child,th:first-child{text-align:left}.missing{color:#888}")


def figure(width: float = 7, height: float = 3.6, nrows: int = 1, ncols: int = 1):
    """(pyplot, figure, axes) on the Agg backend (pages are drawn on machines without a screen): one axes, or an
    array of them for a grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(nrows, ncols, figsize=(width, height), dpi=100, squeeze=True)
    return plt, fig, ax


def png(plt, fig) -> str:
    """The figure as base64 PNG; the figure is closed (pages draw many)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def grouped_bars(ax, groups: dict[str, dict[str, float]], categories: list[str]) -> None:
    """One bar per (group, category), groups side by side within each category."""
    width = 0.8 / max(1, len(groups))
    for i, (name, values) in enumerate(groups.items()):
        ax.bar([j + i * width for j in range(len(categories))], [values.get(c, 0) for c in categories], width,
               label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))], categories, rotation=20, fontsize=8)
    ax.legend(fontsize=8)


def section(key: str, title: str, image: str | None, missing: str | None, extra: str = "") -> str:
    out = f"<h2 id='{key}'>{html.escape(title)}</h2>"
    if image:
        out += f"<figure data-figure='{key}'><img alt='{html.escape(title)}' src='data:image/png;base64,{image}'>" \
               "</figure>"
    else:
        out += f"<p class='missing' data-missing='{key}'>Not available: {html.escape(missing or 'no data')}.</p>"
    return out + extra


def table(key: str, header: list[str], rows: list[list]) -> str:
    """An HTML table; floats are shown with 3 decimals, None as an empty cell."""
    if not rows:
        return ""

    def cell(value) -> str:
        if value is None:
            return ""
        return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table data-table='{key}'><tr>{head}</tr>{body}</table>"


def page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>")

