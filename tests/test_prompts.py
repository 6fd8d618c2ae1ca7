"""Prompt sets: the shipped benchmark sets, prompt files, and third-party registration."""

import ast
import collections
import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest

from stablenoise import prompts as P
from stablenoise.errors import StablenoiseError
from stablenoise.prompts import Prompt, PromptSet, available_prompt_sets, load_prompts, register_prompt_set

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "stablenoise" / "data" / "prompts"

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registrations made by a test do not leak into others."""
    monkeypatch.setattr(P, "PROMPT_SETS", P.PROMPT_SETS.copy())
    return P.PROMPT_SETS


def one_line_error(spec, *args, **kwargs) -> str:
    with pytest.raises(StablenoiseError) as e:
        load_prompts(spec, *args, **kwargs)
    message = str(e.value)
    assert message and "\n" not in message and "\r" not in message
    return message


def names_sets(message: str) -> bool:
    return all(name in message for name in ("drawbench", "pickapic", "geneval", "partiprompts"))


# ---------------------------------------------------------------- shipped sets

SHIPPED = {  # name: (count, first prompt, first tag, number of tags)
    "drawbench": (200, "A red colored car.", "Colors", 11),
    "pickapic": (100, "A curious cat exploring a haunted mansion", "", 0),
    "geneval": (553, "a photo of a bench", "single_object", 6),
    "partiprompts": (1632, "bond", "Abstract", 12),
}

# The digests pin the shipped prompts: a changed file changes every benchmark number made with it.
DIGESTS = {
    "drawbench": "352fb0780688",
    "pickapic": "0b300736748e",
    "geneval": "d2522a69caed",
    "partiprompts": "7d212c7ac094",
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_set_counts_first_prompt_and_tags(name):
    count, first, first_tag, n_tags = SHIPPED[name]
    s = load_prompts(name)
    assert s.name == name and len(s) == count == len(s.prompts)
    assert s.prompts[0].text == first and s.prompts[0].tag == first_tag
    assert all(p.text and p.text == p.text.strip() for p in s)
    if n_tags:
        assert all(p.tag and p.tag == p.tag.strip() for p in s)
        assert len(set(s.tags)) == n_tags
    else:
        assert set(s.tags) == {""}
    assert s.source and "\n" not in s.source and name in available_prompt_sets()
    assert s.digest().startswith(DIGESTS[name])


def test_drawbench_categories():
    assert collections.Counter(load_prompts("drawbench").tags) == {
        "Reddit": 38, "Colors": 25, "Text": 21, "DALL-E": 20, "Descriptions": 20, "Positional": 20,
        "Counting": 19, "Conflicting": 10, "Gary Marcus et al.": 10, "Misspellings": 10, "Rare Words": 7}


def test_pickapic_is_the_papers_first_100_test_captions():
    """Source rows 0-100 less row 87 (empty caption): prompt 87 is source row 88, the last is row 100."""
    texts = load_prompts("pickapic").texts
    assert texts[86] == "Realistic image of the pope francisco walking on the streets wearing supreme clothes"
    assert texts[87] == "Fru fru"
    assert texts[-1] == "sci-fi architecture"
    assert texts[2] == "Portrait of a 26yr white woman, hyper-detailed, extremely ashamed, soft skin"
    assert len(set(texts)) == 100


def test_geneval_keeps_each_metadata_line():
    s = load_prompts("geneval")
    lines = (DATA / "geneval.jsonl").read_text(encoding="utf-8").splitlines()
    assert [p.metadata for p in s] == [json.loads(line) for line in lines]
    assert all(p.metadata["prompt"] == p.text and p.metadata["tag"] == p.tag for p in s)
    assert sum("exclude" in p.metadata for p in s) == 80
    assert collections.Counter(s.tags) == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                                           "position": 100, "color_attr": 100}


def test_partiprompts_quotes_and_categories():
    s = load_prompts("partiprompts")
    quoted = [p for p in s if p.text.startswith('"')]
    assert [p.text for p in quoted] == ['"G I G G L E" painted in thick colorful lettering as graffiti on a faded '
                                        'red brick wall with a splotch of exploding white paint.']
    assert quoted[0].metadata["Challenge"] == "Writing & Symbols"
    assert sum('"' in p.text for p in s) == 22
    assert collections.Counter(s.tags)["Animals"] == 314


def test_sources_and_licenses_beside_the_data():
    sources = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    for name, (file, _) in P._SHIPPED.items():
        assert (DATA / file).is_file() and f"`{name}`" in sources and f"`{file}`" in sources
    for license_file in ("golden-noise-LICENSE.txt", "geneval-LICENSE.txt", "parti-LICENSE.txt"):
        assert (DATA / "licenses" / license_file).stat().st_size > 500
        assert f"licenses/{license_file}" in sources


def test_package_data_globs_cover_every_prompt_file():
    """A wheel carries exactly what [tool.setuptools.package-data] matches (subfolders need a glob)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package = ROOT / "src" / "stablenoise"
    matched = {p for pattern in config["tool"]["setuptools"]["package-data"]["stablenoise"]
               for p in package.glob(pattern) if p.is_file()}
    files = {p for p in DATA.rglob("*") if p.is_file()}
    assert len(files) >= 8 and files <= matched, sorted(map(str, files - matched))


# ---------------------------------------------------------------- files

def write(tmp_path, name, content, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return path


def test_txt_file(tmp_path):
    path = write(tmp_path, "mine.txt", "# a comment\n\n  a red cube  \r\n   # indented comment\nb blue ball\r"
                                       "c, with a comma\n\n")
    s = load_prompts(str(path))
    assert s.texts == ["a red cube", "b blue ball", "c, with a comma"]
    assert s.tags == ["", "", ""] and s.name == "mine" and str(path) in s.source
    assert load_prompts(path).texts == s.texts  # a Path works as well as a str


def test_csv_file(tmp_path):
    path = write(tmp_path, "p.csv", 'id,Prompt,Category\n1,"a cat, sitting", Animals \n2,,x\n3,a dog,\n\n'
                                    '4,"two\nlines",multi\n')
    s = load_prompts(str(path))
    assert s.texts == ["a cat, sitting", "a dog", "two\nlines"]
    assert s.tags == ["Animals", "", "multi"]
    assert s.prompts[0].metadata == {"id": "1", "Prompt": "a cat, sitting", "Category": " Animals "}


@pytest.mark.parametrize("column", ["prompt", "Prompt", "caption", "text", "TEXT", "Prompts"])
def test_csv_prompt_column_names(tmp_path, column):
    path = write(tmp_path, "p.csv", f"tag,{column}\nt1,first\nt2,second\n")
    s = load_prompts(str(path))
    assert s.texts == ["first", "second"] and s.tags == ["t1", "t2"]


def test_tsv_file_keeps_quotes(tmp_path):
    path = write(tmp_path, "p.tsv", 'caption\ttag\n"Hello" on a sign\ttext\nsay "hi", twice\t\n')
    s = load_prompts(str(path))
    assert s.texts == ['"Hello" on a sign', 'say "hi", twice'] and s.tags == ["text", ""]


@pytest.mark.parametrize("key", ["prompt", "text", "caption"])
def test_jsonl_file(tmp_path, key):
    lines = [{key: "a red cube", "tag": "colors", "n": 1}, {key: " a blue ball ", "category": "x"},
             {key: "no tag"}, {key: "   "}]
    path = write(tmp_path, "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    s = load_prompts(str(path))
    assert s.texts == ["a red cube", "a blue ball", "no tag"]
    assert s.tags == ["colors", "x", ""]
    assert s.prompts[0].metadata == lines[0]


@pytest.mark.parametrize("name,content", [
    ("b.txt", "first prompt\nsecond\n"),
    ("b.csv", "prompt,tag\nfirst prompt,t\nsecond,u\n"),
    ("b.tsv", "prompt\ttag\nfirst prompt\tt\nsecond\tu\n"),
    ("b.jsonl", '{"prompt": "first prompt", "tag": "t"}\n{"prompt": "second", "tag": "u"}\n'),
])
def test_byte_order_mark_is_dropped(tmp_path, name, content):
    s = load_prompts(str(write(tmp_path, name, "\ufeff" + content)))
    assert s.texts == ["first prompt", "second"]
    assert s.prompts[0].text.encode("utf-8")[:3] != b"\xef\xbb\xbf"


# ---------------------------------------------------------------- bad input: one line, names the sets

def test_unknown_name_names_the_sets():
    message = one_line_error("drawbenchh")
    assert "drawbenchh" in message and names_sets(message)


@pytest.mark.parametrize("spec", ["missing.txt", "some/where/prompts.csv"])
def test_missing_file(spec):
    message = one_line_error(spec)
    assert "not found" in message and names_sets(message)


@pytest.mark.parametrize("name", ["p.json", "p.md"])
def test_unknown_extension(tmp_path, name):
    message = one_line_error(str(write(tmp_path, name, "a prompt\n")))
    assert "file type" in message and names_sets(message)


def test_a_file_without_extension_is_one_prompt_a_line(tmp_path):
    assert load_prompts(str(write(tmp_path, "prompts", "a cat\n# no\na dog\n"))).texts == ["a cat", "a dog"]


@pytest.mark.parametrize("name,content", [
    ("p.csv", "id,words\n1,a cat\n"),
    ("p.tsv", "id\twords\n1\ta cat\n"),
    ("p.jsonl", '{"prompt": "fine"}\n{"words": "a cat"}\n'),
    ("p.csv", ""),
])
def test_no_prompt_column(tmp_path, name, content):
    message = one_line_error(str(write(tmp_path, name, content)))
    assert "no prompt" in message and names_sets(message)


@pytest.mark.parametrize("name,content", [
    ("p.txt", "# only a comment\n\n   \n"),
    ("p.txt", "\ufeff"),
    ("p.csv", "prompt,tag\n,x\n  ,y\n"),
    ("p.tsv", "prompt\n"),
    ("p.jsonl", "\n\n"),
])
def test_empty_set(tmp_path, name, content):
    message = one_line_error(str(write(tmp_path, name, content)))
    assert "no prompts" in message and names_sets(message)


@pytest.mark.parametrize("name", ["p.txt", "p.csv", "p.jsonl"])
def test_not_utf8(tmp_path, name):
    path = write(tmp_path, name, "prompt\ncaf\u00e9 au lait\n", encoding="latin-1")
    message = one_line_error(str(path))
    assert "UTF-8" in message and str(path) in message


@pytest.mark.parametrize("name,content,words", [
    ("p.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "line 2"),
    ("p.jsonl", '["a list"]\n', "object"),
    ("p.jsonl", '{"prompt": 3}\n', "not text"),
    ("p.csv", "prompt\nan, unquoted comma\n", "2 fields"),
    ("p.csv", 'prompt\n"never closed\n', "line"),
])
def test_malformed_files(tmp_path, name, content, words):
    assert words in one_line_error(str(write(tmp_path, name, content)))


def test_a_directory_is_not_a_prompt_file(tmp_path):
    assert "not a file" in one_line_error(str(tmp_path))


# ---------------------------------------------------------------- limit, digest, Prompt

def test_limit():
    full = load_prompts("drawbench")
    first = load_prompts("drawbench", limit=5)
    assert first.prompts == full.prompts[:5] and first.name == "drawbench" and first.source == full.source
    assert first.digest() != full.digest()
    assert load_prompts("pickapic", limit=10_000).prompts == load_prompts("pickapic").prompts
    for bad in (0, -1, 2.5, True):
        assert "limit" in one_line_error("drawbench", limit=bad)


def test_digest_is_stable_and_follows_texts_and_tags():
    s = PromptSet("x", [Prompt("a red cube", "colors"), Prompt("b", "")], "src")
    expected = hashlib.sha256('[["a red cube","colors"],["b",""]]'.encode()).hexdigest()
    assert s.digest() == expected  # a documented format, not Python's hash()
    assert PromptSet("other", [Prompt("a red cube", "colors", {"k": 1}), Prompt("b")], "").digest() == expected
    assert PromptSet("x", [Prompt("a red cube!", "colors"), Prompt("b")]).digest() != expected
    assert PromptSet("x", [Prompt("a red cube", "color"), Prompt("b")]).digest() != expected
    assert PromptSet("x", [Prompt("b"), Prompt("a red cube", "colors")]).digest() != expected
    assert PromptSet("x", [Prompt("a red cube", "colors")]).digest() != expected
    # Text and tag cannot trade characters without changing the digest.
    assert PromptSet("x", [Prompt("ab", "c")]).digest() != PromptSet("x", [Prompt("a", "bc")]).digest()
    assert load_prompts("geneval").digest() == load_prompts("geneval").digest()


def test_digest_changes_when_a_file_prompt_changes(tmp_path):
    a = load_prompts(str(write(tmp_path, "a.txt", "one\ntwo\n"))).digest()
    assert load_prompts(str(write(tmp_path, "b.txt", "# note\none\n\ntwo"))).digest() == a
    assert load_prompts(str(write(tmp_path, "c.txt", "one\ntwo.\n"))).digest() != a


def test_prompt_is_hashable_and_compares_metadata():
    a, b = Prompt("x", "t", {"k": [1]}), Prompt("x", "t", {"k": [1]})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1 and len({a, Prompt("x", "t")}) == 2
    assert a != Prompt("x", "t", {"k": [2]}) and a != Prompt("x", "u", {"k": [1]})
    assert Prompt("x").tag == "" and Prompt("x").metadata == {}
    with pytest.raises(StablenoiseError):
        Prompt("  ")


# ---------------------------------------------------------------- registration

def test_register_prompt_set(registry):
    register_prompt_set("Mine", lambda: ["first", ("second", "tagged"), Prompt("third", "t", {"a": 1})],
                        description="my own prompts")
    assert "mine" in available_prompt_sets()
    s = load_prompts("MINE", limit=2)
    assert s.name == "mine" and s.texts == ["first", "second"] and s.tags == ["", "tagged"]
    assert s.source == "my own prompts"
    built = PromptSet("anything", [Prompt("p")], "a source line")
    register_prompt_set("built", lambda: built)
    assert load_prompts("built").name == "built" and load_prompts("built").source == "a source line"


def test_register_twice(registry):
    def loader():
        return ["a"]

    register_prompt_set("twice", loader)
    register_prompt_set("twice", loader)  # the same loader again is harmless
    with pytest.raises(StablenoiseError, match="already registered"):
        register_prompt_set("twice", lambda: ["b"])
    register_prompt_set("twice", lambda: ["b"], replace=True)
    assert load_prompts("twice").texts == ["b"]
    with pytest.raises(StablenoiseError, match="already registered"):
        register_prompt_set("drawbench", lambda: ["b"])


@pytest.mark.parametrize("loader,words", [
    (lambda: [], "no prompts"),
    (lambda: 42, "not prompts"),
    (lambda: "a single string", "not prompts"),
    (lambda: [1], "not a prompt"),
    (lambda: 1 / 0, "ZeroDivisionError"),
])
def test_broken_loaders(registry, loader, words):
    register_prompt_set("broken", loader)
    message = one_line_error("broken")
    assert words in message and "broken" in message


def test_entry_points_are_lazy(registry, monkeypatch, tmp_path):
    """An entry point in the group shows in available_prompt_sets() without being imported; loading the set
    imports it. A name registered in code wins over an entry point of the same name."""
    (tmp_path / "third_party_prompts.py").write_text(
        "CALLS = []\n"
        "def load():\n"
        "    CALLS.append(1)\n"
        "    return [('a third-party prompt', 'x')]\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = P.ENTRY_POINT_GROUP
    eps = [metadata.EntryPoint("third-party", "third_party_prompts:load", group),
           metadata.EntryPoint("drawbench", "third_party_prompts:load", group)]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    P.PROMPT_SETS.rescan()  # the patched entry points are read at the next lookup
    import sys

    assert "third-party" in available_prompt_sets() and "third_party_prompts" not in sys.modules
    s = load_prompts("third-party")
    assert s.texts == ["a third-party prompt"] and s.tags == ["x"]
    assert sys.modules["third_party_prompts"].CALLS == [1]
    assert "third_party_prompts:load" in s.source
    assert len(load_prompts("drawbench")) == 200
    monkeypatch.delitem(sys.modules, "third_party_prompts")


def test_a_missing_entry_point_module_is_one_line(registry, monkeypatch):
    ep = metadata.EntryPoint("gone", "no_such_module_anywhere:load", P.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == ep.group else [])
    P.PROMPT_SETS.rescan()  # the patched entry points are read at the next lookup
    message = one_line_error("gone")
    assert "ModuleNotFoundError" in message and "no_such_module_anywhere" in message


def test_core_does_not_import_the_shapes_world():
    for module in ("prompts.py", "plugins.py"):
        tree = ast.parse((ROOT / "src" / "stablenoise" / module).read_text(encoding="utf-8"))
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if "shapes" in m], (module, imported)


# ---------------------------------------------------------------- the shapes world's sets (entry points)

def pyproject_entry_points(group):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return [metadata.EntryPoint(name, value, group)
            for name, value in config["project"]["entry-points"][group].items()]


@pytest.fixture
def shapes_sets(registry):
    """Registers what pyproject's entry points name, as an installed package would (the venv's metadata
    only knows them after ``pip install -e .``), by importing each entry point's value."""
    for ep in pyproject_entry_points(P.ENTRY_POINT_GROUP):
        loader = ep.load()
        assert callable(loader)
        register_prompt_set(ep.name, loader, description=f"from {ep.value}", replace=True)
    return registry


def experiment_defaults():
    """The held-out draw the shapes experiment used before it became a bench preset (docs/results.md):
    200 captions, draw seed 0, held-out split."""
    return 200, 0, "heldout"


def test_pyproject_names_the_shapes_sets():
    assert sorted(ep.name for ep in pyproject_entry_points(P.ENTRY_POINT_GROUP)) == ["shapes-heldout",
                                                                                     "shapes-train"]


def test_shapes_heldout_is_the_experiments_selection(shapes_sets):
    from stablenoise.shapes import world

    n, seed, split = experiment_defaults()
    s = load_prompts("shapes-heldout")
    assert [(p.text, p.tag) for p in s] == world.prompts(n, seed=seed, split=split)
    assert len(s) == 200 and s.tags == [world.TAGS[i % 6] for i in range(200)]
    for p in s:
        combos = [c for c in world.combinations(p.tag) if world.caption_of(p.tag, c) == p.text]
        assert combos and all(world.split_of(p.tag, c) == "heldout" for c in combos), p
    assert load_prompts("shapes-heldout").digest() == s.digest()  # deterministic
    assert "shapes-heldout" in available_prompt_sets() and s.name == "shapes-heldout"


def test_shapes_train(shapes_sets):
    from stablenoise.shapes import world

    n, seed, _ = experiment_defaults()
    s = load_prompts("shapes-train", limit=50)
    assert [(p.text, p.tag) for p in s] == world.prompts(n, seed=seed, split="train")[:50]
    assert len(load_prompts("shapes-train")) == n
    assert not set(load_prompts("shapes-train").texts) & set(load_prompts("shapes-heldout").texts)
