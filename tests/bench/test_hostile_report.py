"""`stablenoise report` against hostile input: output paths that would destroy a user's file or the store,
image paths that lead out of the run folder, and user text that would turn into markup."""

import json
import os
import shutil
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt
from PIL import Image

from stablenoise.bench.document import md_escape
from stablenoise.cli import main

from .test_report import make_store

STORE_FILES = ("bench.sqlite", "bench.sqlite-wal")  # its -shm is an index that any reader may rewrite
USER_TEXT = "the user's own file\n"
FAST = ["--bootstrap", "10", "--grid-prompts", "6"]
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)> ![x](http://host/x.png) a|b\nc *em* `code`"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    run = tmp_path_factory.mktemp("pristine") / "run"
    make_store(run)
    return run


@pytest.fixture
def run(pristine, tmp_path, monkeypatch):
    """A fresh copy of the store, with the working directory beside it; plots stubbed (they are slow)."""
    import stablenoise.bench.report as report

    monkeypatch.setattr(report, "plot_deciles", lambda *args: b"png")
    monkeypatch.setattr(report, "plot_sweep", lambda *args: b"png")
    monkeypatch.chdir(tmp_path)
    return Path(shutil.copytree(pristine, tmp_path / "run"))


def _snapshot(folder: Path, skip: str = "") -> dict:
    """Every file below ``folder`` (symlinks as their targets), to compare before and after."""
    return {str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(folder.rglob("*")) if (p.is_symlink() or p.is_file()) and not (skip and p.match(skip))}


def _report(*args):
    return CliRunner().invoke(main, ["report", *map(str, args), *FAST])


def _refused(result, line: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: {line}\n"
    assert result.stdout == ""


# ----------------------------------------------------------------------------- output paths

def _user_file(name):
    def setup(tmp):
        (tmp / name).write_text(USER_TEXT)
        return [name]
    return setup


def _store_link(kind):
    def setup(tmp):
        (os.symlink if kind == "symlink" else os.link)((tmp / "run/bench.sqlite").resolve(), tmp / "link")
        return ["link"]
    return setup


def _plot_folder(content):
    def setup(tmp):
        if content == "user file":
            (tmp / "notes_files").mkdir()
            (tmp / "notes_files/photo.jpg").write_text(USER_TEXT)
        elif content == "symlink inside":  # a report's image name, but the user's link to their file
            (tmp / "notes_files").mkdir()
            (tmp / "photo.png").write_text(USER_TEXT)
            os.symlink(tmp / "photo.png", tmp / "notes_files/config-1-deciles.png")
        else:  # a report's image name, but through a symlink that leads out of the folder
            (tmp / "elsewhere").mkdir()
            (tmp / "elsewhere/config-1-deciles.png").write_text(USER_TEXT)
            os.symlink(tmp / "elsewhere", tmp / "notes_files", target_is_directory=True)
        return ["notes.md"]
    return setup


def _in_folder(tmp):
    (tmp / "afile").write_text(USER_TEXT)
    return ["afile/report.html"]


def _nothing(tmp):
    return []


STORE = "is the run's results store: choose another path"
NOT_OURS = "exists and was not written by a stablenoise report: move it or choose another path"
REFUSED = {
    "html is the store": (["--html", "run/bench.sqlite"], _nothing, f"HTML report run/bench.sqlite {STORE}"),
    "md is the store's wal": (["--md", "run/bench.sqlite-wal"], _nothing,
                             f"Markdown report run/bench.sqlite-wal {STORE}"),
    "md is the store's shm": (["--md", "run/bench.sqlite-shm"], _nothing,
                             f"Markdown report run/bench.sqlite-shm {STORE}"),
    "html is the store's journal, not there yet": (["--html", "run/bench.sqlite-journal"], _nothing,
                                                   f"HTML report run/bench.sqlite-journal {STORE}"),
    "html is the store by ..": (["--html", "run/images/../bench.sqlite"], _nothing,
                                f"HTML report run/images/../bench.sqlite {STORE}"),
    "html is a symlink to the store": (["--html", "link"], _store_link("symlink"), f"HTML report link {STORE}"),
    "md is a hard link to the store": (["--md", "link"], _store_link("hard link"), f"Markdown report link {STORE}"),
    "html is a user's file": (["--html", "mine.html"], _user_file("mine.html"), f"HTML report mine.html {NOT_OURS}"),
    "md is a user's file": (["--md", "mine.md"], _user_file("mine.md"), f"Markdown report mine.md {NOT_OURS}"),
    "plot folder holds a user's file": (["--md", "notes.md"], _plot_folder("user file"),
                                        f"plot folder notes_files {NOT_OURS}"),
    "plot folder is a symlink": (["--md", "notes.md"], _plot_folder("symlink"),
                                 f"plot folder notes_files {NOT_OURS}"),
    "plot folder holds a symlink": (["--md", "notes.md"], _plot_folder("symlink inside"),
                                    f"plot folder notes_files {NOT_OURS}"),
    "html below a file": (["--html", "afile/report.html"], _in_folder,
                          f"cannot write HTML report afile/report.html: {{tmp}}/afile is a file, not a folder"),
    "html and md on one path": (["--html", "r.html", "--md", "r.html"], _nothing,
                                "Markdown report r.html is also HTML report: give each output its own path"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_report_refuses_outputs_it_did_not_write(run, case):
    args, setup, line = REFUSED[case]
    tmp = run.parent
    if case == "md is the store's wal":  # a store being written holds a WAL: open one and leave it open
        db = sqlite3.connect(run / "bench.sqlite")
        db.execute("INSERT INTO meta VALUES ('open', 'writer')")
        db.commit()
        assert (run / "bench.sqlite-wal").stat().st_size > 0
    setup(tmp)
    before = _snapshot(tmp)
    _refused(_report("run", *args), line.format(tmp=tmp))
    assert _snapshot(tmp) == before  # nothing written: the store, the user's files and the run folder as they were
    if case == "md is the store's wal":
        db.close()


def test_report_overwrites_its_own_outputs_and_legacy_ones(run):
    assert _report("run").exit_code == 0
    html_path, md_path = run / "report.html", run / "report.md"
    assert html_path.read_text().startswith(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="generator" content="stablenoise report">\n')
    assert md_path.read_text().startswith("<!-- generator: stablenoise report -->\n# stablenoise bench report: run\n")
    # Reports written before the mark (docs/bench-*/) open with the title: a rerun replaces them too.
    html_path.write_text(html_path.read_text().replace('<meta name="generator" content="stablenoise report">', ""))
    md_path.write_text(md_path.read_text().split("\n", 1)[1])
    store = {n: (run / n).read_bytes() for n in STORE_FILES if (run / n).exists()}
    result = _report("run")
    assert result.exit_code == 0, result.output
    assert result.stdout == "wrote run/report.html and run/report.md\n"
    assert 'content="stablenoise report"' in html_path.read_text()
    assert md_path.read_text().startswith("<!-- generator: stablenoise report -->\n")
    assert {n: (run / n).read_bytes() for n in STORE_FILES if (run / n).exists()} == store


def test_a_failed_write_leaves_the_earlier_report_whole(run, monkeypatch):
    assert _report("run").exit_code == 0
    before = _snapshot(run.parent, skip="*.sqlite-shm")  # the failing report reads the store

    def refuse(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    _refused(_report("run"), "cannot write run/report_files/verdict.png: Permission denied")
    assert _snapshot(run.parent, skip="*.sqlite-shm") == before  # no temporary file left, the earlier report intact


# ----------------------------------------------------------------------------- images

def _secret(tmp):
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp / "secret.png")
    return tmp / "secret.png"


def _image_at(run, path):
    """Point config 1's first seed of prompt 0 (the random column's tile) at ``path``."""
    db = sqlite3.connect(run / "bench.sqlite")
    db.execute("UPDATE samples SET image_path = ? WHERE config_id = 1 AND prompt_idx = 0 AND seed_rank = 0 "
               "AND method = 'seed'", (path,))
    db.commit()
    db.close()


def _bomb(tmp):
    """A PNG whose header claims 100000 x 100000 pixels."""
    import struct
    import zlib

    Image.new("RGB", (1, 1)).save(tmp / "bomb.png")
    data = bytearray((tmp / "bomb.png").read_bytes())
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR's width and height, then its CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (tmp / "bomb.png").write_bytes(bytes(data))
    return "bomb.png"


def _linked(run, target):
    os.symlink(target, run / "images/link.png")
    return "images/link.png"


IMAGE_PATHS = {  # what the store names -> is the image embedded
    "absolute path outside": (lambda run, secret: str(secret), False),
    "../ path outside": (lambda run, secret: "../secret.png", False),
    "symlink inside to outside": (lambda run, secret: _linked(run, secret), False),
    "symlink inside to inside": (lambda run, secret: _linked(run, run / "images/c1/p0-s1.png"), True),
    "absolute path inside": (lambda run, secret: str((run / "images/c1/p0-s0.png").resolve()), True),
    "decompression bomb inside": (lambda run, secret: _bomb(run), False),
}


@pytest.mark.parametrize("case", IMAGE_PATHS)
def test_report_embeds_only_images_inside_the_run_folder(run, case):
    where, embedded = IMAGE_PATHS[case]
    _image_at(run, where(run, _secret(run.parent)))
    result = _report("run")
    assert result.exit_code == 0, result.output
    tile = run / "report_files/config-1-grid-0-0.png"
    assert tile.exists() == embedded
    row = next(line for line in (run / "report.md").read_text().splitlines()
               if line.startswith("| circles: prompt 0 of circles |"))
    assert (row.split(" | ")[1] == "–") != embedded
    if not embedded:  # nor in the HTML: the secret's colour is in no tile
        assert "(1, 2, 3)" not in str([Image.open(p).convert("RGB").getpixel((0, 0))
                                       for p in (run / "report_files").glob("*-grid-*.png")])


# ----------------------------------------------------------------------------- user text

@pytest.fixture
def hostile(run, tmp_path):
    """The store with user text that is markup everywhere a report shows user text."""
    db = sqlite3.connect(run / "bench.sqlite")
    db.execute("UPDATE prompts SET text = ? WHERE idx = 0", (HOSTILE,))
    db.execute("UPDATE prompts SET tag = '<b onclick=x>t|ag' WHERE tag = 'circles'")
    db.execute("UPDATE samples SET method = 'opt<img src=x onerror=alert(3)>' WHERE method = 'optimize'")
    db.execute("UPDATE scores SET name = '![r](http://host/r.png)' WHERE name = 'toy'")
    db.execute("UPDATE configs SET model = '# <script>alert(4)', prompt_set = '1. [s]: http://host'")
    db.execute("UPDATE meta SET value = ? WHERE key = 'commands'",
               (json.dumps(["stablenoise bench\n```\n<script>alert(5)</script>"]),))  # a fence's end, then HTML
    db.commit()
    db.close()
    folder = tmp_path / "r ![x](x.png) <b onclick=y>"
    run.rename(folder)
    result = _report(folder)
    assert result.exit_code == 0, result.output
    return folder


def _tokens(tokens):
    for t in tokens:
        yield t
        yield from _tokens(t.children or [])


def test_report_md_renders_user_text_as_text(hostile):
    md = (hostile / "report.md").read_text()
    tokens = list(_tokens(MarkdownIt("commonmark").enable("table").parse(md)))
    raw_html = [t.content for t in tokens if t.type in ("html_inline", "html_block")]
    assert set(raw_html) == {"<!-- generator: stablenoise report -->\n", "<br>"}  # the mark and tiles' line breaks
    assert {t.attrGet("src").split("/")[0] for t in tokens if t.type == "image"} == {"report_files"}
    markup = ("link_open", "em_open", "strong_open", "s_open", "bullet_list_open", "ordered_list_open",
              "blockquote_open", "code_block")
    assert not [t.type for t in tokens if t.type in markup]
    text = "".join(t.content for t in tokens if t.type in ("text", "code_inline"))
    for user_text in (" ".join(HOSTILE.split()), "<b onclick=x>t|ag", "opt<img src=x onerror=alert(3)>",
                      "![r](http://host/r.png)", "# <script>alert(4)", "1. [s]: http://host",
                      "r ![x](x.png) <b onclick=y>"):
        assert user_text in text
    fence = next(t for t in tokens if t.type == "fence")
    assert fence.content == "stablenoise bench\n```\n<script>alert(5)</script>\n"
    # every table row keeps its cells: a | or a newline in user text does not split one
    rows = [t for t in tokens if t.type == "tr_open"]
    assert rows and all(sum(1 for _ in _cells(tokens, i)) == _width(tokens, i) for i in range(len(tokens))
                        if tokens[i].type == "tr_open")


def _cells(tokens, i):
    for t in tokens[i + 1:]:
        if t.type == "tr_close":
            return
        if t.type in ("td_open", "th_open"):
            yield t


def _width(tokens, i):
    """The header width of the table that row ``i`` belongs to."""
    start = max(j for j in range(i + 1) if tokens[j].type == "table_open")
    return sum(1 for _ in _cells(tokens, start + 2))


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_html_renders_user_text_as_text(hostile):
    parser = _Elements()
    parser.feed((hostile / "report.html").read_text())
    tags = {tag for tag, _ in parser.tags}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "pre", "table",
                    "caption", "tr", "th", "td", "img", "figure", "figcaption"}
    assert "script" not in tags and "b" not in tags
    for tag, attrs in parser.tags:
        if tag == "img":
            assert set(attrs) == {"src", "alt"} and attrs["src"].startswith("data:image/png;base64,")
    text = "".join(parser.text)
    assert " ".join(HOSTILE.split()) in " ".join(text.split())
    assert "opt<img src=x onerror=alert(3)>" in text and "<script>alert(5)</script>" in text


@pytest.mark.parametrize("text, escaped", [
    ("<script>x</script>", "\\<script>x\\</script>"),
    ("![x](http://host/x.png)", "![x\\](http://host/x.png)"),
    ("a|b\nc", "a\\|b c"),
    ("a *b* snake_case", "a \\*b\\* snake\\_case"),
    ("`c` ~s~ &lt; \\", "\\`c\\` \\~s\\~ \\&lt; \\\\"),
    ("0.2 [0.1, 0.3] *", "0.2 [0.1, 0.3] *"),  # an interval and its mark stay as written
])
def test_md_escape(text, escaped):
    assert md_escape(text) == escaped


@pytest.mark.parametrize("text, escaped", [
    ("# h", "\\# h"), ("- a", "\\- a"), ("* a", "\\* a"), ("> q", "\\> q"), ("12. x", "12\\. x"),
    ("[a]: http://x", "\\[a]: http://x"), ("0.25 mean", "0.25 mean"),
])
def test_md_escape_at_line_start(text, escaped):
    assert md_escape(text, line_start=True) == escaped
    assert md_escape(text) == text  # a marker is markup at a line's start only


def test_md_links_its_plot_folder_whatever_its_name(run):
    result = _report("run", "--md", "a (b) <c>.md")
    assert result.exit_code == 0, result.output
    tokens = list(_tokens(MarkdownIt("commonmark").enable("table").parse(Path("a (b) <c>.md").read_text())))
    sources = {t.attrGet("src") for t in tokens if t.type == "image"}
    assert sources == {f"a%20%28b%29%20%3Cc%3E_files/{p.name}" for p in Path("a (b) <c>_files").iterdir()}
