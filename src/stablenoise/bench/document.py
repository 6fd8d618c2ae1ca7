"""A report as a list of blocks (headings, text, tables, figures), rendered as HTML or as Markdown.

The report's sections are written once as blocks; the two renderers only decide how they look. HTML is
self-contained (images as base64 data URIs, inline CSS, no script) so it opens from disk and can be sent
as one file; Markdown links its images as PNG files in a folder next to it. Both escape every text they
are given: a block's text may hold a user's prompt, tag, label or file name. Both carry a mark
(``HTML_MARK``, ``MD_MARK``) by which a later report knows a file as one it may overwrite.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from urllib.parse import quote

HTML_MARK = '<meta name="generator" content="stablenoise report">'
MD_MARK = "<!-- generator: stablenoise report -->"


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
    out = ["<!DOCTYPE html>", f'<html lang="en"><head><meta charset="utf-8">{HTML_MARK}',
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


# What CommonMark (and GitHub's tables) could read as markup, backslash-escaped: raw HTML and autolinks
# (<), entities (&), code spans, strikethrough, table cells (|) and the escape character itself; a ] that
# would close a link or an image (before "(" or "["; the renderer puts neither after a text); * and _
# unless spaces on both sides keep them from opening or closing emphasis. So a prompt stays text, and an
# interval "0.2 [0.1, 0.3] *" stays as written.
_MD_SPECIAL = re.compile(r"[\\`<&~|]|\](?=[(\[])|[*_](?=\S)|(?<=\S)[*_]")
# What opens a block when it starts a line: heading, quote, list item, setext underline, link reference
# definition, ordered list item.
_MD_BLOCK_START = re.compile(r"^([#>+=*\[-]|\d+(?=[.)](?:\s|$)))")


def md_escape(text, line_start: bool = False) -> str:
    """``text`` as literal Markdown text on one line: whitespace runs, newlines included, become one space, so
    a table cell or a paragraph cannot be left. ``line_start``: the text begins a line, where a leading
    marker would open a block."""
    text = _MD_SPECIAL.sub(lambda m: "\\" + m[0], " ".join(str(text).split()))
    if line_start:  # an ordered list's number stays, its delimiter is escaped
        text = _MD_BLOCK_START.sub(lambda m: m[1] + "\\" if m[1][0].isdigit() else "\\" + m[1], text, count=1)
    return text


def _md_fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text``, which therefore cannot close it."""
    return "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))


def render_markdown(title: str, blocks: list, files: str) -> tuple[str, dict[str, bytes]]:
    """Markdown that links its images as ``files``/NAME (a folder next to the Markdown file), and those
    images as {NAME: PNG bytes} for the caller to write."""
    images: dict[str, bytes] = {}

    def link(image: Image) -> str:
        images[image.name] = image.png
        return f"![{md_escape(image.caption or image.name)}]({quote(f'{files}/{image.name}')})"

    def cell(c) -> str:
        return f"{link(c)}<br>{md_escape(c.caption)}" if isinstance(c, Image) else md_escape(c)

    out = [MD_MARK, f"# {md_escape(title)}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + md_escape(b.text), ""]
        elif isinstance(b, Text):
            out += [md_escape(b.text, line_start=True), ""]
        elif isinstance(b, Code):
            fence = _md_fence(b.text)
            out += [fence, b.text, fence, ""]
        elif isinstance(b, Image):
            out += [link(b), ""] + ([md_escape(b.caption, line_start=True), ""] if b.caption else [])
        elif isinstance(b, Table):
            headers = list(b.headers)
            if b.groups:  # Markdown has one header row: fold the group into each column's name
                labels = [label for label, span in b.groups for _ in range(span)]
                headers = headers[:1] + [f"{g} / {h}" for g, h in zip(labels, headers[1:])]
            if b.caption:
                out += [md_escape(b.caption, line_start=True), ""]
            out.append("| " + " | ".join(md_escape(h) for h in headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
    return "\n".join(out), images
