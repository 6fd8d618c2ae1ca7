import pytest

from stablenoise.errors import StablenoiseError
from stablenoise.settings import OptimizerSettings


def test_parse_over_a_base_keeps_the_unnamed_settings():
    s = OptimizerSettings.parse("lr=18.75, preserve_norm=yes")
    assert s == OptimizerSettings(lr=18.75, preserve_norm=True)
    assert OptimizerSettings.parse("momentum=0.9,preserve-norm=0") == OptimizerSettings(momentum=0.9)
    r = OptimizerSettings.parse("lr=2", OptimizerSettings.reno())
    assert (r.lr, r.momentum, r.nesterov, r.iterations, r.grad_clip, r.reg_weight) == (2.0, 0.9, True, 49, 0.1, 0.01)
    assert dict(r.reward_weights) == {"hpsv2.1": 0.05, "imagereward": 1.0, "pickscore": 0.05,
                                      "clipscore": 0.01}


def test_reward_weights_replace_the_base_weights():
    r = OptimizerSettings.parse("shapes-clip=1,iterations=3", OptimizerSettings.reno())
    assert r.reward_weights == (("shapes-clip", 1.0),) and r.iterations == 3


def test_changes_names_only_what_differs_and_round_trips():
    base = OptimizerSettings.reno()
    s = OptimizerSettings.parse("lr=2,shapes-clip=1", base)
    assert s.changes(base) == "lr=2,shapes-clip=1"
    assert OptimizerSettings.parse(s.changes(base), base) == s
    assert base.changes(base) == ""
    assert OptimizerSettings.parse("preserve_norm=1").changes(OptimizerSettings.paper()) == "preserve_norm=1"


@pytest.mark.parametrize("spec", ["lr", "lr=", "lr=abc", "lr=-1", "momentum=1", "preserve_norm=maybe", "lr=nan",
                                  "iterations=1.5", "iterations=-1", "x=inf"])
def test_bad_settings_are_errors(spec):
    with pytest.raises(StablenoiseError):
        OptimizerSettings.parse(spec)
