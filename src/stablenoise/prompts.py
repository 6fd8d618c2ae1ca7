"""Prompt sets: the benchmark sets shipped with the package, prompt files, and sets that other
packages register.

``load_prompts(spec)`` takes a registered name (``drawbench``, ``pickapic``, ``geneval``,
``partiprompts``, or one registered with :func:`register_prompt_set` or an entry point in the group
``stablenoise.prompts``) or the path of a prompt file:

- ``.txt``: one prompt a line; blank lines and lines starting with ``#`` are skipped;
- ``.csv`` / ``.tsv``: a header with a prompt column (``prompt``, ``prompts``, ``caption`` or
  ``text``, in any case) and optionally a tag column (``tag`` or ``category``); TSV has no quoting,
  so a ``"`` in a prompt is kept as it is;
- ``.jsonl``: one JSON object a line with a ``prompt``, ``caption`` or ``text`` key and optionally
  ``tag`` or ``category``.

Files are UTF-8 (a byte-order mark is dropped). Prompts and tags are stripped of surrounding
whitespace, and rows with an empty prompt are skipped; nothing is deduplicated. A prompt's
``metadata`` is its whole record (the CSV/TSV row or the JSON object), e.g. GenEval's metadata line.
A registered name wins over a file of the same name: write ``./NAME`` for the file.

The shipped files, their sources and licenses are in ``stablenoise/data/prompts/`` (SOURCES.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import StablenoiseError
from .plugins import Registry

ENTRY_POINT_GROUP = "stablenoise.prompts"
PROMPT_COLUMNS = ("prompt", "prompts", "caption", "text")  # the first one present is the prompt
TAG_COLUMNS = ("tag", "category")
FILE_TYPES = (".txt", ".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class Prompt:
    text: str
    tag: str = ""
    # The source record (a row or JSON object). Compared by ==, left out of the hash (a dict is not
    # hashable): equal prompts still hash equally. Treat it as read-only.
    metadata: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise StablenoiseError(f"a prompt must be non-empty text, not {self.text!r}")
        if not isinstance(self.tag, str):
            raise StablenoiseError(f"a prompt's tag must be text, not {self.tag!r}")
        object.__setattr__(self, "metadata", dict(self.metadata or {}))


@dataclass
class PromptSet:
    name: str
    prompts: list[Prompt]
    source: str = ""  # where the prompts come from and under which license

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    @property
    def tags(self) -> list[str]:
        return [p.tag for p in self.prompts]

    def digest(self) -> str:
        """sha256 (hex) of the prompts' texts and tags in order; the name, source and metadata do not
        enter it. The same prompts give the same digest on any machine and Python version."""
        payload = json.dumps([[p.text, p.tag] for p in self.prompts], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- registry

@dataclass(frozen=True)
class PromptSetEntry:
    name: str
    loader: Callable[[], object]
    description: str = ""


def _from_entry_point(registry: Registry, ep) -> None:
    registry.register(ep.name, PromptSetEntry(Registry.key(ep.name), partial(_from_entry_point_load, ep),
                                              f"from {ep.value}"))


def _from_entry_point_load(ep):
    return ep.load()()  # imported only now, when the set is used


PROMPT_SETS: Registry[PromptSetEntry] = Registry("prompt set", ENTRY_POINT_GROUP, _from_entry_point)


def register_prompt_set(name: str, loader: Callable[[], object], *, description: str = "",
                        replace: bool = False) -> None:
    """Make ``load_prompts(name)`` call ``loader()``. It returns a :class:`PromptSet` or an iterable of
    :class:`Prompt`, strings or ``(text, tag)`` pairs; it runs on each load, so keep it deterministic.

    Args:
        name: the set's name (case-insensitive).
        loader: builds the set.
        description: where the prompts come from and under which license.
        replace: replace a set already registered under the name.
    """
    if not callable(loader):
        raise StablenoiseError(f"cannot register prompt set {name!r}: a name and a callable loader are needed")
    PROMPT_SETS.register(name, PromptSetEntry(Registry.key(name), loader, description), replace=replace,
                         same=lambda a, b: a.loader is b.loader)


def available_prompt_sets() -> list[str]:
    return PROMPT_SETS.names()


def _known() -> str:
    return f"prompt sets: {', '.join(available_prompt_sets())}; or a {'/'.join(FILE_TYPES)} file"


def _fail(message: str, known: bool = False) -> StablenoiseError:
    message = " ".join(message.split("\n"))  # the CLI prints errors on one line
    return StablenoiseError(f"{message} ({_known()})" if known else message)


# ---------------------------------------------------------------- loading

def load_prompts(spec: str | os.PathLike, limit: int | None = None) -> PromptSet:
    """The prompt set a registered name or a prompt file means; with ``limit``, its first ``limit`` prompts.

    Args:
        spec: a registered prompt set's name, or a prompt file's path (a path object is always read as a file).
        limit: keep only the first ``limit`` prompts (a positive integer; None: all).

    Returns:
        The :class:`PromptSet`.

    Raises:
        StablenoiseError: a ``limit`` that is not a positive integer, an unknown name, a path that is missing or
            not a file, or a prompt set that fails to load or has no prompts.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _fail(f"prompt limit must be a positive integer, not {limit!r}")
    entry = None if isinstance(spec, os.PathLike) else PROMPT_SETS.find(str(spec))
    if entry is not None:
        prompt_set = _run(entry)
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            prompt_set = read_prompt_file(path)
        elif path.exists():
            raise _fail(f"{path} is not a file", known=True)
        elif path.suffix.lower() in FILE_TYPES or os.sep in str(spec) or "/" in str(spec):
            raise _fail(f"prompts file not found: {spec}", known=True)
        else:
            raise PROMPT_SETS.unknown(str(spec), f"; or a {'/'.join(FILE_TYPES)} file")
    if limit is not None:
        prompt_set = PromptSet(prompt_set.name, prompt_set.prompts[:limit], prompt_set.source)
    return prompt_set


def _run(entry: PromptSetEntry) -> PromptSet:
    try:
        result = entry.loader()
    except StablenoiseError as e:
        raise _fail(str(e)) from None
    except Exception as e:  # a third party's loader or a missing module: say which set, on one line
        raise _fail(f"prompt set {entry.name!r} ({entry.description or entry.loader!r}) failed to load: "
                    f"{type(e).__name__}: {e}") from None
    prompt_set = _as_prompt_set(entry.name, result, entry.description)
    if not prompt_set.prompts:
        raise _fail(f"prompt set {entry.name!r} has no prompts", known=True)
    return prompt_set


def _as_prompt_set(name: str, result, description: str) -> PromptSet:
    if isinstance(result, PromptSet):
        return PromptSet(name, list(result.prompts), result.source or description)
    if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        raise _fail(f"prompt set {name!r}: its loader returned {type(result).__name__}, not prompts")
    prompts = []
    for item in result:
        if isinstance(item, Prompt):
            prompts.append(item)
        elif isinstance(item, str):
            prompts.append(Prompt(item))
        elif isinstance(item, tuple) and 1 <= len(item) <= 3:
            prompts.append(Prompt(*item))
        else:
            raise _fail(f"prompt set {name!r}: {item!r} is not a prompt")
    return PromptSet(name, prompts, description)


# The sets shipped in stablenoise/data/prompts (see SOURCES.md there).
_SHIPPED = {
    "drawbench": ("drawbench.csv", "DrawBench (Saharia et al. 2022), 200 prompts, tag = category; "
                  "via xie-lab-ml/Golden-Noise-for-Diffusion-Models, Apache-2.0"),
    "pickapic": ("pickapic.txt", "Pick-a-Pic test set (Kirstain et al. 2023), its first 100 captions, as in the "
                 "paper; via xie-lab-ml/Golden-Noise-for-Diffusion-Models, Apache-2.0"),
    "geneval": ("geneval.jsonl", "GenEval (Ghosh et al. 2023), 553 prompts, tag = GenEval tag, metadata = its "
                "evaluation metadata line; djghosh13/geneval, MIT"),
    "partiprompts": ("partiprompts.tsv", "PartiPrompts (Yu et al. 2022), 1632 prompts, tag = category; "
                     "google-research/parti, Apache-2.0"),
}


def _shipped(name: str, file_name: str, source: str) -> PromptSet:
    with resources.as_file(resources.files(__package__).joinpath("data", "prompts", file_name)) as path:
        prompt_set = read_prompt_file(path)
    return PromptSet(name, prompt_set.prompts, f"{source} (stablenoise/data/prompts/SOURCES.md)")


for _name, (_file, _source) in _SHIPPED.items():
    register_prompt_set(_name, partial(_shipped, _name, _file, _source), description=_source)


# ---------------------------------------------------------------- files

def read_prompt_file(path: str | os.PathLike) -> PromptSet:
    """The prompts of a .txt, .csv, .tsv or .jsonl file (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise _fail(f"prompts file not found: {path}")
    kind = path.suffix.lower() or ".txt"  # a file without an extension is read as one prompt a line
    if kind not in FILE_TYPES:
        raise _fail(f"{path}: unknown prompt file type {path.suffix or '(no extension)'!r}", known=True)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is not part of the first prompt
    except UnicodeDecodeError as e:
        raise _fail(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise _fail(f"{path}: cannot read it ({e.strerror or e})") from None
    if kind == ".txt":
        prompts = _read_lines(text)
    elif kind == ".jsonl":
        prompts = _read_jsonl(path, text)
    else:
        prompts = _read_table(path, text, "\t" if kind == ".tsv" else ",")
    if not prompts:
        raise _fail(f"{path}: no prompts in file", known=True)
    return PromptSet(path.stem, prompts, f"file {path}")


def _read_lines(text: str) -> list[Prompt]:
    lines = (ln.strip() for ln in re.split(r"\r\n|\r|\n", text))
    return [Prompt(ln) for ln in lines if ln and not ln.startswith("#")]


def _column(names: list[str], wanted: tuple[str, ...]) -> int | None:
    lower = [n.strip().lower() for n in names]
    return next((lower.index(w) for w in wanted if w in lower), None)


def _read_table(path: Path, text: str, delimiter: str) -> list[Prompt]:
    # TSV has no quoting: a prompt may hold or start with a '"' (PartiPrompts does).
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # strict: a quote that is never closed is an error, not a prompt that runs to the end of the file.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    prompts = []
    try:
        header = [h.strip() for h in next(reader, [])]
        col = _column(header, PROMPT_COLUMNS)
        if col is None:
            raise _fail(f"{path}: no prompt column in its header {header!r}; one of "
                        f"{', '.join(PROMPT_COLUMNS)} is needed", known=True)
        tag_col = _column(header, TAG_COLUMNS)
        for row in reader:
            if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
                raise _fail(f"{path}, line {reader.line_num}: {len(row)} fields but {len(header)} columns "
                            f"(a field with a {'tab' if delimiter == chr(9) else 'comma'} that is not quoted?)")
            row = row + [""] * (len(header) - len(row))
            prompt = row[col].strip()
            if prompt:
                tag = row[tag_col].strip() if tag_col is not None else ""
                prompts.append(Prompt(prompt, tag, dict(zip(header, row))))
    except csv.Error as e:
        raise _fail(f"{path}, line {reader.line_num}: {e}") from None
    return prompts


def _read_jsonl(path: Path, text: str) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(f"{path}, line {number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise _fail(f"{path}, line {number}: not a JSON object")
        keys = list(record)
        key = _column(keys, PROMPT_COLUMNS)
        if key is None:
            raise _fail(f"{path}, line {number}: no prompt key; one of {', '.join(PROMPT_COLUMNS)} is needed",
                        known=True)
        prompt = record[keys[key]]
        if not isinstance(prompt, str):
            raise _fail(f"{path}, line {number}: the prompt is {type(prompt).__name__}, not text")
        tag_key = _column(keys, TAG_COLUMNS)
        tag = record[keys[tag_key]] if tag_key is not None else ""
        if prompt.strip():
            prompts.append(Prompt(prompt.strip(), "" if tag is None else str(tag).strip(), record))
    return prompts
