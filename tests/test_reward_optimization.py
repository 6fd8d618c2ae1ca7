import math
from pathlib import Path

import numpy as np
import pytest
import torch

import stablenoise as sn
from stablenoise import Reward
from stablenoise.errors import StablenoiseError
from stablenoise.reward_optimization import chi_nll
from stablenoise.stability import conditioning
from tolerance import TOY, f32
from toy import QuadBackend, ToyBackend

SHAPES_COSINE = Path(sn.__file__).parent / "weights" / "shapes-cosine"


class MeanChannel(Reward):
    """The mean of one colour channel: smooth, differentiable, prompt-free."""

    name, differentiable, needs_prompts = "mean-channel", True, False

    def __init__(self, channel=0):
        self.channel = channel

    def score_tensor(self, pixels, prompts):
        return pixels[:, self.channel].mean((1, 2))


TARGET = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(7))


class Closeness(Reward):
    """-scale * |pixels - TARGET|^2: on QuadBackend, a concave quadratic of the noise."""

    name, differentiable, needs_prompts = "closeness", True, False

    def __init__(self, scale=1.0):
        self.scale = scale

    def score_tensor(self, pixels, prompts):
        return -self.scale * ((pixels - TARGET.to(pixels.dtype)) ** 2).flatten(1).sum(1)


class Frozen(Reward):
    name, differentiable, needs_prompts = "frozen", False, False

    def score_tensor(self, pixels, prompts):
        return pixels.mean((1, 2, 3))


def _run(backend, prompt, noise, rewards, seen=None, **kwargs):
    callback = (lambda info: seen.append(info)) if seen is not None else None
    return sn.reward_optimize(backend, prompt, noise, rewards, progress=False, callback=callback, **kwargs)


def test_renos_defaults():
    p = sn.OptimizerSettings.reno()  # reward_optimize's defaults (the interface moved: settings, not keywords)
    # 49 updates: ReNO's n_iters 50 scores 50 images (docs/reno.md); iterations counts updates everywhere
    assert (p.iterations, p.lr, p.momentum, p.nesterov, p.grad_clip, p.reg_weight) == (49, 5.0, 0.9, True, 0.1, 0.01)


def test_the_reward_rises_on_the_ddim_image():
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0, 1], toy.latent_shape)
    reward = MeanChannel(0)
    r = _run(toy, ["a", "b"], noise, {"red": (reward, 2.0)}, iterations=6)
    assert [len(h) for h in r.history] == [7, 7] and r.stopped == [None, None] and r.reward_evaluations == 14
    for j in range(2):
        assert r.history[j][-1] > r.history[j][0] + 1e-2
        assert r.best_reward[j] == max(r.history[j]) > r.initial_reward[j]
    # The scored image is the DDIM image of the noise under the model's default settings, weighted by 2.
    toy2 = ToyBackend()
    with torch.no_grad():
        z0 = toy2.denoise(noise, conditioning(toy2, ["a", "b"], 2, 1.0), toy2.defaults.steps, toy2.defaults.guidance)
    start = reward(toy2.decode_pixels(z0)).tolist()
    tol = f32(4 * 4)  # the reward is a float32 mean over 4 x 4 pixels in (0, 1); the toy's latent is float64
    assert r.initial_rewards["red"] == pytest.approx(start, abs=tol)
    assert r.initial_reward == pytest.approx([2 * s for s in start], abs=2 * tol)
    again = reward(toy2.decode_pixels(toy2.denoise(r.noise, conditioning(toy2, ["a", "b"], 2, 1.0), 2, 1.0)))
    assert r.best_rewards["red"] == pytest.approx(again.tolist(), abs=tol)


def _sgd_reference(noise, reward, weight, iterations, lr, momentum, nesterov, grad_clip, reg_weight):
    """Each sample alone through torch.optim.SGD on ReNO's loss, with clip_grad_norm_: the iterates."""
    paths = []
    for j in range(noise.shape[0]):
        x = noise[j:j + 1].clone().requires_grad_(True)
        opt = torch.optim.SGD([x], lr=lr, momentum=momentum, nesterov=nesterov)
        path = []
        for i in range(iterations + 1):
            path.append(x.detach().clone())
            if i == iterations:
                break
            opt.zero_grad()
            norm = torch.linalg.vector_norm(x)
            loss = -weight * reward(x).sum() + reg_weight * (0.5 * norm ** 2 - (x.numel() - 1) * torch.log(norm))
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(x, grad_clip)
            opt.step()
        paths.append(torch.cat(path))
    return [torch.stack([paths[j][i] for j in range(len(paths))]) for i in range(iterations + 1)]


@pytest.mark.parametrize("momentum, nesterov, grad_clip, reg_weight", [
    (0.9, True, None, 0.0), (0.5, True, None, 0.0), (0.9, False, None, 0.0), (0.0, False, None, 0.0),
    (0.9, True, 0.1, 0.0), (0.9, True, None, 0.05), (0.9, True, 0.1, 0.01)])
def test_iterates_are_torch_sgd_on_renos_loss(momentum, nesterov, grad_clip, reg_weight):
    noise = sn.noises_from_seeds([0, 1], QuadBackend.latent_shape)
    reward = Closeness()
    seen = []
    r = _run(QuadBackend(), "a", noise, {"close": (reward, 1.5)}, seen, iterations=6, lr=0.05, momentum=momentum,
             nesterov=nesterov, grad_clip=grad_clip, reg_weight=reg_weight)
    ref = _sgd_reference(noise, reward, 1.5, 6, 0.05, momentum, nesterov, grad_clip, reg_weight)
    assert len(seen) == 7 and r.stopped == [None, None]
    for i, (ours, theirs) in enumerate(zip(seen, ref)):
        # 6 float32 updates of a 12-entry noise (the regularizer's norm is the reduction), |x| + lr |g| <= 2
        assert torch.allclose(ours["noise"], theirs, rtol=0, atol=f32(6 * 12, 2.0)), i
    assert not torch.allclose(seen[-1]["noise"], seen[0]["noise"], atol=1e-2)  # it moved


def test_returns_the_best_iterate_when_a_large_step_overshoots():
    noise = sn.noises_from_seeds([3], QuadBackend.latent_shape)
    reward = Closeness()
    seen = []
    r = _run(QuadBackend(), "a", noise, {"close": (reward, 1.0)}, seen, iterations=8, lr=0.05, grad_clip=None,
             reg_weight=0.0)
    h = r.history[0]
    assert max(h) > h[-1] + 1 and max(h) > h[0] + 1  # momentum carried it past the optimum
    k = h.index(max(h))
    assert r.best_iteration == [k] and r.best_reward == [max(h)]
    assert torch.equal(r.noise[0], seen[k]["noise"][0])
    assert float(reward(r.noise)) == pytest.approx(max(h), abs=f32(12, abs(max(h))))  # a float32 sum of 12 squares
    assert r.best_rewards["close"] == [max(h)] and torch.equal(r.initial_noise, noise)
    assert torch.equal(r.start_noise, noise)  # ReNO starts from the noise as given


def test_gradient_clipping_bounds_the_step():
    noise = sn.noises_from_seeds([0, 1], QuadBackend.latent_shape)
    big = {"close": (Closeness(scale=10.0), 1.0)}  # gradient norms far above 0.1
    seen = []
    _run(QuadBackend(), "a", noise, big, seen, iterations=4, lr=5.0, momentum=0.0, reg_weight=0.0)
    steps = [(b["noise"] - a["noise"]).flatten(1).norm(dim=1) for a, b in zip(seen, seen[1:])]
    for s in steps:  # without momentum, every step is lr * the clipped gradient (rel 1e-5: as the step below)
        assert (s <= 5.0 * 0.1 * (1 + 1e-5)).all() and (s >= 5.0 * 0.1 * (1 - 1e-5)).all(), s
    # With Nesterov momentum 0.9 the first step is lr * (1 + 0.9) * the clipped gradient.
    seen = []
    _run(QuadBackend(), "a", noise, big, seen, iterations=1, lr=5.0, reg_weight=0.0)
    first = (seen[1]["noise"] - seen[0]["noise"]).flatten(1).norm(dim=1)
    # a step of 0.95 taken as the difference of two noises of size ~2: f32(12, 2 / 0.95) = 1.7e-6 relative
    assert torch.allclose(first, torch.full((2,), 5.0 * 1.9 * 0.1), rtol=1e-5)
    seen = []
    _run(QuadBackend(), "a", noise, big, seen, iterations=1, lr=5.0, reg_weight=0.0, grad_clip=None)
    assert ((seen[1]["noise"] - seen[0]["noise"]).flatten(1).norm(dim=1) > 10).all()  # unclipped: far larger


def test_regularizer_is_the_chi_negative_log_likelihood_and_pulls_the_norm_to_sqrt_d():
    d = 12
    x = torch.full((2, 3, 2, 2), 2.0)
    # float32: 0.5 |x|^2 = 24 (a sum of 12 terms) minus (d - 1) log|x| = 21
    assert torch.allclose(chi_nll(x), torch.full((2,), 0.5 * 4 * d - (d - 1) * math.log(2 * math.sqrt(d))), rtol=0,
                          atol=f32(d, 24.0 + 21.0))
    # Alone (reward weight 0), the regularizer moves a too-long and a too-short noise towards |eps| = sqrt(d - 1).
    noise = sn.noises_from_seeds([0, 1], QuadBackend.latent_shape)
    noise = noise / noise.flatten(1).norm(dim=1).view(2, 1, 1, 1) * torch.tensor([3 * d ** 0.5, 0.3 * d ** 0.5]
                                                                                 ).view(2, 1, 1, 1)
    seen = []
    r = _run(QuadBackend(), "a", noise, {"close": (Closeness(), 0.0)}, seen, iterations=3, lr=1.0, reg_weight=0.5)
    assert r.best_iteration == [0, 0] and r.history == [[0.0] * 4] * 2  # all ties: the earliest is kept
    gap = [(s["noise"].flatten(1).norm(dim=1) - math.sqrt(d - 1)).abs() for s in seen]
    assert all((b < a - 1e-3).all() for a, b in zip(gap, gap[1:])), gap
    # And it changes the optimum the reward pulls to.
    plain = _run(QuadBackend(), "a", noise, {"close": (Closeness(), 1.0)}, iterations=3, reg_weight=0.0)
    reg = _run(QuadBackend(), "a", noise, {"close": (Closeness(), 1.0)}, iterations=3, reg_weight=0.01)
    assert not torch.allclose(plain.noise, reg.noise, atol=1e-4)  # a real move, far above rounding


def test_rewards_are_weighted_and_summed():
    toy = ToyBackend()
    noise = sn.noises_from_seeds([0], toy.latent_shape)
    r = _run(toy, "a", noise, {"r": (MeanChannel(0), 2.0), "g": (MeanChannel(1), -0.5)}, iterations=2)
    start = 2.0 * r.initial_rewards["r"][0] - 0.5 * r.initial_rewards["g"][0]
    tol = f32(2, 2.5)  # a float32 sum of two rewards in (0, 1) weighted 2 and -0.5
    assert r.history[0][0] == r.initial_reward[0] == pytest.approx(start, abs=tol)
    assert r.best_reward[0] == pytest.approx(2.0 * r.best_rewards["r"][0] - 0.5 * r.best_rewards["g"][0], abs=tol)


@pytest.mark.parametrize("rewards, match", [
    ({"f": (Frozen(), 1.0)}, "not differentiable"), ({}, "non-empty"), ({"r": MeanChannel()}, "pair"),
    ({"r": (MeanChannel(), float("nan"))}, "finite"), ({"r": (MeanChannel(), "1")}, "finite")])
def test_bad_rewards_are_clear_errors(rewards, match):
    toy = ToyBackend()
    with pytest.raises(StablenoiseError, match=match):
        _run(toy, "a", sn.noises_from_seeds([0], toy.latent_shape), rewards, iterations=1)


@pytest.mark.parametrize("kwargs, match", [({"iterations": -1}, "iterations"), ({"lr": 0.0}, "lr"),
                                           ({"momentum": 1.0}, "momentum"), ({"grad_clip": 0.0}, "grad_clip"),
                                           ({"reg_weight": -1.0}, "reg_weight"), ({"steps": 0}, "steps")])
def test_bad_settings(kwargs, match):
    toy = ToyBackend()
    with pytest.raises(StablenoiseError, match=match):
        _run(toy, "a", sn.noises_from_seeds([0], toy.latent_shape), {"r": (MeanChannel(), 1.0)}, **kwargs)


def test_a_non_finite_sample_stops_alone():
    toy = ToyBackend(poison={"bad": 3})  # its image turns NaN from the 4th denoise on
    noise = sn.noises_from_seeds([0, 1, 2], toy.latent_shape) * torch.tensor([1.0, 1.0, 4.0]).view(3, 1, 1, 1)
    rewards = {"red": (MeanChannel(0), 50.0)}  # gradients far above the clip norm, noises of different norms
    seen = []
    r = _run(toy, ["a", "bad", "c"], noise, rewards, seen, iterations=6)
    assert r.stopped == [None, "non-finite reward at iteration 3", None]
    assert [len(h) for h in r.history] == [7, 3, 7] and r.reward_evaluations == 7 + 4 + 7
    assert r.best_reward[1] == max(r.history[1]) and torch.isfinite(r.noise).all()
    assert [s["reward"][1] is None for s in seen] == [False] * 3 + [True] * 4
    # The healthy samples follow exactly the path each follows alone.
    for j, prompt in [(0, "a"), (2, "c")]:
        alone = _run(ToyBackend(), prompt, noise[j:j + 1], rewards, iterations=6)
        # a batch of 3 against one of 1 over 6 updates: rewards weighted 50 (a mean over 4 x 4 pixels), noises
        # of size <= 8 (a clipped gradient norm over d)
        assert r.history[j] == pytest.approx(alone.history[0], abs=f32(6 * 4 * 4, 50.0))
        assert torch.allclose(r.noise[j], alone.noise[0], rtol=0, atol=f32(6 * TOY, 8.0))


def test_a_nan_gradient_stops_its_sample_after_a_finite_score():
    noise = sn.noises_from_seeds([0, 1], ToyBackend.latent_shape)
    r = _run(ToyBackend(bad_gradient=("bad",)), ["a", "bad"], noise, {"red": (MeanChannel(0), 1.0)}, iterations=3)
    assert r.stopped == [None, "non-finite gradient or noise after iteration 0"]
    assert [len(h) for h in r.history] == [4, 1] and torch.equal(r.noise[1], noise[1]) and r.best_iteration[1] == 0


def test_zero_iterations_scores_only():
    toy = ToyBackend()
    noise = sn.noises_from_seeds([2], toy.latent_shape).double()
    r = _run(toy, "a", noise, {"red": (MeanChannel(0), 1.0)}, iterations=0)
    assert torch.equal(r.noise, noise) and r.history[0] == r.initial_reward and r.best_iteration == [0]
    assert r.reward_evaluations == 1 and toy.calls == 1


def test_decode_pixels_is_what_decode_shows_and_has_gradients(sd, sdxl):
    for backend in (sd, sdxl):
        latents = sn.noises_from_seeds([0, 1], backend.latent_shape).requires_grad_(True)
        pixels = backend.decode_pixels(latents)
        assert pixels.shape == (2, 3, backend.height, backend.width) and pixels.dtype == torch.float32
        assert 0 <= float(pixels.detach().min()) and float(pixels.detach().max()) <= 1
        pixels.sum().backward()
        assert latents.grad.abs().sum() > 0
        with torch.no_grad():  # diffusers' own decode: the VAE at the pipeline's latent scale, then denormalize
            vae = backend.pipe.vae
            theirs = backend.pipe.image_processor.postprocess(
                vae.decode(latents / vae.config.scaling_factor).sample, output_type="pt")
        assert torch.equal(pixels.detach(), theirs)
        images = backend.decode(latents.detach())
        expected = (pixels.detach() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for image, want in zip(images, expected):
            assert np.array_equal(np.asarray(image), want)


@pytest.mark.model
def test_shapes_model_clip_reward_rises():
    backend = sn.load(SHAPES_COSINE, device="cpu")
    latents = sn.noises_from_seeds([0], backend.latent_shape)
    pixels = backend.decode_pixels(latents)
    assert torch.equal(pixels, (latents / 2 + 0.5).clamp(0, 1))
    reward = sn.load_reward("shapes-clip", device="cpu")
    prompt = "a red circle left of a blue square"
    noise = sn.noises_from_seeds([1], backend.latent_shape)
    r = sn.reward_optimize(backend, prompt, noise, {"shapes-clip": (reward, 1.0)}, iterations=3, steps=2,
                           progress=False)
    # Measured: 35.8 -> 46.1 -> 50.1 -> 54.7 (shapes-clip is 100 * cos).
    assert r.stopped == [None] and len(r.history[0]) == 4 and r.best_iteration == [3]
    assert r.history[0][-1] > r.history[0][0] + 5, r.history


def test_progress_bar_reaches_the_last_iteration(capsys):
    noise = sn.noises_from_seeds([3], QuadBackend.latent_shape)
    sn.reward_optimize(QuadBackend(), "a", noise, {"close": (Closeness(), 1.0)}, iterations=2, lr=0.05)
    assert "reward optimize: 100%" in capsys.readouterr().err
    _run(QuadBackend(), "a", noise, {"close": (Closeness(), 1.0)}, iterations=2, lr=0.05)
    assert capsys.readouterr().err == ""
