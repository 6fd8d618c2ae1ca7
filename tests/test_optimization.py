import math

import pytest
import torch

import stablenoise as sn
from stablenoise.errors import StablenoiseError
from stablenoise.stability import conditioning, cosine, round_trip
from tiny import tiny_sd
from tolerance import TINY_SD, TOY, cfg, f32, f64, round_trip_n
from toy import ShiftBackend, ToyBackend


def test_raises_stability_in_a_few_iterations(sd):
    noise = sn.noises_from_seeds([0, 1], sd.latent_shape)
    r = sn.optimize(sd, "a red cube", noise, iterations=5, steps=3, progress=False)
    assert [len(h) for h in r.history] == [6, 6] and r.stopped == [None, None]
    start, best = torch.tensor(r.initial_stability), torch.tensor(r.best_stability)
    assert (best > start + 1e-3).all(), (start, best)
    # The returned noise really has the reported stability.
    again = sn.stability(sd, "a red cube", r.noise, steps=3)
    # a batch of 2 without gradients against the optimizer's: a 3-step round trip of the tiny UNet under CFG 7.5
    assert torch.allclose(again, best.float(), rtol=0, atol=f32(round_trip_n(TINY_SD, 3), cfg(7.5)))
    assert torch.equal(r.initial_noise, noise)


@pytest.fixture(scope="module")
def sd64():
    return sn.from_pipeline(tiny_sd(seed=1).to(torch.float64))


def _loss(backend, cond, eps, checkpoint=False):
    return (1 - cosine(eps, round_trip(backend, cond, eps, 2, 7.5, 1.0, checkpoint)[1])).sum()


def test_gradient_matches_finite_differences(sd64):
    eps = sn.noises_from_seeds([5], sd64.latent_shape).double().requires_grad_(True)
    with torch.no_grad():
        cond = conditioning(sd64, "a cat", 1, 7.5)
    grad, = torch.autograd.grad(_loss(sd64, cond, eps), eps)
    direction = torch.randn(eps.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direction /= direction.norm()
    h = 1e-4
    with torch.no_grad():
        fd = (_loss(sd64, cond, eps + h * direction) - _loss(sd64, cond, eps - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert abs(float(fd)) > 1e-6
    # rel 1e-4: the O(h^2) error of the central difference, not rounding (float64)
    assert math.isclose(float(analytic), float(fd), rel_tol=1e-4, abs_tol=1e-9), (analytic, fd)


def test_checkpointed_and_plain_gradients_agree(sd64):
    eps = sn.noises_from_seeds([2, 3], sd64.latent_shape).double()
    with torch.no_grad():
        cond = conditioning(sd64, "a dog", 2, 7.5)
    grads = []
    for ckpt in (False, True):
        e = eps.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(_loss(sd64, cond, e, checkpoint=ckpt), e)[0])
    assert grads[0].abs().max() > 0
    # float64, the recomputed forward is the same: rtol 1e-10 >= f64(round_trip_n(TINY_SD, 2), cfg(7.5)) = 5e-13
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_preserve_norm_projects_the_start_and_every_iterate(sd):
    noise = sn.noises_from_seeds([0], sd.latent_shape) * 1.3
    norms = []
    r = sn.optimize(sd, "a cat", noise, iterations=3, steps=2, preserve_norm=True, progress=False,
                    callback=lambda info: norms.append(float(info["noise"].norm())))
    assert len(norms) == 4
    for n in norms + [float(r.noise.norm())]:
        assert math.isclose(n, math.sqrt(noise.numel()), rel_tol=f32(2 * noise.numel()))  # two float32 norms over d
    assert torch.equal(r.initial_noise, noise)  # the noise as given is kept too


# Two float32 SGD paths of 6 updates at lr 3 (gradients of a cosine over the toy's d; terms |x| + lr |g| <= 3)
SGD_TOY = f32(6 * TOY, 3.0)


def _sgd_reference(backend, prompt, noise, iterations, lr, momentum):
    """The iterates of torch.optim.SGD on 1 - s, evaluated one at a time: the optimizer's reference."""
    eps = noise.clone().requires_grad_(True)
    opt = torch.optim.SGD([eps], lr=lr, momentum=momentum)
    cond = conditioning(backend, prompt, noise.shape[0], 2.0)
    iterates, values = [], []
    for i in range(iterations + 1):
        opt.zero_grad()
        s = cosine(eps, round_trip(backend, cond, eps, 3, 2.0, 1.5)[1])
        iterates.append(eps.detach().clone())
        values.append(s.detach().clone())
        if i < iterations:
            (1 - s).sum().backward()
            opt.step()
    return iterates, values


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_iterates_are_sgd_with_momentum(momentum):
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0, 1], toy.latent_shape)
    seen = []
    r = sn.optimize(toy, ["a", "b"], noise, iterations=6, lr=3.0, momentum=momentum, progress=False,
                    callback=lambda info: seen.append(info["noise"]), steps=3, guidance=2.0, inversion_guidance=1.5)
    iterates, values = _sgd_reference(ToyBackend(), ["a", "b"], noise, 6, 3.0, momentum)
    assert len(seen) == 7
    for ours, ref in zip(seen, iterates):
        assert torch.allclose(ours, ref, rtol=0, atol=SGD_TOY)
    assert torch.allclose(torch.tensor(r.history).T, torch.stack(values), rtol=0, atol=SGD_TOY)
    # The best iterate, not the last one, is returned, with its own score and iteration.
    for j in range(2):
        k = int(torch.stack(values)[:, j].argmax())
        assert r.best_iteration[j] == k and r.best_stability[j] == pytest.approx(float(values[k][j]), abs=SGD_TOY)
        assert torch.allclose(r.noise[j], iterates[k][j], rtol=0, atol=SGD_TOY)


def test_returns_the_best_iterate_when_a_large_step_overshoots():
    toy = ShiftBackend()
    noise = sn.noises_from_seeds([3], toy.latent_shape)
    seen = []
    r = sn.optimize(toy, "a", noise, iterations=8, lr=300.0, momentum=0.5, preserve_norm=True, progress=False,
                    callback=lambda info: seen.append(info["noise"]))
    h = r.history[0]
    assert max(h) > h[-1] + 1e-3  # it overshot: the last iterate is not the best
    k = h.index(max(h))
    assert r.best_iteration == [k] and r.best_stability == [max(h)]
    assert torch.equal(r.noise[0], seen[k][0])
    assert sn.stability(ShiftBackend(), "a", r.noise).item() == pytest.approx(max(h), abs=f32(TOY))  # cosine over d


def test_callback_gets_a_copy():
    toy = ToyBackend()
    seen = []
    sn.optimize(toy, "a", sn.noises_from_seeds([0], toy.latent_shape), iterations=3, lr=5.0, progress=False,
                callback=lambda info: seen.append(info["noise"]))
    assert len(seen) == 4
    assert all(not torch.equal(a, b) for a, b in zip(seen, seen[1:]))  # a live tensor would be all the same


def test_a_non_finite_sample_stops_alone():
    toy = ToyBackend(poison={"bad": 3})  # its round trip turns NaN from the 4th call on
    noise = sn.noises_from_seeds([0, 1, 2], toy.latent_shape)
    r = sn.optimize(toy, ["a", "bad", "c"], noise, iterations=6, lr=3.0, progress=False)
    assert r.stopped[0] is None and r.stopped[2] is None
    assert r.stopped[1] == "non-finite stability at iteration 3"
    assert [len(h) for h in r.history] == [7, 3, 7]
    assert r.best_stability[1] == max(r.history[1]) and torch.isfinite(r.noise).all()
    # The healthy samples follow exactly the path they follow alone.
    alone = sn.optimize(ToyBackend(), ["a", "c"], noise[[0, 2]], iterations=6, lr=3.0, progress=False)
    assert r.history[0] == pytest.approx(alone.history[0], abs=SGD_TOY)  # a batch of 3 against one of 2
    assert r.history[2] == pytest.approx(alone.history[1], abs=SGD_TOY)


def test_non_finite_from_the_start_has_no_score():
    toy = ToyBackend(poison={"bad": 0})
    noise = sn.noises_from_seeds([0, 1], toy.latent_shape)
    r = sn.optimize(toy, ["bad", "a"], noise, iterations=2, lr=3.0, progress=False)
    assert r.history[0] == [] and r.best_stability[0] is None and r.best_iteration[0] is None
    assert r.initial_stability[0] is None and r.stopped[0] == "non-finite stability at iteration 0"
    assert torch.equal(r.noise[0], noise[0]) and len(r.history[1]) == 3


def test_zero_iterations_scores_only(sd):
    noise = sn.noises_from_seeds([4], sd.latent_shape)
    r = sn.optimize(sd, "a cat", noise, iterations=0, steps=2, progress=False)
    assert torch.equal(r.noise, noise) and [len(h) for h in r.history] == [1] and r.best_iteration == [0]


LR_MOMENTUM = "need lr > 0 and 0 <= momentum < 1"


@pytest.mark.parametrize("kwargs, message", [
    ({"iterations": -1}, "iterations must be >= 0, got -1"), ({"lr": 0.0}, LR_MOMENTUM),
    ({"lr": float("inf")}, LR_MOMENTUM), ({"momentum": 1.0}, LR_MOMENTUM), ({"momentum": -0.1}, LR_MOMENTUM),
    ({"guidance": float("nan")}, "guidance scales must be finite, got nan and 1.0")])
def test_bad_optimizer_settings(kwargs, message):
    toy = ToyBackend()
    with pytest.raises(StablenoiseError) as e:
        sn.optimize(toy, "a", sn.noises_from_seeds([0], toy.latent_shape), progress=False, **kwargs)
    assert str(e.value) == message


def test_paper_equivalent_lr_matches_the_relative_step_across_latent_sizes():
    assert sn.paper_equivalent_lr((4, 64, 64)) == 100.0
    assert sn.paper_equivalent_lr((3, 32, 32)) == pytest.approx(18.75)  # float64 arithmetic: rel 1e-6 >> f64
    # One SGD step on 1 - cos(eps, F) with F at the same angle to eps: with the equivalent lr, a small
    # and a large latent on their Gaussian shells (|eps| = sqrt(d)) move by the same fraction of their
    # norm; with the same lr they do not.
    steps = {}
    for shape in [(3, 32, 32), (4, 64, 64)]:
        g = torch.Generator().manual_seed(0)
        eps = torch.randn(1, *shape, generator=g, dtype=torch.float64)
        eps *= eps[0].numel() ** 0.5 / eps.norm()
        other = torch.randn(1, *shape, generator=g, dtype=torch.float64)
        other -= (other * eps).sum() / (eps * eps).sum() * eps  # orthogonal to eps
        target = eps / eps.norm() + other / other.norm()  # 45 degrees from eps
        x = eps.clone().requires_grad_(True)
        (1 - cosine(x, target)).sum().backward()
        steps[shape] = {lr: (lr * x.grad.norm() / eps.norm()).item()
                        for lr in (100.0, sn.paper_equivalent_lr(shape))}
    small, large = steps[(3, 32, 32)], steps[(4, 64, 64)]
    assert small[18.75] == pytest.approx(large[100.0], rel=1e-9)  # float64 norms over d: rel 1e-9 >= f64(16384)
    assert small[100.0] > 5 * large[100.0]


def test_paper_defaults():
    import inspect

    p = sn.OptimizerSettings.paper()  # optimize's defaults (the interface moved: settings, not keywords)
    assert (p.iterations, p.lr, p.momentum) == (100, 100.0, 0.5)
    assert p.preserve_norm is False and inspect.signature(sn.optimize).parameters["checkpoint"].default is True


def test_preserve_norm_on_a_toy_backend():
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0, 1], toy.latent_shape) * torch.tensor([0.5, 2.0]).view(2, 1, 1, 1)
    seen = []
    r = sn.optimize(toy, ["a", "b"], noise, iterations=3, lr=30.0, preserve_norm=True, progress=False,
                    callback=lambda info: seen.append(info["noise"]))
    radius = math.sqrt(math.prod(toy.latent_shape))
    for x in seen + [r.noise]:
        # the projection's float32 norm over d and this one
        assert torch.allclose(x.flatten(1).norm(dim=1), torch.full((2,), radius, dtype=x.dtype), rtol=f32(2 * TOY))
    # The projection only rescales: the start keeps its direction.
    # float32 entries |x| <= 3, scaled by a norm over d
    assert torch.allclose(seen[0], noise / noise.flatten(1).norm(dim=1).view(2, 1, 1, 1) * radius, rtol=0,
                          atol=f32(TOY, 3.0))
    # start_noise is that first iterate (what history[0] scores); initial_noise the noise as given.
    assert torch.equal(r.start_noise, seen[0]) and torch.equal(r.initial_noise, noise)
    assert r.history[0][0] == pytest.approx(float(sn.stability(toy, "a", r.start_noise[:1])), abs=f32(TOY))
    free = sn.optimize(ToyBackend(), ["a", "b"], noise, iterations=3, lr=30.0, progress=False)
    assert torch.equal(free.start_noise, noise)
    assert not torch.allclose(free.noise.flatten(1).norm(dim=1), torch.full((2,), radius), rtol=1e-3)  # it left


def test_zero_iterations_and_small_lr_on_a_toy_backend():
    toy = ToyBackend()
    noise = sn.noises_from_seeds([2], toy.latent_shape).double()
    r = sn.optimize(toy, "a", noise, iterations=0, progress=False)
    assert torch.equal(r.noise, noise) and r.noise.dtype == torch.float64 and r.history[0] == [
        pytest.approx(float(sn.stability(ToyBackend(), "a", noise)), abs=f64(TOY))]  # a float64 cosine over d
    half = sn.optimize(ToyBackend(), "a", noise.half(), iterations=1, lr=0.5, progress=False)
    assert half.noise.dtype == torch.float32 and len(half.history[0]) == 2


def test_defaults_are_used_when_unset():
    toy = ToyBackend()
    noise = sn.noises_from_seeds([1], toy.latent_shape)
    implicit = sn.optimize(toy, "a", noise, iterations=2, progress=False)
    explicit = sn.optimize(ToyBackend(), "a", noise, iterations=2, lr=100.0, momentum=0.5, steps=2, guidance=1.0,
                           inversion_guidance=1.0, preserve_norm=False, progress=False)
    assert implicit.history == explicit.history and torch.equal(implicit.noise, explicit.noise)
    assert torch.equal(implicit.initial_noise, noise)


def test_a_nan_gradient_stops_its_sample_after_a_finite_score():
    noise = sn.noises_from_seeds([0, 1], ToyBackend.latent_shape)
    seen = []
    r = sn.optimize(ToyBackend(bad_gradient=("bad",)), ["a", "bad"], noise, iterations=3, lr=3.0, progress=False,
                    callback=lambda info: seen.append(info["stability"]))
    assert r.stopped == [None, "non-finite gradient or noise after iteration 0"]
    assert [len(h) for h in r.history] == [4, 1] and torch.equal(r.noise[1], noise[1])
    assert [s[1] is None for s in seen] == [False, True, True, True] and all(s[0] is not None for s in seen)
    assert [s[0] for s in seen] == pytest.approx(r.history[0])
    alone = sn.optimize(ToyBackend(bad_gradient=("bad",)), "bad", noise[1:], iterations=3, lr=3.0, progress=False)
    assert alone.stopped == ["non-finite gradient or noise after iteration 0"] and alone.best_iteration == [0]


class _Recording(ToyBackend):
    """Records the guidance the prompt is encoded for and the checkpoint flag of every denoise/invert call."""

    def __init__(self):
        super().__init__()
        self.encoded_for, self.checkpoints = [], []

    def encode(self, prompts, guidance):
        self.encoded_for.append(guidance)
        return super().encode(prompts, guidance)

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self.checkpoints.append(("denoise", checkpoint))
        return super().denoise(noise, cond, steps, guidance, checkpoint)

    def invert(self, latents, cond, steps, guidance, checkpoint=False):
        self.checkpoints.append(("invert", checkpoint))
        return super().invert(latents, cond, steps, guidance, checkpoint)


@pytest.mark.parametrize("kwargs, checkpoint", [({}, True), ({"checkpoint": False}, False)])
def test_the_prompt_is_encoded_once_for_both_guidances_and_checkpoint_reaches_the_backend(kwargs, checkpoint):
    """A real backend encodes the unconditional branch only for guidance > 1, so the prompt must be encoded
    for max(guidance, inversion_guidance); and ``checkpoint`` (on by default: it is what keeps a real model's
    backward pass in memory) must reach every denoise and invert call."""
    toy = _Recording()
    sn.optimize(toy, "a", sn.noises_from_seeds([0, 1], toy.latent_shape), iterations=1, lr=3.0, guidance=2.0,
                inversion_guidance=3.0, progress=False, **kwargs)
    assert toy.encoded_for == [3.0]
    assert toy.checkpoints == [("denoise", checkpoint), ("invert", checkpoint)] * 2


def test_callback_gets_the_iteration_and_none_for_a_sample_that_stops():
    toy = ToyBackend(poison={"bad": 3})  # NaN from iteration 3 on
    seen = []
    r = sn.optimize(toy, ["a", "bad"], sn.noises_from_seeds([0, 1], toy.latent_shape), iterations=5, lr=3.0,
                    progress=False, callback=lambda info: seen.append((info["iteration"], info["stability"])))
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4, 5]
    # The iteration it turns NaN, the sample gets None (not its NaN score), as after it stopped.
    assert [s[1] for _, s in seen] == r.history[1] + [None, None, None]
    assert [s[0] for _, s in seen] == r.history[0]


def test_an_update_that_overflows_stops_its_sample_before_it_is_scored():
    """lr 1e300 is finite, so accepted; the float32 update overflows: the noise, not its stability, is blamed,
    and the non-finite iterate is never run through the model."""
    toy = ToyBackend()
    seen = []
    r = sn.optimize(toy, "a", sn.noises_from_seeds([0], toy.latent_shape), iterations=3, lr=1e300, progress=False,
                    callback=lambda info: seen.append(info["iteration"]))
    assert r.stopped == ["non-finite gradient or noise after iteration 0"]
    assert seen == [0] and toy.calls == 1 and r.best_iteration == [0]


def test_no_update_after_the_last_iteration():
    """The last iterate is scored, not updated: a NaN gradient there is no reason to report a stop."""
    noise = sn.noises_from_seeds([1], ToyBackend.latent_shape)
    r = sn.optimize(ToyBackend(bad_gradient=("bad",)), "bad", noise, iterations=0, progress=False)
    assert r.stopped == [None] and r.best_iteration == [0] and torch.equal(r.noise, noise)


class _Identity(ToyBackend):
    """A perfect round trip: F(eps) = eps, stability 1 for every noise."""

    latent_shape = (1, 2, 2)

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        return noise

    def invert(self, latents, cond, steps, guidance, checkpoint=False):
        return latents


def test_a_noise_that_cannot_improve_reports_its_first_best_iteration():
    """Ties keep the first iterate that reached the best score: best_iteration 0 says nothing improved it."""
    noise = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]]])  # exact: cos(eps, eps) = 1 and its gradient 0
    r = sn.optimize(_Identity(), "a", noise, iterations=3, progress=False)
    assert r.history == [[1.0, 1.0, 1.0, 1.0]]
    assert r.best_iteration == [0] and r.best_stability == [1.0] and torch.equal(r.noise, noise)


def test_preserve_norm_projects_a_noise_of_norm_below_one():
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0], toy.latent_shape) * 0.01  # norm about 0.06
    seen = []
    sn.optimize(toy, "a", noise, iterations=0, preserve_norm=True, progress=False,
                callback=lambda info: seen.append(info["noise"]))
    radius = math.sqrt(math.prod(toy.latent_shape))
    assert torch.allclose(seen[0], noise / noise.norm() * radius, rtol=0, atol=f32(TOY, 3.0))  # as above


def test_progress_bar_only_when_asked(capsys):
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0], toy.latent_shape)
    sn.optimize(toy, "a", noise, iterations=2, lr=3.0, progress=False)
    assert capsys.readouterr().err == ""
    sn.optimize(toy, "a", noise, iterations=2, lr=3.0)  # on by default, even when stderr is not a terminal
    assert "optimize: 100%" in capsys.readouterr().err
