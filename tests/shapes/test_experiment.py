import json

from click.testing import CliRunner

from stablenoise.cli import main


def test_experiment_end_to_end_tiny(tmp_path):
    out = tmp_path / "exp"
    r = CliRunner().invoke(main, ["experiment", "shapes", "--n-prompts", "6", "-k", "4", "--steps", "3",
                                  "--iterations", "2", "--optimize-prompts", "3", "--bootstrap", "50",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    arms = res["summary"]["arms"]["all"]
    for arm in ("random seed", "most stable seed", "least stable seed", "oracle best of K"):
        lo, hi = arms[arm]["ci"]
        assert 0 <= lo <= arms[arm]["mean"] <= hi <= 1
        assert arms[arm]["mean"] <= arms["oracle best of K"]["mean"]  # the oracle bounds every seed choice
    assert arms["optimized (from seed 0)"]["n"] == 3
    data = res["data"]
    assert len(data["prompts"]) == 6 and len(data["stability"][0]) == 4
    # The most-stable arm really is the argmax of the recorded stabilities.
    stab, passed = data["stability"], data["passed"]
    most = sum(p[max(range(4), key=s.__getitem__)] for s, p in zip(stab, passed)) / 6
    assert abs(most - arms["most stable seed"]["mean"]) < 1e-9
    assert set(res["summary"]["arms"]) == {"all", "single_object", "two_object", "counting", "colors",
                                           "position", "color_attr"}
    for f in ("results.md", "stability_hist.png", "accuracy_by_decile.png"):
        assert (out / f).exists()
