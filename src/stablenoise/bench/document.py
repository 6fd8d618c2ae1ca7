"""A report as a list of blocks (headings, text, tables, figures), rendered as HTML or as Markdown.

The report's sections are written once as blocks; the two renderers only decide how they look. HTML is
self-contained (images as base64 data URIs, inline CSS, no script) so it opens from disk and can be sent
as one file; Markdown links its images as PNG files in a folder next to it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Image:
    """A PNG; ``name`` is its file name in the Markdown report's folder."""
    png: bytes
    name: str
    caption: str = ""


@dataclass
class Table:
    """Cells are text or an Image (a tile of an image grid). ``groups``: (label, span) over the columns
    after the first, for a second header row (HTML) or a "label / column" header (Markdown)."""
    headers: list[str]
    rows: list[list]
    caption: str = ""
    groups: list[tuple[str, int]] | None = field(default=None)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 110em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; color: #555; padding-bottom: 4px; }
td.tile { text-align: center; font-size: 0.8em; } td.tile img { display: block; margin: 0 auto 2px; }
img { image-rendering: pixelated; } figure { margin: 0.5em 0 1.5em; } figcaption { color: #555; }
pre { background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _html_image(image: Image) -> str:
    return f'<img src="{_data_uri(image.png)}" alt="{html.escape(image.caption or image.name)}">'


def _html_cell(cell, tag: str = "td") -> str:
    if isinstance(cell, Image):
        return f'<{tag} class="tile">{_html_image(cell)}{html.escape(cell.caption)}</{tag}>'
    return f"<{tag}>{html.escape(str(cell))}</{tag}>"


def render_html(title: str, blocks: list) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Code):
            out.append(f"<pre>{html.escape(b.text)}</pre>")
        elif isinstance(b, Image):
            out.append(f"<figure>{_html_image(b)}<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        elif isinstance(b, Table):
            out.append("<table>")
            if b.caption:
                out.append(f"<caption>{html.escape(b.caption)}</caption>")
            if b.groups:
                out.append("<tr><th></th>" + "".join(f'<th colspan="{span}">{html.escape(label)}</th>'
                                                     for label, span in b.groups) + "</tr>")
            out.append("<tr>" + "".join(_html_cell(h, "th") for h in b.headers) + "</tr>")
            out += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in b.rows]
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list, files: Path) -> str:
    """Markdown with every image written to ``files`` (a folder next to the Markdown file)."""
    files.mkdir(parents=True, exist_ok=True)

    def link(image: Image) -> str:
        (files / image.name).write_bytes(image.png)
        return f"![{_md_escape(image.caption or image.name)}]({files.name}/{image.name})"

    def cell(c) -> str:
        return f"{link(c)}<br>{_md_escape(c.caption)}" if isinstance(c, Image) else _md_escape(c)

    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            out += [b.text, ""]
        elif isinstance(b, Code):
            out += ["```", b.text, "```", ""]
        elif isinstance(b, Image):
            out += [link(b), "", b.caption, ""] if b.caption else [link(b), ""]
        elif isinstance(b, Table):
            headers = list(b.headers)
            if b.groups:  # Markdown has one header row: fold the group into each column's name
                labels = [label for label, span in b.groups for _ in range(span)]
                headers = headers[:1] + [f"{g} / {h}" for g, h in zip(labels, headers[1:])]
            if b.caption:
                out += [b.caption, ""]
            out.append("| " + " | ".join(_md_escape(h) for h in headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
    return "\n".join(out)
