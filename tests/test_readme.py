"""The README's Layout block names every module of the package, and only modules that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "stablenoise"


def layout_modules() -> set[str]:
    """Module paths relative to the package, read off the Layout block: a line whose first word ends in "/"
    opens that folder; deeper-indented lines continue it; a line at the folder's indent without one closes it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Layout\n.*?```\nsrc/stablenoise/\n(.*?)```", text, re.S).group(1)
    named, folder, indent = set(), "", 0
    for line in block.splitlines():
        if not line.startswith("  "):  # tests/, docs/ ...: outside the package
            break
        depth = len(line) - len(line.lstrip())
        first = line.split()[0]
        if first.endswith("/") and not first.startswith("weights/"):
            folder, indent = first, depth
        elif depth <= indent:
            folder, indent = "", 0
        named |= {folder + m for m in re.findall(r"(?<![\w/])([\w]+\.py)\b", line)}
    return named


def test_layout_names_every_module_and_nothing_else():
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    named = layout_modules()
    assert sorted(modules - named) == [], "modules missing from the README's Layout"
    assert sorted(named - modules) == [], "the README's Layout names modules that do not exist"


def test_layout_names_the_shipped_weights():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    shipped = {p.name for p in (PACKAGE / "weights").iterdir() if p.is_dir()}
    assert shipped == set(re.findall(r"weights/([\w-]+)/", text.split("## Layout", 1)[1]))
