"""The page around the charts: the shared stylesheet and cell formatting of hotloop's HTML reports
(the load tester's and the run report). Inline CSS only, so a report stays one offline file."""

from __future__ import annotations

from html import escape
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:12px}.note{color:#555;font-size:13px}
.err{background:#fdecea;border:1px solid #f5c2c0;padding:8px 12px;border-radius:4px}
.ok{background:#eaf6ea;border:1px solid #bfe3bf;padding:8px 12px;border-radius:4px}
details{margin:10px 0}summary{cursor:pointer;font-weight:600}
"""


def fmt(v: Any, digits: int = 1) -> str:
    """A table cell: ``–`` for missing, floats to ``digits`` places, everything else escaped."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))
