"""The bench report on small synthetic stores whose right answers are known by construction."""

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stablenoise.bench.document import Image as Picture
from stablenoise.bench.document import Table
from stablenoise.bench.report import build, derive_methods, load_results, write_report
from stablenoise.bench.schema import DDL, SCHEMA_VERSION, SEED_METHOD
from stablenoise.cli import main
from stablenoise.errors import StablenoiseError

K, PROMPTS, TAGS = 8, 6, ["circles", "circles", "squares", "squares", "counts", "counts"]
VARIANT = "stability@inversion_guidance=1"
VARIANT_CALLS = 20
OPT_UNET, OPT_SECONDS = 500, 5.0
N_BOOT = 100


def _png(run, rel, color):
    path = run / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)
    return rel


def make_store(run, configs=(("toyset", 10, 1.0), ("toyset", 20, 1.0)), schema_version=SCHEMA_VERSION,
               with_samples=True):
    """Configs (prompt set, steps, guidance), by default two differing in steps; per config the truth as
    (prompt, seed rank) arrays.

    toy = 10 * stability + prompt index, so within a prompt the most stable seed has the highest toy reward;
    the seed of rank 5 of prompt 0 has a NULL stability and the highest toy reward of all (so it must never
    be the most stable, but is the best by toy). The stability variant ranks seeds in reverse. One
    optimizing method starts from each prompt's first seed: toy +1 over it, stability 0.99, verifier fails.
    The second config lacks the last seed and the optimized row of its last prompt (a run in progress)."""
    run.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(run / "bench.sqlite")
    db.executescript(DDL)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(schema_version),))
    db.execute("INSERT INTO meta VALUES ('commands', ?)", (json.dumps(["stablenoise bench --prompts toyset"]),))
    rng = np.random.default_rng(0)
    truth = {}
    for c, (prompt_set, n_steps, guidance) in enumerate(configs, start=1):
        db.execute("INSERT INTO configs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   (c, f"digest{c}", prompt_set, "shapes", n_steps, guidance, 1.0, K, 0,
                    json.dumps({"prompt_set": prompt_set}),
                    json.dumps({"torch": "2.3.0", "stablenoise": "0.1.0"}), "2024-01-01"))
        db.executemany("INSERT INTO prompts VALUES (?,?,?,?)",
                       [(c, i, f"prompt {i} of {TAGS[i]}", TAGS[i]) for i in range(PROMPTS)])
        stab = 0.5 + 0.05 * np.array([rng.permutation(K) for _ in range(PROMPTS)], dtype=float)
        toy = 10 * stab + np.arange(PROMPTS)[:, None]
        verifier = (rng.random((PROMPTS, K)) < 0.5).astype(float)
        stab[0, 5], toy[0, 5], verifier[0, 5] = np.nan, 100.0, 1.0
        variant = 2.0 - stab
        present = np.ones((PROMPTS, K), dtype=bool)
        if c == 2:
            present[PROMPTS - 1, K - 1] = False
        t = {"stab": stab, "toy": toy, "verifier": verifier, "variant": variant, "present": present,
             "unet": 2 * n_steps, "image": n_steps}
        truth[c] = t
        sid = 100 * c
        for p in range(PROMPTS):
            for j in range(K):
                if not present[p, j]:
                    continue
                sid += 1
                seed = p * K + j
                db.execute("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           (sid, c, p, SEED_METHOD, seed, j, None if np.isnan(stab[p, j]) else stab[p, j],
                            _png(run, f"images/c{c}/p{p}-s{j}.png", (30 * j, 40 * p, 100)), None, 2 * n_steps,
                            n_steps, 0, 1.0, json.dumps({"variant_calls": VARIANT_CALLS}), "now"))
                db.executemany("INSERT INTO scores VALUES (?,?,?)",
                               [(sid, "toy", toy[p, j]), (sid, "shapes-verifier", verifier[p, j]),
                                (sid, VARIANT, None if np.isnan(variant[p, j]) else variant[p, j])])
            if c == 2 and p == PROMPTS - 1:
                continue
            sid += 1
            db.execute("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (sid, c, p, "optimize", p * K, 0, 0.99, _png(run, f"images/c{c}/p{p}-opt.png", "white"),
                        "noise.safetensors", OPT_UNET, n_steps, 0, OPT_SECONDS, "{}", "now"))
            db.executemany("INSERT INTO scores VALUES (?,?,?)",
                           [(sid, "toy", toy[p, 0] + 1.0), (sid, "shapes-verifier", 0.0)])
    if not with_samples:
        db.execute("DELETE FROM scores")
        db.execute("DELETE FROM samples")
    db.commit()
    db.close()
    return truth


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return run, make_store(run)


@pytest.fixture(scope="module")
def written(store):
    run, truth = store
    html, md = write_report(run, n_boot=N_BOOT)
    return run, truth, html.read_text(), md.read_text()


def _methods(store, config_id):
    run, truth = store
    table = next(t for t in load_results(run).tables if t.config.id == config_id)
    return table, derive_methods(table), truth[config_id]


def _masked_max(values, keep):
    return np.where(keep, values, -np.inf).max(axis=1)


def test_load_results_reads_every_config_into_arrays(store):
    run, truth = store
    results = load_results(run)
    assert [t.config.steps for t in results.tables] == [10, 20]
    t = results.tables[0]
    assert t.rewards == ["shapes-verifier", "toy"] and t.variants == [VARIANT]
    assert t.tags == TAGS and t.texts[2] == "prompt 2 of squares"
    np.testing.assert_array_equal(t.seeds.scores["toy"], truth[1]["toy"])
    assert np.isnan(t.seeds.stability[0, 5])
    assert list(t.optimized) == ["optimize"] and t.config.settings["prompt_set"] == t.config.prompt_set
    assert np.isnan(results.tables[1].seeds.stability[PROMPTS - 1, K - 1])  # the missing row


def test_selection_methods_by_construction(store):
    table, m, t = _methods(store, 1)
    known = np.isfinite(t["stab"])
    assert list(m)[:6] == ["random", "most-stable", "least-stable", "inversion-ablation:inversion_guidance=1",
                           "most-stable-of:1", "most-stable-of:4"]
    assert [m[i].method.title for i in list(m)[:6]] == [
        "random", "most stable", "least stable", "most stable (inversion_guidance=1)", "most stable of 1",
        "most stable of 4"]
    # float64 means and maxima over K stored values: assert_allclose's rtol 1e-7 >> f64(K) rounding
    np.testing.assert_allclose(m["random"].values["toy"], t["toy"].mean(axis=1))
    np.testing.assert_allclose(m["random"].values["shapes-verifier"], t["verifier"].mean(axis=1))
    # most stable = the highest toy among seeds with a stability: the NULL-stability seed never wins
    np.testing.assert_allclose(m["most-stable"].values["toy"], _masked_max(t["toy"], known))
    np.testing.assert_allclose(m["least-stable"].values["toy"], -_masked_max(-t["toy"], known))
    np.testing.assert_allclose(m["most-stable"].stability, np.nanmax(t["stab"], axis=1))
    # the variant ranks in reverse: its most stable is the least stable
    np.testing.assert_allclose(m["inversion-ablation:inversion_guidance=1"].values["toy"],
                               m["least-stable"].values["toy"])
    # the K ablation looks at the first k seeds only
    np.testing.assert_allclose(m["most-stable-of:1"].values["toy"], t["toy"][:, 0])
    np.testing.assert_allclose(m["most-stable-of:4"].values["toy"], _masked_max(t["toy"][:, :4], known[:, :4]))
    # best of K by a reward: argmax of that reward, and its values on every reward
    best = t["toy"].argmax(axis=1)
    assert best[0] == 5
    np.testing.assert_allclose(m["best:toy"].values["toy"], t["toy"].max(axis=1))
    np.testing.assert_allclose(m["best:toy"].values["shapes-verifier"],
                               t["verifier"][np.arange(PROMPTS), best])
    np.testing.assert_allclose(m["best:shapes-verifier"].values["shapes-verifier"], t["verifier"].max(axis=1))
    # grids show the first seed for random
    assert m["random"].image[3] == "images/c1/p3-s0.png"
    np.testing.assert_allclose(m["random"].shown_values["toy"], t["toy"][:, 0])


def test_optimizing_methods_keep_their_rows_and_start_seed(store):
    _, m, t = _methods(store, 1)
    opt = m["optimize"]
    assert opt.method.optimizing and list(m)[-1] == "optimize"
    np.testing.assert_allclose(opt.values["toy"], t["toy"][:, 0] + 1)
    np.testing.assert_allclose(opt.start["toy"], t["toy"][:, 0])
    np.testing.assert_allclose(opt.stability, 0.99)


def test_costs_per_method(store):
    _, m, t = _methods(store, 1)
    unet, image = t["unet"], t["image"]

    def cost(name):
        return {k: float(np.mean(v)) for k, v in m[name].cost.items()}

    assert cost("random") == {"unet_calls": image, "reward_calls": 0, "seconds": 1.0 * image / unet}
    assert cost("most-stable") == {"unet_calls": K * unet, "reward_calls": 0, "seconds": K * 1.0}
    assert cost("least-stable") == cost("most-stable")
    assert cost("inversion-ablation:inversion_guidance=1")["unet_calls"] == K * (unet + VARIANT_CALLS)
    assert cost("most-stable-of:4")["unet_calls"] == 4 * unet
    assert cost("most-stable-of:1")["unet_calls"] == image  # nothing to choose from: no scoring
    assert cost("best:toy") == {"unet_calls": K * image, "reward_calls": K, "seconds": K * image / unet}
    assert cost("optimize") == {"unet_calls": OPT_UNET, "reward_calls": 0, "seconds": OPT_SECONDS}


def test_a_run_in_progress_leaves_gaps_not_errors(store):
    _, m, t = _methods(store, 2)
    last = PROMPTS - 1
    assert m["most-stable"].cost["unet_calls"][last] == (K - 1) * t["unet"]
    assert m["random"].values["toy"][last] == pytest.approx(t["toy"][last, :K - 1].mean())
    assert np.isnan(m["optimize"].values["toy"][last])


def test_report_tables_show_the_expected_values(written):
    run, truth, html, md = written
    t = truth[1]
    most_stable_toy = _masked_max(t["toy"], np.isfinite(t["stab"])).mean()
    random_pass = 100 * t["verifier"].mean()
    for text in (html, md):
        assert f"{t['toy'].mean(axis=1).mean():.3f} [" in text  # random, toy
        assert f"{most_stable_toy:.3f} [" in text
        assert f"{random_pass:.1f}% [" in text  # a 0/1 reward as a percentage
        assert "+1.000 [1.000, 1.000] *" in text  # optimize vs its start: exactly +1 toy
        assert "+1.000 [1.000, 1.000]" in text  # within-prompt Spearman(stability, toy) = 1
        assert "stablenoise bench --prompts toyset" in text and "2.3.0" in text
        assert "Sweep over steps" in text and "Fooled" in text
    assert "most stable of 4" in html and "best of K by toy" in html
    # the cost table: best of K by toy = 8 images of 10 UNet calls and 8 reward calls
    assert re.search(r"<td>best of K by toy</td><td>80</td><td>8</td>", html)


def test_report_html_is_self_contained_and_never_shows_nan(written):
    run, _, html, md = written
    assert html.count("data:image/png;base64,") >= 10  # plots and grid tiles embedded
    assert "<script" not in html and 'src="images/' not in html
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "nan" not in without_data.lower() and "nan" not in md.lower()
    files = sorted(p.name for p in (run / "report_files").iterdir())
    assert "config-1-deciles.png" in files and any(f.startswith("sweep-steps") for f in files)
    assert all(f"report_files/{f}" in md for f in files)
    tile = next(f for f in files if "-grid-" in f)
    assert Image.open(run / "report_files" / tile).size == (96, 96)  # 32x32 enlarged, pixel for pixel


@pytest.fixture
def no_plots(monkeypatch):
    """Plots take most of a report's time; tests of its structure do without them."""
    import stablenoise.bench.report as report

    monkeypatch.setattr(report, "plot_deciles", lambda *args: b"png")
    monkeypatch.setattr(report, "plot_sweep", lambda *args: b"png")


def test_prompt_sets_side_by_side_and_a_guidance_sweep(tmp_path, no_plots):
    make_store(tmp_path, configs=[("toyset", 10, 1.0), ("other", 10, 1.0), ("toyset", 10, 3.0)])
    blocks = build(load_results(tmp_path), grid_prompts=0, n_boot=20)
    table1 = [b for b in blocks if isinstance(b, Table) and b.groups]
    assert len(table1) == 1  # toyset and other at guidance 1, side by side
    assert [label for label, _ in table1[0].groups] == ["toyset (6 prompts)", "other (6 prompts)"]
    assert table1[0].headers == ["method"] + 2 * ["stability", "shapes-verifier", "toy"]
    sweeps = [b for b in blocks if isinstance(b, Picture) and b.name.startswith("sweep-")]
    assert [b.name for b in sweeps] == ["sweep-guidance-1-3.png"]


def _bad_stores(tmp_path):
    make_store(tmp_path / "other-version", schema_version=SCHEMA_VERSION + 1)
    make_store(tmp_path / "empty", with_samples=False)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "bench.sqlite").write_text("not a database")
    (tmp_path / "none").mkdir()
    return {"other-version": "schema version", "empty": "no samples", "garbage": "not a readable bench store",
            "none": "no bench results store"}


def test_unusable_stores_give_one_line_errors(tmp_path):
    for name, message in _bad_stores(tmp_path).items():
        with pytest.raises(StablenoiseError, match=message) as e:
            load_results(tmp_path / name)
        assert "\n" not in str(e.value)
        result = CliRunner().invoke(main, ["report", str(tmp_path / name)])
        assert result.exit_code != 0 and message in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_report_command(store, tmp_path, no_plots):
    run, _ = store
    result = CliRunner().invoke(main, ["report", str(run), "--html", str(tmp_path / "r.html"),
                                       "--md", str(tmp_path / "r.md"), "--grid-prompts", "2", "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").is_file() and (tmp_path / "r_files").is_dir()
    # two prompts of different tags in each config's grid
    assert (tmp_path / "r.html").read_text().count("prompt 2 of squares") == 2


def test_decile_plot_takes_an_interval_that_misses_its_mean():
    from stablenoise.bench.figures import plot_deciles

    # A percentile interval from few resamples can lie wholly below (or above) the sample mean.
    cis = [{"mean": 0.7, "lo": 0.6, "hi": 0.7 - 1e-12, "n": 3}, None,
           {"mean": 0.2, "lo": 0.2 + 1e-9, "hi": 0.3, "n": 3}]
    assert plot_deciles({"toy": cis}, {"toy": False}, "title").startswith(b"\x89PNG")


def test_the_report_opens_with_the_verdict(written, store):
    """A reader meets the verdict first: per config, each stability choice against a random seed by the verifier,
    said as helps / hurts / no clear difference from its interval, then the forest plot; package versions later."""
    from stablenoise.bench.report import analyze

    run, truth, html, md = written
    assert md.index("## Verdict") < md.index("Run folder") < md.index("Package versions")
    assert "report_files/verdict.png" in md and html.index("Verdict") < html.index("Run folder")
    table, _, _ = _methods(store, 1)
    a = analyze(table, n_boot=N_BOOT)
    for i, name in (("most-stable", "most stable"), ("least-stable", "least stable")):
        d = a.vs_random[i]["shapes-verifier"]
        word = "helps" if d["lo"] > 0 else "hurts" if d["hi"] < 0 else "makes no clear difference"
        assert f"{name} {word} ({100 * d['mean']:+.1f} points [{100 * d['lo']:.1f}, {100 * d['hi']:.1f}])" in md
    assert "best of K by toy" in md.split("Run folder")[0]  # a learned reward's best of K, judged by the verifier
    # Intervals that exclude 0 are said as such, in the direction of the difference.
    from stablenoise.bench.report import _verdict

    a.vs_random["most-stable"]["shapes-verifier"] = {"mean": 0.2, "lo": 0.1, "hi": 0.3, "n": 5}
    a.vs_random["least-stable"]["shapes-verifier"] = {"mean": -0.2, "lo": -0.3, "hi": -0.1, "n": 5}
    text = _verdict([a])[1].text
    assert "most stable helps (+20.0 points [10.0, 30.0])" in text
    assert "least stable hurts (-20.0 points [-30.0, -10.0])" in text


# ----------------------------------------------------------------------------- statistics that match the data

def _regimes_table():
    import importlib.util

    path = Path(__file__).parents[2] / "benchmarks" / "regimes_table.py"
    spec = importlib.util.spec_from_file_location("regimes_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _agreeing_store(run):
    """The toy store with the seeds of prompts 1 and 3 all passing the verifier and prompt 4's all failing, and
    prompts 0-2 sharing one caption (4 distinct captions)."""
    truth = make_store(run, configs=(("toyset", 10, 1.0),))
    with sqlite3.connect(run / "bench.sqlite") as db:
        for p, value in ((1, 1.0), (3, 1.0), (4, 0.0)):
            db.execute("UPDATE scores SET value = ? WHERE name = 'shapes-verifier' AND sample_id IN "
                       "(SELECT id FROM samples WHERE method = 'seed' AND prompt_idx = ?)", (value, p))
            truth[1]["verifier"][p] = value
        db.execute("UPDATE prompts SET text = 'one caption' WHERE idx < 3")
    return truth[1]


def test_every_seed_passes_or_fails_is_counted_and_said(tmp_path):
    from stablenoise.bench.report import _verdict, analyze

    t = _agreeing_store(tmp_path)
    a = analyze(load_results(tmp_path).tables[0], n_boot=N_BOOT)
    v = t["verifier"]
    passes = [p for p in range(PROMPTS) if (v[p] == 1).all()]
    fails = [p for p in range(PROMPTS) if (v[p] == 0).all()]
    assert (passes, fails) == ([1, 3], [4])
    u = a.unanimous["shapes-verifier"]
    assert u["all"] == {"prompts": PROMPTS, "captions": 4, "pass": 2, "fail": 1}
    assert u["circles"] == {"prompts": 2, "captions": 1, "pass": 1, "fail": 0}
    assert u["squares"] == {"prompts": 2, "captions": 2, "pass": 1, "fail": 0}
    assert u["counts"] == {"prompts": 2, "captions": 2, "pass": 0, "fail": 1}
    # counted, not skipped: every prompt is in the difference, those two at exactly 0
    d = a.vs_random["most-stable"]["shapes-verifier"]
    assert d["n"] == PROMPTS and d["clusters"] == 4
    diffs = a.methods["most-stable"].values["shapes-verifier"] - a.methods["random"].values["shapes-verifier"]
    assert diffs[1] == diffs[3] == diffs[4] == 0 and d["mean"] == pytest.approx(diffs.mean())
    text = _verdict([a])[1].text
    assert ("Intervals resample its 4 distinct captions; the 2 prompts where every seed passes and the 1 where "
            "every seed fails (of 6) count as ties") in text


def test_per_tag_differences_by_construction(written, store):
    from stablenoise.bench.report import analyze

    run, truth, html, md = written
    t = truth[1]
    table, m, _ = _methods(store, 1)
    a = analyze(table, n_boot=N_BOOT)
    most = _masked_max(t["toy"], np.isfinite(t["stab"]))
    for tag in ("circles", "squares", "counts"):
        rows = [p for p in range(PROMPTS) if TAGS[p] == tag]
        assert a.by_tag["toy"]["random"][tag]["mean"] == pytest.approx(t["toy"][rows].mean())
        d = a.by_tag["toy"]["most-stable"][tag]
        assert d["mean"] == pytest.approx((most[rows] - t["toy"][rows].mean(axis=1)).mean()) and d["n"] == 2
        assert d["clusters"] == 2  # two captions per tag
    assert set(a.by_tag["toy"]) == set(m)  # every method, per tag
    for text in (md, html):
        assert "By tag, toy" in text and "circles (2 prompts, 2 captions)" in text
        assert "every seed passes" in text


def test_intervals_resample_captions_and_one_caption_resamples_its_prompts(tmp_path):
    from stablenoise.bench.report import analyze

    _agreeing_store(tmp_path)
    a = analyze(load_results(tmp_path).tables[0], n_boot=N_BOOT)
    assert all(a.level[i]["toy"]["clusters"] == 4 for i in a.methods)
    assert a.spearman["toy"][0]["clusters"] == a.spearman["toy"][1]["clusters"] == 4
    assert a.wins["toy"]["most-stable"]["random"]["clusters"] == 4
    circles = a.by_tag["toy"]["least-stable"]["circles"]  # one caption: its two prompts are resampled
    assert "clusters" not in circles and circles["lo"] < circles["hi"]
    with sqlite3.connect(tmp_path / "bench.sqlite") as db:
        db.execute("UPDATE prompts SET text = 'one caption'")
    a = analyze(load_results(tmp_path).tables[0], n_boot=N_BOOT)
    d = a.vs_random["least-stable"]["toy"]
    assert "clusters" not in d and d["lo"] < d["hi"] and d["n"] == PROMPTS


def test_an_interval_does_not_depend_on_the_other_methods_shown(store):
    from stablenoise.bench.methods import parse_methods
    from stablenoise.bench.report import analyze

    table = load_results(store[0]).tables[0]
    every, few = analyze(table, n_boot=N_BOOT), analyze(table, n_boot=N_BOOT, methods=parse_methods("least-stable"))
    assert list(few.methods) == ["random", "least-stable"]
    for r in ("toy", "shapes-verifier"):
        assert few.vs_random["least-stable"][r] == every.vs_random["least-stable"][r]
        assert few.level["random"][r] == every.level["random"][r]
    assert analyze(table, n_boot=N_BOOT, seed=1).level["random"]["toy"] != every.level["random"]["toy"]  # seeded


def test_the_regimes_table_says_what_the_report_says(tmp_path):
    from stablenoise.bench.report import write_report

    _agreeing_store(tmp_path)
    _, md = write_report(tmp_path, n_boot=N_BOOT, grid_prompts=0)
    verdict = md.read_text().split("Run folder")[0]
    (row,) = _regimes_table().rows_of(tmp_path, "shapes-verifier", "toy", N_BOOT)
    assert (row["prompts"], row["captions"], row["prompts_every_seed_passes"], row["prompts_every_seed_fails"]) == (
        PROMPTS, 4, 2, 1)
    for key, name in (("most_stable", "most stable"), ("least_stable", "least stable"),
                      ("best_by_reward", "best of K by toy")):
        d = row[key]
        assert f"{name} " in verdict and f"({100 * d['mean']:+.1f} points [{100 * d['lo']:.1f}, {100 * d['hi']:.1f}])" \
            in verdict.split(f"{name} ")[1].split(";")[0]
    random = row["random"]
    assert f"{100 * random['mean']:.1f}% [{100 * random['lo']:.1f}, {100 * random['hi']:.1f}]" in md.read_text()


def _benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[2] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_inversion_point_comparison_pairs_the_same_seeds(tmp_path):
    """Two stores of one config whose second inverted at the source with every stability reversed within its
    prompt: the comparison pairs seed with seed, so the Spearman between the points is exactly -1 and the two
    never pick the same seed; each point keeps its own round-trip cosine and verdict."""
    a, b = tmp_path / "a", tmp_path / "b"
    truth = make_store(a, configs=(("toyset", 10, 1.0),))[1]
    make_store(b, configs=(("toyset", 10, 1.0),))
    with sqlite3.connect(b / "bench.sqlite") as db:  # same truth (seeded); flip stability: 1.45 - s reverses ranks
        db.execute("UPDATE samples SET stability = 1.45 - stability WHERE method = ?", (SEED_METHOD,))
        db.execute("UPDATE configs SET json = ?", (json.dumps({"backend": {"inversion_point": "source"}}),))
    row = _benchmark("inversion_point").compare(a, b, "shapes-verifier", N_BOOT)
    assert row["prompts"] == PROMPTS and row["k"] == K
    assert row["spearman_between_points"]["mean"] == pytest.approx(-1.0)
    assert row["same_most_stable_seed"]["mean"] == 0.0
    stab = truth["stab"]
    assert set(row["points"]) == {"destination", "source"}  # the store without a recorded point: the other one
    cos = row["points"]["destination"]["round_trip_cosine"]["mean"]
    assert cos == pytest.approx(np.nanmean(stab)) and row["points"]["source"]["round_trip_cosine"]["mean"] == \
        pytest.approx(np.nanmean(1.45 - stab))
    most, least = np.nanargmax(stab, axis=1), np.nanargmin(stab, axis=1)
    v = truth["verifier"]
    rows = np.arange(PROMPTS)
    for name, pick in (("destination", most), ("source", least)):
        d = row["points"][name]["most_stable_minus_random"]
        assert d["mean"] == pytest.approx(np.mean(v[rows, pick] - v.mean(axis=1)))
    with sqlite3.connect(b / "bench.sqlite") as db:  # b lacks prompt 0: every number is over prompts 1.. only
        db.execute("DELETE FROM scores WHERE sample_id IN (SELECT id FROM samples WHERE prompt_idx = 0)")
        db.execute("DELETE FROM samples WHERE prompt_idx = 0")
    row = _benchmark("inversion_point").compare(a, b, "shapes-verifier", N_BOOT)
    assert row["prompts"] == PROMPTS - 1
    d = row["points"]["destination"]["most_stable_minus_random"]
    assert d["mean"] == pytest.approx(np.mean(v[rows, most][1:] - v.mean(axis=1)[1:]))
