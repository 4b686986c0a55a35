"""HTML of the operator page: a layout, tables, forms; every value from the store escaped.

Pure: each function takes plain values (and ready SVG from `headend.web.svg`)
and returns markup. `cell` is the one place a value becomes text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import quote

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:10px 24px}
header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:12px 24px;max-width:1200px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;
margin:12px 0}
h1{font-size:22px;margin:8px 0}h2{font-size:16px;margin:4px 0 8px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left}
th{background:#f6f8fa}
.figures{display:flex;gap:24px;flex-wrap:wrap}
.figure{font-size:13px}.figure b{display:block;font-size:22px}
.error{color:#d1242f}.muted{color:#57606a;font-size:13px}
form input,form select,form button{font-size:14px;padding:3px 6px;margin-right:8px}
svg.plot{max-width:100%;height:auto}
"""


def cell(value: object) -> str:
    """A value as escaped text (None as an empty cell)."""
    return "" if value is None else escape(str(value))


def page(title: str, body: str) -> str:
    """A whole document around ``body`` (already markup)."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        '<header><a href="/operator/">Head-end operator</a></header>'
        f"<main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def section(title: str, body: str, ident: str = "") -> str:
    attr = f' id="{escape(ident)}"' if ident else ""
    return f"<section{attr}><h2>{escape(title)}</h2>{body}</section>"


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    ident: str = "",
    links: dict[int, str] | None = None,
) -> str:
    """A table; ``links`` maps a column index to a URL prefix its cells link to
    (the cell's value is appended, URL-quoted)."""
    links = links or {}
    attr = f' id="{escape(ident)}"' if ident else ""
    head = "".join(f"<th>{cell(c)}</th>" for c in columns)
    body = []
    for row in rows:
        tds = []
        for i, v in enumerate(row):
            text = cell(v)
            if i in links and v is not None:
                href = escape(links[i] + quote(str(v), safe=""))
                text = f'<a href="{href}">{text}</a>'
            tds.append(f"<td>{text}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(columns)}" class="muted">none</td></tr>')
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figures(items: Iterable[tuple[str, object]], ident: str = "") -> str:
    """A row of headline numbers."""
    attr = f' id="{escape(ident)}"' if ident else ""
    parts = "".join(f'<div class="figure"><b>{cell(v)}</b>{cell(k)}</div>' for k, v in items)
    return f'<div class="figures"{attr}>{parts}</div>'


def filter_form(meter: str, group: str, groups: Sequence[str]) -> str:
    """The meter search: a GET form (meter id, or read group)."""
    options = ['<option value="">any read group</option>']
    for g in groups:
        sel = " selected" if g == group else ""
        options.append(f'<option value="{cell(g)}"{sel}>{cell(g)}</option>')
    return (
        '<form id="filter" method="get" action="/operator/">'
        f'<label>Meter id <input name="meter" value="{cell(meter)}" size="10"></label> '
        f'<label>Read group <select name="group">{"".join(options)}</select></label>'
        '<button type="submit">Filter</button></form>'
    )


def error(status: int, message: str) -> str:
    """The page of a refused request (400, 404) or of a store that cannot answer (503)."""
    title = {404: "Not found", 503: "Store unavailable"}.get(status, "Bad request")
    return page(
        f"{status}: {title}",
        f'<p class="error" id="error">{cell(message)}</p>'
        '<p><a href="/operator/">Back to the overview</a></p>',
    )
