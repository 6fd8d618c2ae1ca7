import json

import pytest
from click.testing import CliRunner

from stablenoise.cli import main


def test_experiment_end_to_end_tiny(tmp_path):
    out = tmp_path / "exp"
    r = CliRunner().invoke(main, ["experiment", "shapes", "--n-prompts", "6", "-k", "4", "--steps", "3",
                                  "--iterations", "2", "--optimize-prompts", "3", "--bootstrap", "50",
                                  "--optimizer", "lr=100", "--optimizer", "lr=5,preserve_norm=1",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    arms = res["summary"]["arms"]["all"]
    for arm in ("random seed", "most stable seed", "least stable seed", "oracle best of K"):
        lo, hi = arms[arm]["ci"]
        assert 0 <= lo <= arms[arm]["mean"] <= hi <= 1
        assert arms[arm]["mean"] <= arms["oracle best of K"]["mean"]  # the oracle bounds every seed choice
    assert arms["optimized (lr 100, momentum 0.5)"]["n"] == 3
    assert arms["optimized (lr 5, momentum 0.5, norm preserved) - first seed"]["n"] == 3
    assert res["summary"]["optimization"]["lr 5, momentum 0.5, norm preserved"]["norm_ratio_mean"] == \
        pytest.approx(1.0, abs=1e-5)
    data = res["data"]
    # Every prompt has its own seeds, so a caption drawn twice gives two independent samples.
    seeds = [s for row in data["seeds"] for s in row]
    assert len(set(seeds)) == 6 * 4
    assert len(data["prompts"]) == 6 and len(data["stability"][0]) == 4
    # The most-stable arm really is the argmax of the recorded stabilities.
    stab, passed = data["stability"], data["passed"]
    most = sum(p[max(range(4), key=s.__getitem__)] for s, p in zip(stab, passed)) / 6
    assert abs(most - arms["most stable seed"]["mean"]) < 1e-9
    assert set(res["summary"]["arms"]) == {"all", "single_object", "two_object", "counting", "colors",
                                           "position", "color_attr"}
    for f in ("results.md", "stability_hist.png", "accuracy_by_decile.png", "examples.png"):
        assert (out / f).exists()
    # The diagnostics regenerate each arm's images: they must give the verdicts the experiment recorded.
    objects = res["summary"]["objects"]
    assert objects["most stable seed"]["n"] == 6 and objects["optimized (lr 100, momentum 0.5)"]["n"] == 3
    assert objects["most stable seed"]["passed"] == pytest.approx(arms["most stable seed"]["mean"])
    assert objects["least stable seed"]["passed"] == pytest.approx(arms["least stable seed"]["mean"])
    assert objects["optimized (lr 100, momentum 0.5)"]["passed"] == \
        pytest.approx(arms["optimized (lr 100, momentum 0.5)"]["mean"])
    assert all(o["objects_mean"] >= 0 and 0 <= o["blank"] <= 1 for o in objects.values())


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    import numpy as np
    import pytest

    import stablenoise as sn
    from stablenoise.shapes import experiment as exp
    from stablenoise.shapes import world
    from stablenoise.shapes.pipeline import ShapesPipeline

    backend = sn.from_pipeline(ShapesPipeline.from_scratch(world.vocabulary()))
    pairs = world.prompts(4, seed=1)
    prompts, tags = [c for c, _ in pairs], [t for _, t in pairs]
    cfg = exp.ExperimentConfig(k=3, steps=2, batch_size=4, optimize_prompts=2, iterations=1, optimize_batch_size=1)
    straight = exp.run(backend, prompts, tags, cfg, progress=False, log=lambda m: None)

    real_verify, calls = exp.verify, []

    def flaky_verify(image, caption):
        calls.append(1)
        if len(calls) == 6:  # in the second batch of four
            raise KeyboardInterrupt
        return real_verify(image, caption)

    monkeypatch.setattr(exp, "verify", flaky_verify)
    with pytest.raises(KeyboardInterrupt):
        exp.run(backend, prompts, tags, cfg, progress=False, log=lambda m: None, state_path=tmp_path / "p.npz")
    monkeypatch.setattr(exp, "verify", real_verify)
    assert int(np.load(tmp_path / "p.npz")["scored"]) == 4
    resumed = exp.run(backend, prompts, tags, cfg, progress=False, log=lambda m: None, state_path=tmp_path / "p.npz")
    assert np.allclose(resumed.stability, straight.stability, atol=1e-6)
    assert (resumed.passed == straight.passed).all()
    arm = exp.OptimizerArm().label
    assert resumed.optimized[arm].stability == pytest.approx(straight.optimized[arm].stability, abs=1e-6)


def test_another_optimizer_arm_reuses_the_scores(tmp_path, monkeypatch):
    import stablenoise as sn
    from stablenoise.shapes import experiment as exp
    from stablenoise.shapes import world
    from stablenoise.shapes.pipeline import ShapesPipeline

    backend = sn.from_pipeline(ShapesPipeline.from_scratch(world.vocabulary()))
    pairs = world.prompts(2, seed=4)
    prompts, tags = [c for c, _ in pairs], [t for _, t in pairs]
    state = tmp_path / "state.npz"
    paper, small = exp.OptimizerArm(), exp.OptimizerArm(lr=5.0)
    first = exp.run(backend, prompts, tags, exp.ExperimentConfig(k=2, steps=2, iterations=1, optimizers=(paper,)),
                    progress=False, log=lambda m: None, state_path=state)

    def cached(*a, **kw):
        raise AssertionError("cached work was recomputed")

    real_opt = sn.optimize
    monkeypatch.setattr(exp, "round_trip", cached)  # the scores come from the state file
    monkeypatch.setattr(exp, "optimize", lambda *a, **kw: cached() if kw["lr"] == paper.lr else real_opt(*a, **kw))
    both = exp.run(backend, prompts, tags, exp.ExperimentConfig(k=2, steps=2, iterations=1, optimizers=(paper, small)),
                   progress=False, log=lambda m: None, state_path=state)
    assert (both.stability == first.stability).all()
    reused, before = both.optimized[paper.label], first.optimized[paper.label]
    assert (reused.passed, reused.stability, reused.norm) == (before.passed, before.stability, before.norm)
    assert (reused.noise == before.noise).all()
    assert len(both.optimized[small.label].passed) == 2


@pytest.mark.parametrize("spec, message", [("lr=0", "lr > 0"), ("lr=abc", "not a number"),
                                           ("speed=3", "bad optimizer setting"), ("momentum=1", "momentum < 1"),
                                           ("preserve_norm=maybe", "preserve_norm=1 or 0")])
def test_bad_optimizer_spec_is_one_clear_error(spec, message):
    from stablenoise.shapes.experiment import OptimizerArm

    assert OptimizerArm.parse("lr=18.75, preserve_norm=yes") == OptimizerArm(lr=18.75, preserve_norm=True)
    assert OptimizerArm.parse("momentum=0.9,preserve-norm=0") == OptimizerArm(momentum=0.9)
    from stablenoise.errors import StablenoiseError
    from stablenoise.shapes.experiment import OptimizerArm

    with pytest.raises(StablenoiseError, match=message):
        OptimizerArm.parse(spec)


def test_bad_optimizer_spec_on_the_cli(tmp_path):
    r = CliRunner().invoke(main, ["experiment", "shapes", "--n-prompts", "1", "-k", "1", "--optimizer", "lr=-1",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "lr > 0" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()


def test_preserve_norm_keeps_optimized_noise_on_the_gaussian_shell():
    import pytest

    import stablenoise as sn
    from stablenoise.shapes import experiment as exp
    from stablenoise.shapes import world
    from stablenoise.shapes.pipeline import ShapesPipeline

    backend = sn.from_pipeline(ShapesPipeline.from_scratch(world.vocabulary()))
    pairs = world.prompts(2, seed=3)
    prompts, tags = [c for c, _ in pairs], [t for _, t in pairs]
    kept_arm, free_arm = exp.OptimizerArm(lr=1e4, preserve_norm=True), exp.OptimizerArm(lr=1e4)
    data = exp.run(backend, prompts, tags, exp.ExperimentConfig(k=1, steps=2, iterations=3,
                                                                optimizers=(kept_arm, free_arm)),
                   progress=False, log=lambda m: None)
    # The recorded norm is of the returned (best) iterate: exactly sqrt(d) when the norm is preserved.
    assert data.optimized[kept_arm.label].norm == pytest.approx([1.0, 1.0], abs=1e-5)
    free = data.optimized[free_arm.label].norm
    assert len(free) == 2 and all(n > 0 for n in free)


def test_experiment_on_a_prompts_file_and_a_bad_caption(tmp_path):
    good = tmp_path / "captions.txt"
    good.write_text("a green triangle below a red circle\ntwo white squares\n")
    r = CliRunner().invoke(main, ["experiment", "shapes", "--prompts", str(good), "-k", "2", "--steps", "2",
                                  "--iterations", "0", "--bootstrap", "10", "--out", str(tmp_path / "ok")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert res["data"]["prompts"] == ["a green triangle below a red circle", "two white squares"]
    assert res["data"]["tags"] == ["position", "counting"]

    bad = tmp_path / "bad.txt"
    bad.write_text("a red circle\na cat wearing a spacesuit\n")
    r = CliRunner().invoke(main, ["experiment", "shapes", "--prompts", str(bad), "--out", str(tmp_path / "no")])
    assert r.exit_code != 0 and "not a shapes-world caption: 'a cat wearing a spacesuit'" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "no").exists()
