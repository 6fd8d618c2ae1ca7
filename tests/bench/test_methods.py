"""The method registry: one Method type, ids that round-trip and keep their stored meaning, --methods choosing
what is derived and reported, oracles, and a new method as one registration."""

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stablenoise.bench import methods as registry
from stablenoise.bench import methods
from stablenoise.bench.methods import Kind, derive_methods, parse_methods, register, scoring_cost
from stablenoise.bench.results import load_results
from stablenoise.cli import main
from stablenoise.errors import StablenoiseError
from stablenoise.settings import OptimizerSettings

from .test_report import PROMPTS, make_store

DOCS = Path(__file__).parents[2] / "docs"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_store(run, configs=(("toyset", 10, 1.0),))
    return run


@pytest.fixture
def kinds():
    """Register kinds for one test; the registry is as before afterwards."""
    before = methods.METHODS
    methods.METHODS = before.copy()
    yield register
    methods.METHODS = before


def test_ids_round_trip_through_the_parser():
    spec = "random,most-stable,most-stable-of:4,best:shapes-clip,optimize:lr=18.75;preserve_norm=1,reno:shapes-clip=1"
    methods = parse_methods(spec)
    assert [m.id for m in methods] == ["random", "most-stable", "most-stable-of:4", "best:shapes-clip",
                                       "optimize:lr=18.75,preserve_norm=1", "reno:shapes-clip=1"]
    assert parse_methods([m.id for m in methods]) == methods  # an id names the same method again
    assert [m.title for m in methods[:4]] == ["random", "most stable", "most stable of 4", "best of K by shapes-clip"]
    assert [m.optimizing for m in methods] == [False] * 4 + [True] * 2
    assert methods[4].settings == OptimizerSettings(lr=18.75, preserve_norm=True)
    assert parse_methods("optimize:lr=100")[0].id == "optimize"  # the paper's own settings: no suffix


@pytest.mark.parametrize("spec, message", [
    ("random,bogus", "unknown method 'bogus'"),
    ("most-stable:3", "takes no argument"),
    ("most-stable-of:0", "number of seeds >= 1"),
    ("most-stable-of:x", "number of seeds >= 1"),
    ("optimize:lr=-1", "lr > 0"),
    ("", "no method given"),
])
def test_bad_methods_are_one_line_errors(spec, message):
    with pytest.raises(StablenoiseError, match=message) as e:
        parse_methods(spec)
    assert "\n" not in str(e.value)


def test_a_name_is_registered_once(kinds):
    with pytest.raises(StablenoiseError, match="already registered"):
        kinds(Kind("best"))
    for name in ("a:b", "a,b", "seed"):
        with pytest.raises(StablenoiseError, match="cannot name a method"):
            kinds(Kind(name))


def test_oracle_is_whether_a_method_looks_at_the_judge():
    best_v, best_clip, reno, most = parse_methods("best:shapes-verifier,best:shapes-clip,reno:shapes-clip=1,"
                                                  "most-stable")
    assert best_v.oracle("shapes-verifier") and not best_v.oracle("shapes-clip")
    assert best_clip.oracle("shapes-clip") and not best_clip.oracle("shapes-verifier")
    assert reno.oracle("shapes-clip") and not reno.oracle("shapes-verifier")  # it optimizes shapes-clip
    assert not most.oracle("shapes-verifier") and not best_v.oracle(None)


def test_methods_choose_what_is_derived_and_reported(store, tmp_path):
    table = load_results(store).tables[0]
    chosen = parse_methods("most-stable,best:toy,optimize")
    assert list(derive_methods(table, chosen)) == ["random", "most-stable", "best:toy", "optimize"]  # random always
    # argumentless kinds stand for every instance the config has; instances it lacks are not derived
    assert list(derive_methods(table, parse_methods("best,most-stable-of,reno"))) == [
        "random", "most-stable-of:1", "most-stable-of:4", "best:shapes-verifier", "best:toy"]
    assert list(derive_methods(table, parse_methods("most-stable-of:7,most-stable-of:8"))) == [
        "random", "most-stable-of:7"]  # of all K = 8 seeds is the most stable: not an ablation
    result = CliRunner().invoke(main, ["report", str(store), "--methods", "most-stable,best:toy", "--bootstrap", "10",
                                       "--grid-prompts", "0", "--md", str(tmp_path / "r.md"),
                                       "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r.md").read_text()
    rows = {line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ")}
    assert {"random", "most stable", "best of K by toy"} <= rows
    assert not {"least stable", "optimize", "most stable of 4", "best of K by shapes-verifier"} & rows


@pytest.mark.parametrize("spec, message", [("best:nope", "method best:nope has nothing to show"),
                                           ("reno", "method reno has nothing to show"),
                                           ("bogus", "unknown method 'bogus'")])
def test_report_refuses_a_method_the_run_cannot_show(store, tmp_path, spec, message):
    result = CliRunner().invoke(main, ["report", str(store), "--methods", spec, "--md", str(tmp_path / "r.md"),
                                       "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.md").exists()


def test_the_report_keys_on_ids_and_flags_not_on_titles(store, kinds, monkeypatch):
    """A method titled like an ablation is in the verdict's plot; one flagged as an ablation is not, whatever
    its title; a best of K by a reward is an oracle only when that reward judges."""
    import stablenoise.bench.report as report

    forests = []
    monkeypatch.setattr(report, "plot_forest", lambda rows, *args: forests.append(rows) or b"png")
    kinds(Kind("decoy", title=lambda arg: "most stable of 2", choose=lambda t, m: registry.pick(t.seeds.stability),
               cost=lambda t, m: scoring_cost(t)))
    kinds(Kind("hidden", title=lambda arg: "plain", choose=lambda t, m: registry.pick(t.seeds.stability),
               cost=lambda t, m: scoring_cost(t), ablation=True))
    table = load_results(store).tables[0]
    for judge, oracle in (("shapes-verifier", "best of K by shapes-verifier"), ("toy", "best of K by toy")):
        forests.clear()
        a = report.analyze(table, n_boot=10, judge=judge)
        text = report._verdict([a])[1].text
        shown = [label.split(": ", 1)[1] for label, _ in forests[0]]
        assert "most stable of 2" in shown and "plain" not in shown and "most stable of 4" not in shown
        assert oracle not in shown and oracle not in text and f"judged by {judge}" in text
        assert {"best of K by shapes-verifier", "best of K by toy"} - {oracle} <= set(shown)


def test_a_verifier_is_a_pass_fail_reward_whatever_its_name(tmp_path):
    import stablenoise.bench.report as report

    make_store(tmp_path, configs=(("toyset", 10, 1.0),))
    with sqlite3.connect(tmp_path / "bench.sqlite") as db:
        db.execute("UPDATE scores SET name = 'exact' WHERE name = 'shapes-verifier'")
        db.execute("UPDATE scores SET name = 'a-verifier' WHERE name = 'toy'")  # continuous: not a verifier
    a = report.analyze(load_results(tmp_path).tables[0], n_boot=10)
    assert a.table.rewards == ["a-verifier", "exact"]
    assert a.judge == "exact" and a.verifiers == ["exact"]
    assert {(row[1], row[2]) for row in a.fooled if row[0] != "first seed"} == {("a-verifier", "exact")}


def test_stored_method_ids_keep_their_meaning():
    """The committed shapes bench: its optimizing rows (and their start rows) are read as the methods that made
    them, and each selection method picks what a direct read of the store picks."""
    table = load_results(DOCS / "bench-shapes").tables[0]
    methods = derive_methods(table)
    assert list(methods) == ["random", "most-stable", "least-stable", "inversion-ablation:inversion_guidance=2",
                             "most-stable-of:1", "most-stable-of:4", "best:shapes-clip", "best:shapes-verifier",
                             *table.optimized]
    assert set(table.optimized) == {"optimize", "optimize:lr=18.75,preserve_norm=1", "reno:shapes-clip=1"}
    for label in table.optimized:
        m = methods[label].method
        assert m.optimizing and m.id == label and methods[label].start is not None
    assert methods["optimize:lr=18.75,preserve_norm=1"].method.settings.preserve_norm
    db = sqlite3.connect(f"file:{DOCS / 'bench-shapes' / 'bench.sqlite'}?mode=ro", uri=True)
    rows = db.execute("SELECT s.prompt_idx, s.stability, v.value FROM samples s JOIN scores v ON v.sample_id = s.id "
                      "AND v.name = 'shapes-verifier' WHERE s.method = 'seed' AND s.config_id = 1").fetchall()
    by_prompt = {}
    for p, stability, verifier in rows:
        by_prompt.setdefault(p, []).append((stability, verifier))
    most = [max(v)[1] for _, v in sorted(by_prompt.items())]
    least = [min(v)[1] for _, v in sorted(by_prompt.items())]
    np.testing.assert_array_equal(methods["most-stable"].values["shapes-verifier"], most)
    np.testing.assert_array_equal(methods["least-stable"].values["shapes-verifier"], least)
    start = db.execute("SELECT AVG(v.value) FROM samples s JOIN scores v ON v.sample_id = s.id AND v.name = "
                       "'shapes-clip' WHERE s.method = 'optimize@start'").fetchone()[0]
    assert np.nanmean(methods["optimize"].start["shapes-clip"]) == pytest.approx(start)


def test_rows_this_version_cannot_name_are_shown_under_their_own_label(tmp_path):
    make_store(tmp_path, configs=(("toyset", 10, 1.0),))
    with sqlite3.connect(tmp_path / "bench.sqlite") as db:
        db.execute("UPDATE samples SET method = 'optimize:lr=100' WHERE method = 'optimize'")  # not how we'd name it
    table = load_results(tmp_path).tables[0]
    out = derive_methods(table)["optimize:lr=100"]
    assert out.method.title == "optimize:lr=100" and out.method.optimizing and out.start is None
    np.testing.assert_allclose(out.stability, 0.99)
    with pytest.raises(StablenoiseError, match="cannot run"):
        out.method.run(None, [], None, 1, 1.0, 1.0, {}, False)


# ----------------------------------------------------------------------------- a new method is one registration

def _median_rank(table, method):
    """The seed of median stability (the lower middle of an even count), -1 where none is known."""
    s = table.seeds.stability
    known = np.isfinite(s).sum(axis=1)
    order = np.argsort(np.where(np.isfinite(s), s, np.inf), axis=1, kind="stable")
    idx = order[np.arange(len(s)), np.maximum((known - 1) // 2, 0)]
    idx[known == 0] = -1
    return idx


class _Shrunk:
    def __init__(self, noise, start):
        self.noise, self.start_noise = noise, start


def _shrink(backend, texts, noise, method, steps, guidance, inv, rewards, progress, iterations=None):
    """A toy optimizer: the noise scaled by its settings' lr (as a factor), or not at all for 0 iterations."""
    factor = method.settings.lr if iterations != 0 else 1.0
    return _Shrunk(noise * factor, noise.clone()), [{"factor": factor} for _ in texts], 0


def _register_both(kinds):
    kinds(Kind("median-stable", title=lambda arg: "median stable", choose=_median_rank,
               cost=lambda t, m: scoring_cost(t)))
    kinds(Kind("shrink", run=_shrink, defaults=lambda: OptimizerSettings(iterations=1, lr=0.5)))


def test_a_registered_selection_method_is_derived_with_its_cost(store, kinds):
    _register_both(kinds)
    table = load_results(store).tables[0]
    out = derive_methods(table, parse_methods("median-stable"))["median-stable"]
    s, toy = table.seeds.stability, table.seeds.scores["toy"]
    for p in range(PROMPTS):
        ranks = sorted((v, r) for r, v in enumerate(s[p]) if np.isfinite(v))
        assert out.values["toy"][p] == toy[p, ranks[(len(ranks) - 1) // 2][1]]
    assert out.cost["unet_calls"].tolist() == derive_methods(table)["most-stable"].cost["unet_calls"].tolist()
    assert "median-stable" in derive_methods(table)  # and among every method the run can show


@pytest.mark.model
def test_a_registered_method_runs_in_the_bench_is_stored_and_reported(tmp_path, kinds):
    """One registration each: a selection method (median stability) and an optimizing one (a toy that scales the
    noise), through ``stablenoise bench --methods``: rows stored, outcomes derived, both in the report, and the
    methods not asked for absent from it."""
    from stablenoise.bench.store import Store

    _register_both(kinds)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["bench", "--prompts", "shapes-heldout", "--limit", "2", "-k", "3",
                                       "--steps", "1", "--rewards", "shapes-verifier", "--methods",
                                       "median-stable,shrink", "--out", str(out)])
    assert result.exit_code == 0, result.output
    store = Store(out, create=False)
    rows = store.rows()
    store.close()
    assert sorted(r["method"] for r in rows if r["method"] != "seed") == ["shrink"] * 2 + ["shrink@start"] * 2
    for r in rows:
        if r["method"] == "shrink":
            start = next(x for x in rows if x["method"] == "shrink@start" and x["prompt_idx"] == r["prompt_idx"])
            assert r["seed"] == start["seed"] == 3 * r["prompt_idx"]  # from the prompt's first seed
            extra, start_extra = json.loads(r["extra"]), json.loads(start["extra"])
            assert extra["factor"] == 0.5 and extra["settings"]["lr"] == 0.5  # its details, as run
            # the noise it stored is the scaled one; its start the seed's own
            assert extra["norm_ratio"] == pytest.approx(0.5 * start_extra["norm_ratio"], rel=1e-5)
    table = load_results(out).tables[0]
    derived = derive_methods(table, parse_methods("median-stable,shrink"))
    assert list(derived) == ["random", "median-stable", "shrink"] and derived["shrink"].start is not None
    md = (out / "report.md").read_text()
    assert "| median stable |" in md and "| shrink |" in md and "| shrink − its start |" in md
    assert "most stable" not in md.split("## Config")[0].split("Results per method")[1]
