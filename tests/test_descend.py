"""The one descent loop (optimization.descend) and the one settings type it takes, checked on objectives with
closed forms against torch.optim.SGD; optimize and reward_optimize only build objectives for it."""

import math

import pytest
import torch

import stablenoise as sn
from stablenoise.errors import StablenoiseError
from stablenoise.optimization import chi_nll, descend
from stablenoise.settings import OptimizerSettings
from tolerance import f32
from toy import QuadBackend, ToyBackend

TARGET = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.0, 2.0, 1.0]])


def closeness(x, active):
    """-|x - target|^2 per sample: a concave quadratic whose maximum is the target of each sample."""
    return -((x - TARGET[active]) ** 2).sum(1)


def _reference(noise, settings):
    """Each sample alone through torch.optim.SGD on -closeness (+ the regularizer), clipped with
    clip_grad_norm_ and projected to the shell after each step: its iterates."""
    paths = []
    for j in range(noise.shape[0]):
        x = noise[j:j + 1].clone()
        if settings.preserve_norm:
            x = x / x.norm() * math.sqrt(x.numel())
        x.requires_grad_(True)
        opt = torch.optim.SGD([x], lr=settings.lr, momentum=settings.momentum, nesterov=settings.nesterov)
        path = []
        for i in range(settings.iterations + 1):
            path.append(x.detach().clone())
            if i == settings.iterations:
                break
            opt.zero_grad()
            norm = torch.linalg.vector_norm(x)
            loss = -closeness(x, [j]).sum() + settings.reg_weight * (0.5 * norm ** 2 - (x.numel() - 1) * norm.log())
            loss.backward()
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(x, settings.grad_clip)
            opt.step()
            if settings.preserve_norm:
                with torch.no_grad():
                    x *= math.sqrt(x.numel()) / x.norm()
        paths.append(torch.cat(path))
    return torch.stack(paths, 1)  # [iterations + 1, B, d]


NOISE = torch.tensor([[0.3, 0.1, -0.2, 0.4], [2.0, -1.0, 0.5, 0.0]])


@pytest.mark.parametrize("settings", [
    OptimizerSettings(iterations=7, lr=0.1, momentum=0.5),
    OptimizerSettings(iterations=7, lr=0.1, momentum=0.0),
    OptimizerSettings(iterations=7, lr=0.1, momentum=0.9, nesterov=True),
    OptimizerSettings(iterations=7, lr=0.3, momentum=0.9, nesterov=True, grad_clip=0.5),
    OptimizerSettings(iterations=7, lr=0.1, momentum=0.5, reg_weight=0.3),
    OptimizerSettings(iterations=7, lr=0.2, momentum=0.5, preserve_norm=True)])
def test_iterates_are_torch_sgd(settings):
    seen = []
    d = descend(closeness, NOISE, settings, lambda info: seen.append(info), progress=False)
    ref = _reference(NOISE, settings)
    assert [info["iteration"] for info in seen] == list(range(8)) and d.evaluations == 16
    # 7 float32 updates of 4 entries of size <= 4
    tol = f32(7 * 4, 4.0)
    for i, info in enumerate(seen):
        assert torch.allclose(info["noise"], ref[i], rtol=0, atol=tol), i
        assert info["value"] == pytest.approx(closeness(ref[i], [0, 1]).tolist(), abs=f32(7 * 4, 16.0))
    assert not torch.allclose(seen[-1]["noise"], seen[0]["noise"], atol=1e-2)  # it moved
    assert torch.equal(d.start_noise, seen[0]["noise"]) and torch.equal(d.initial_noise, NOISE)
    assert [len(h) for h in d.history] == [8, 8]


def test_the_best_iterate_is_returned_not_the_last():
    # Heavy momentum overshoots the maximum: the last iterate is worse than an earlier one.
    settings = OptimizerSettings(iterations=10, lr=0.4, momentum=0.9)
    seen = []
    d = descend(closeness, NOISE, settings, lambda info: seen.append(info["noise"]), progress=False)
    for j in range(2):
        h = d.history[j]
        k = h.index(max(h))
        assert k < len(h) - 1 and max(h) > h[-1] + 1e-2, h
        assert d.best_iteration[j] == k and d.best_value[j] == max(h)
        assert torch.equal(d.noise[j], seen[k][j])


def test_parts_are_recorded_at_the_start_and_at_the_best_iterate():
    def objective(x, active):
        a, b = x[:, 0], -(x[:, 1] - 1) ** 2
        return a + b, {"a": a, "b": b}

    settings = OptimizerSettings(iterations=4, lr=0.5, momentum=0.0)
    seen = []
    d = descend(objective, NOISE, settings, lambda info: seen.append(info["parts"]), progress=False)
    assert d.initial_parts == {"a": NOISE[:, 0].tolist(), "b": (-(NOISE[:, 1] - 1) ** 2).tolist()}
    for j in range(2):
        k = d.best_iteration[j]
        assert k == 4  # a rises every step
        assert d.best_parts["a"][j] == seen[k]["a"][j] and d.best_parts["b"][j] == seen[k]["b"][j]
        assert d.best_value[j] == pytest.approx(seen[k]["a"][j] + seen[k]["b"][j], abs=f32(2, 4.0))


def test_zero_iterations_scores_the_start_only():
    calls = []
    d = descend(lambda x, a: calls.append(1) or closeness(x, a), NOISE, OptimizerSettings(iterations=0),
                progress=False)
    assert len(calls) == 1 and d.best_iteration == [0, 0] and torch.equal(d.noise, NOISE)


def test_a_sample_that_turns_non_finite_stops_alone_with_the_objectives_name():
    calls = []

    def objective(x, active):
        calls.append(list(active))
        v = closeness(x, active)
        if len(calls) == 3:  # iteration 2: sample 1's value is NaN
            v = torch.where(torch.tensor(active) == 1, torch.nan, v)
        return v

    d = descend(objective, NOISE, OptimizerSettings(iterations=5, lr=0.1), name="closeness", progress=False)
    assert d.stopped == [None, "non-finite closeness at iteration 2"] and [len(h) for h in d.history] == [6, 2]
    assert calls == [[0, 1]] * 3 + [[0]] * 3 and d.evaluations == 9


def _nan_gradient(x, active):
    """A finite value whose gradient is NaN: sqrt's infinite slope at 0, times 0."""
    return closeness(x, active) + 0 * torch.sqrt((x - x.detach()).clamp_min(0)).sum(1)


def test_a_nan_gradient_stops_its_sample_but_the_last_iterate_is_not_updated():
    d = descend(_nan_gradient, NOISE, OptimizerSettings(iterations=3), progress=False)
    assert d.stopped == ["non-finite gradient or noise after iteration 0"] * 2 and d.best_iteration == [0, 0]
    # The last iterate is scored, not updated: its gradient is never taken, so it stops nothing.
    d = descend(_nan_gradient, NOISE, OptimizerSettings(iterations=0), progress=False)
    assert d.stopped == [None, None] and torch.equal(d.noise, NOISE)


def test_a_constant_objective_keeps_the_first_iterate_on_ties():
    d = descend(lambda x, a: torch.zeros(len(a)), NOISE, OptimizerSettings(iterations=3), progress=False)
    assert d.history == [[0.0] * 4] * 2 and d.best_iteration == [0, 0] and torch.equal(d.noise, NOISE)


def test_the_objective_must_give_one_value_per_noise():
    with pytest.raises(StablenoiseError, match=r"the objective gave \(2, 4\) for 2 noises"):
        descend(lambda x, a: x, NOISE, OptimizerSettings(iterations=1), progress=False)
    with pytest.raises(StablenoiseError, match="settings must be an OptimizerSettings, got dict"):
        descend(closeness, NOISE, {"lr": 1.0}, progress=False)


def test_the_chi_regularizer_is_ReNOs():
    x = torch.full((1, 4), 2.0)  # |x| = 4 over d = 4
    assert chi_nll(x).item() == pytest.approx(0.5 * 16 - 3 * math.log(4.0), abs=f32(4, 8.0))


# ---------------------------------------------------------------- one place for defaults and validation

@pytest.mark.parametrize("changes, message", [
    ({"iterations": -1}, "iterations must be >= 0, got -1"),
    ({"iterations": 2.5}, "iterations must be an integer, got 2.5"),
    ({"iterations": True}, "iterations must be an integer, got True"),
    ({"lr": 0.0}, "need lr > 0 and 0 <= momentum < 1"), ({"lr": float("nan")}, "need lr > 0 and 0 <= momentum < 1"),
    ({"momentum": 1.0}, "need lr > 0 and 0 <= momentum < 1"),
    ({"grad_clip": 0.0}, "grad_clip must be > 0 (or None for no clipping), got 0.0"),
    ({"grad_clip": float("inf")}, "grad_clip must be > 0 (or None for no clipping), got inf"),
    ({"reg_weight": -1.0}, "reg_weight must be >= 0, got -1.0"),
    ({"nesterov": 1}, "nesterov and preserve_norm must be True or False"),
    ({"reward_weights": (("x", float("nan")),)}, "reward weights must be finite numbers")])
def test_settings_are_checked_once_and_both_optimizers_say_the_same(changes, message):
    with pytest.raises(StablenoiseError) as direct:
        OptimizerSettings(**changes)
    assert str(direct.value).startswith(message)
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0], toy.latent_shape)
    for run in (lambda: sn.optimize(toy, "a", noise, progress=False, **changes),
                lambda: sn.reward_optimize(QuadBackend(), "a", sn.noises_from_seeds([0], QuadBackend.latent_shape),
                                           {"r": (_Sum(), 1.0)}, progress=False, **changes)):
        with pytest.raises(StablenoiseError) as e:
            run()
        assert str(e.value) == str(direct.value)


def test_an_unknown_setting_is_a_type_error():
    toy = ToyBackend()
    with pytest.raises(TypeError, match="unknown optimizer setting 'learning_rate'"):
        sn.optimize(toy, "a", sn.noises_from_seeds([0], toy.latent_shape), learning_rate=1.0)


class _Sum(sn.Reward):
    name, differentiable, needs_prompts = "sum", True, False

    def score_tensor(self, pixels, prompts):
        return pixels.flatten(1).sum(1)


def test_defaults_come_from_the_settings_type():
    """optimize runs the paper's 100 updates, reward_optimize ReNO's 49 (50 images), with no keyword given."""
    toy = ToyBackend()
    paper = sn.optimize(toy, "a", sn.noises_from_seeds([0], toy.latent_shape), progress=False)
    assert len(paper.history[0]) == OptimizerSettings.paper().iterations + 1 == 101
    quad = QuadBackend()
    reno = sn.reward_optimize(quad, "a", sn.noises_from_seeds([0], quad.latent_shape), {"r": (_Sum(), 1.0)},
                              progress=False)
    assert reno.reward_evaluations == OptimizerSettings.reno().iterations + 1 == 50


def test_a_settings_object_and_keywords_are_the_same_run():
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0, 1], toy.latent_shape)
    settings = OptimizerSettings(iterations=3, lr=30.0, momentum=0.9, nesterov=True, grad_clip=0.05,
                                 preserve_norm=True)
    a = sn.optimize(toy, ["a", "b"], noise, settings, progress=False)
    b = sn.optimize(ToyBackend(), ["a", "b"], noise, iterations=3, lr=30.0, momentum=0.9, nesterov=True,
                    grad_clip=0.05, preserve_norm=True, progress=False)
    c = sn.optimize(ToyBackend(), ["a", "b"], noise, OptimizerSettings(iterations=3), lr=30.0, momentum=0.9,
                    nesterov=True, grad_clip=0.05, preserve_norm=True, progress=False)
    assert a.history == b.history == c.history and torch.equal(a.noise, b.noise)
    plain = sn.optimize(ToyBackend(), ["a", "b"], noise, iterations=3, lr=30.0, progress=False)
    assert a.history != plain.history  # nesterov, clipping and the shell reach the stability optimizer too


def test_reward_optimization_can_keep_the_noise_on_the_shell():
    quad = QuadBackend()
    noise = sn.noises_from_seeds([0, 1], quad.latent_shape) * 2
    seen = []
    r = sn.reward_optimize(quad, "a", noise, {"r": (_Sum(), 1.0)}, iterations=3, preserve_norm=True, progress=False,
                           callback=lambda info: seen.append(info["noise"]))
    radius = math.sqrt(math.prod(quad.latent_shape))
    for x in seen + [r.noise, r.start_noise]:
        assert torch.allclose(x.flatten(1).norm(dim=1), torch.full((2,), radius), rtol=f32(2 * 12))
    assert torch.equal(r.initial_noise, noise)


def test_no_clipping_has_one_spelling():
    assert OptimizerSettings.paper().grad_clip is None
    s = OptimizerSettings.parse("grad_clip=none", OptimizerSettings.reno())
    assert s.grad_clip is None and s.changes(OptimizerSettings.reno()) == "grad_clip=none"
    assert OptimizerSettings.parse(s.changes(OptimizerSettings.reno()), OptimizerSettings.reno()) == s
    with pytest.raises(StablenoiseError, match="grad_clip must be > 0"):
        OptimizerSettings.parse("grad_clip=0", OptimizerSettings.reno())
