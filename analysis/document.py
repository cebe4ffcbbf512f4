"""A tiny report document model rendered to Markdown and to a self-contained HTML page.

Sections build a list of blocks once; both renderers walk the same list, so report.md and
report.html never disagree. The HTML embeds figures as base64 data URIs and inlines its CSS:
it must open offline and never fetch anything.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str  # inline markup: **bold** and `code`


@dataclass(frozen=True)
class Callout:
    text: str
    kind: str = "warning"  # warning | note


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame = field(compare=False)
    caption: str = ""


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str


Block = Heading | Paragraph | Callout | Bullets | Table | Image


def fmt(value: object, digits: int = 4) -> str:
    """Compact display of a table cell: significant digits for floats, '–' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if float(value).is_integer() and abs(value) >= 10**digits:
            return str(int(value))  # counts (trainable params) stored as float next to NaNs
        return f"{value:.{digits}g}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if value is pd.NA or value is pd.NaT:
        return "–"
    return str(value)


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(object).apply(lambda col: col.map(fmt)) if not frame.empty else frame


# --- Markdown -----------------------------------------------------------------------------------

def _md_table(frame: pd.DataFrame) -> str:
    cells = _cells(frame)
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cells.columns) + " |",
             "|" + "|".join("---" for _ in cells.columns) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def to_markdown(title: str, blocks: list[Block]) -> str:
    """Markdown with figures referenced by file name (they sit next to report.md)."""
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Paragraph):
            out += [b.text, ""]
        elif isinstance(b, Callout):
            out += [f"> **{b.kind.capitalize()}:** {b.text}", ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out += [_md_table(b.frame) if not b.frame.empty else "_(empty)_", ""]
        elif isinstance(b, Image):
            out += [f"![{b.caption}]({b.path.name})", "", f"*{b.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


# --- HTML ---------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
.callout{padding:.6em 1em;border-left:5px solid;margin:1em 0}
.warning{background:#fff4e5;border-color:#f0a020}.note{background:#eef5ff;border-color:#4a8ad4}
code{background:#f4f4f4;padding:0 3px}.caption{font-style:italic;color:#555}.wrap{overflow-x:auto}
"""


def _inline(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(title: str, blocks: list[Block]) -> str:
    """One self-contained page: inline CSS, figures as data URIs, no external references."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Callout):
            body.append(f'<div class="callout {html.escape(b.kind)}"><strong>{html.escape(b.kind.capitalize())}:'
                        f"</strong> {_inline(b.text)}</div>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            if b.caption:
                body.append(f'<p class="caption">{_inline(b.caption)}</p>')
            body.append('<div class="wrap">' + _cells(b.frame).to_html(index=False, escape=True, border=0) + "</div>"
                        if not b.frame.empty else "<p><em>(empty)</em></p>")
        elif isinstance(b, Image):
            body.append(f'<figure><img alt="{html.escape(b.caption)}" src="{_data_uri(b.path)}">'
                        f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
