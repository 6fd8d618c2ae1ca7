"""The demo's index.html and index.md are written by the report's document renderers: a prompt is text."""

import io
import re
from html.parser import HTMLParser
from types import SimpleNamespace

from PIL import Image

from stablenoise.shapes.commands import write_demo_summary


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_the_demo_summary_escapes_prompts_and_embeds_its_images(tmp_path):
    prompt = "a red circle <script>alert(1)</script> ![x](http://example.com/x.png)"
    (tmp_path / "000-a").mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    (tmp_path / "000-a" / "summary.png").write_bytes(buffer.getvalue())
    item = {"prompt": prompt, "folder": "000-a", "labels": {"seed0": "seed 0: 0.5"},
            "verifier": {"seed0": {"passed": True}}}
    write_demo_summary(SimpleNamespace(root=tmp_path, record={"items": [item]}))
    page = _Tags()
    page.feed((tmp_path / "index.html").read_text())
    assert "script" not in page.tags and prompt in "".join(page.text) and page.tags.count("img") == 1
    markdown = (tmp_path / "index.md").read_text()
    # md_escape backslash-escapes what Markdown would read as HTML or a link
    assert not re.search(r"(?<!\\)<script", markdown) and not re.search(r"(?<!\\)\]\(http", markdown)
    assert "(index_files/000-a.png)" in markdown and (tmp_path / "index_files" / "000-a.png").read_bytes() == \
        buffer.getvalue()
    assert "seed 0: 0.5 — pass" in markdown
