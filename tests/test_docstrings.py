"""Every public function of stablenoise, and every public method of its public classes, documents each of its
parameters (Args:) and what it returns (Returns:)."""

import inspect
import re

import pytest

import stablenoise

FUNCTIONS = sorted(n for n in stablenoise.__all__ if inspect.isfunction(getattr(stablenoise, n)))
CLASSES = sorted(n for n in stablenoise.__all__ if inspect.isclass(getattr(stablenoise, n)))
# Methods the class itself defines (not dataclass or Protocol machinery, not properties: those are attributes).
METHODS = sorted(f"{c}.{m}" for c in CLASSES for m, v in vars(getattr(stablenoise, c)).items()
                 if not m.startswith("_") and (inspect.isfunction(v) or isinstance(v, (staticmethod, classmethod))))


def parameters(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]


def section(doc: str, title: str) -> list[str] | None:
    """The lines of a Google-style section (``Args:``), up to the next unindented line; None if there is none."""
    lines = doc.splitlines()
    if f"{title}:" not in lines:
        return None
    body = []
    for line in lines[lines.index(f"{title}:") + 1:]:
        if line and not line.startswith(" "):
            break
        body.append(line)
    return body


def documented(doc: str) -> list[str]:
    """The parameter names the Args section describes: ``name:`` or ``a, b:`` at the entries' indent."""
    names = []
    for line in section(doc, "Args") or []:
        m = re.match(r"^    (\*{0,2}\w+(?:, \*{0,2}\w+)*):(?: |$)", line)
        if m:
            names += [n.lstrip("*") for n in m.group(1).split(", ")]
    return names


def test_the_lists_are_the_public_functions_and_methods():
    assert len(FUNCTIONS) >= 16 and {"select", "stability", "generate", "load"} <= set(FUNCTIONS)
    assert {"Backend.encode", "SeedBank.load", "OptimizerSettings.parse", "Conditioning.expand"} <= set(METHODS)
    assert not any(m.endswith((".scores", ".batch_size", ".__init__")) for m in METHODS)


def resolve(name: str):
    """``"select"`` -> stablenoise.select; ``"SeedBank.top"`` -> the function SeedBank defines."""
    owner, _, method = name.rpartition(".")
    if not owner:
        return getattr(stablenoise, name)
    v = vars(getattr(stablenoise, owner))[method]
    return v.__func__ if isinstance(v, (staticmethod, classmethod)) else v


@pytest.mark.parametrize("name", FUNCTIONS + METHODS)
def test_every_parameter_and_the_return_are_documented(name):
    fn = resolve(name)
    doc = inspect.getdoc(fn) or ""
    params = parameters(fn)
    assert section(doc, "Returns"), f"{name}: no Returns: section"
    if params:
        assert section(doc, "Args"), f"{name}: no Args: section"
    names = documented(doc)
    assert [p for p in params if p not in names] == [], f"{name}: parameters missing from Args"
    assert [n for n in names if n not in params] == [], f"{name}: Args names parameters it does not take"
    assert len(names) == len(set(names)), f"{name}: a parameter is described twice"


def test_a_missing_parameter_line_is_caught():
    doc = inspect.getdoc(stablenoise.noises_from_seeds)
    assert documented(doc) == ["seeds", "shape", "noise_norm"]
    cut = "\n".join(line for line in doc.splitlines() if not line.startswith("    shape:"))
    assert "shape" not in documented(cut)
    assert section("Summary.\n\nArgs:\n    x: y.\n", "Returns") is None
