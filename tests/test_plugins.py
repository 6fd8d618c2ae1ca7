"""The one registry type (plugins.Registry) and the five registries built on it: rewards, model families,
prompt sets, CLI commands and bench methods."""

import sys
from importlib import metadata

import click
import pytest

from stablenoise.errors import StablenoiseError
from stablenoise.plugins import Registry

GROUP = "stablenoise.test-things"


def test_register_find_and_the_unknown_name_error():
    r = Registry("thing")
    r.register("Alpha", 1)
    r.register("beta", 2)
    assert r.find(" ALPHA ") == 1 and r.get("beta") == 2 and r.find("gamma") is None
    assert r.names() == ["alpha", "beta"] and "Alpha" in r and list(r) == ["alpha", "beta"]
    with pytest.raises(StablenoiseError) as e:
        r.get("gamma")
    assert str(e.value) == "unknown thing 'gamma'; known: alpha, beta"
    assert str(r.unknown("x", " (or a file)")) == "unknown thing 'x'; known: alpha, beta (or a file)"


def test_a_taken_name_needs_replace_unless_it_is_the_same_entry():
    r = Registry("thing")
    entry = object()
    r.register("a", entry)
    r.register("a", entry)  # the same entry again: harmless
    with pytest.raises(StablenoiseError, match="thing 'A' is already registered"):
        r.register("A", object())
    r.register("a", 5, replace=True)
    assert r.register("a", 5.0, same=lambda x, y: x == y) == 5 and type(r.get("a")) is int  # the first stays
    with pytest.raises(StablenoiseError, match="without a name"):
        r.register(" ", 1)


def test_entry_points_are_read_once_lazily_and_code_wins(monkeypatch, tmp_path):
    (tmp_path / "third_party_thing.py").write_text("VALUE = 'from the package'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [metadata.EntryPoint("theirs", "third_party_thing:VALUE", GROUP),
           metadata.EntryPoint("mine", "third_party_thing:VALUE", GROUP)]
    reads = []

    def entry_points(group=None):
        reads.append(group)
        return [e for e in eps if e.group == group]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    built = []
    r = Registry("thing", GROUP, lambda reg, ep: reg.register(ep.name, ep.load), builtin=lambda: built.append(1))
    r.register("mine", lambda: "from code")
    assert reads == [] and built == []  # nothing read before the first lookup
    assert r.names() == ["mine", "theirs"] and reads == [GROUP] and built == [1]
    assert "third_party_thing" not in sys.modules  # listed, not imported
    assert r.get("theirs")() == "from the package" and r.get("mine")() == "from code"
    r.names()
    assert reads == [GROUP] and built == [1]  # read once
    eps.append(metadata.EntryPoint("late", "third_party_thing:VALUE", GROUP))
    assert "late" not in r
    r.rescan()
    assert "late" in r and reads == [GROUP, GROUP]
    monkeypatch.delitem(sys.modules, "third_party_thing")


def test_a_copy_is_independent_and_keeps_the_registration_order():
    r = Registry("thing")
    for name in ("c", "a", "b"):
        r.register(name, name.upper())
    c = r.copy()
    c.register("d", "D")
    assert "d" not in r and c.registered() == ["C", "A", "B", "D"] and c.names() == ["a", "b", "c", "d"]


def test_the_five_registries_are_registries():
    from stablenoise.backends.registry import FAMILIES, families
    from stablenoise.cli import COMMANDS, main
    from stablenoise.prompts import PROMPT_SETS
    from stablenoise.rewards.registry import REWARDS

    from stablenoise.bench.methods import METHODS

    assert all(isinstance(r, Registry) for r in (FAMILIES, COMMANDS, PROMPT_SETS, REWARDS, METHODS))
    assert [k.name for k in METHODS.registered()][:3] == ["random", "most-stable", "least-stable"]
    assert {"shapes-verifier", "hpsv2"} <= set(REWARDS) and {"drawbench", "shapes-heldout"} <= set(PROMPT_SETS)
    assert {"shapes", "shapes-flow"} <= set(FAMILIES)
    assert [f.name for f in families()][-5:] == ["sd3", "flux", "sdxl", "sd", "shap-e"]  # built-ins last
    # every CLI command is in the registry, the shapes world's by entry point
    assert set(COMMANDS) == set(main.commands) and {"demo", "experiment", "train-shapes", "bench"} <= set(COMMANDS)
    assert all(isinstance(main.commands[n], click.Command) for n in COMMANDS)


def test_a_registered_family_wins_over_the_built_in_one(monkeypatch):
    from diffusers import StableDiffusionPipeline

    from stablenoise.backends import registry
    from stablenoise.backends.base import Defaults

    monkeypatch.setattr(registry, "FAMILIES", registry.FAMILIES.copy())

    class MyPipeline(StableDiffusionPipeline):
        pass

    sd = next(f for f in registry.families() if f.name == "sd")
    mine = registry.Family("mine", MyPipeline, sd.backend, Defaults(3, 1.0))
    registry.register_family(mine)
    registry.register_family(registry.Family("mine", MyPipeline, sd.backend, Defaults(3, 1.0)))  # equal: harmless
    with pytest.raises(StablenoiseError, match="model family 'mine' is already registered"):
        registry.register_family(registry.Family("mine", MyPipeline, sd.backend, Defaults(4, 1.0)))
    assert registry.families()[0] is mine and registry.families()[-2].name == "sd"


def test_a_package_adds_a_bench_method_by_entry_point(monkeypatch, tmp_path):
    from stablenoise.bench import methods

    (tmp_path / "their_methods.py").write_text(
        "import numpy as np\nfrom stablenoise.bench.methods import Kind\n"
        "FIRST = Kind('first-seed', choose=lambda table, method: np.zeros(len(table.prompts), dtype=int))\n"
        "NOT_A_KIND = 'first'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [metadata.EntryPoint("first-seed", "their_methods:FIRST", "stablenoise.methods")]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    monkeypatch.setattr(methods, "METHODS", methods.METHODS.copy())
    methods.METHODS.rescan()
    assert methods.parse_methods("random,first-seed")[1].entry.choose is not None
    assert "first-seed" in [k.name for k in methods.METHODS.registered()]
    eps[0] = metadata.EntryPoint("bad", "their_methods:NOT_A_KIND", "stablenoise.methods")
    monkeypatch.setattr(methods, "METHODS", methods.METHODS.copy())
    methods.METHODS._entries.pop("first-seed")
    methods.METHODS.rescan()
    with pytest.raises(StablenoiseError, match="not a stablenoise.bench.methods.Kind"):
        methods.parse_methods("random")
    monkeypatch.delitem(sys.modules, "their_methods")
