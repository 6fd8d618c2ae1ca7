import math

import pytest
import torch

import stablenoise as sn
from stablenoise.stability import conditioning, cosine, round_trip
from tiny import tiny_sd


def test_raises_stability_in_a_few_iterations(sd):
    noise = sn.noises_from_seeds([0, 1], sd.latent_shape)
    r = sn.optimize(sd, "a red cube", noise, iterations=5, steps=3, progress=False)
    assert len(r.history) == 6
    start, best = torch.tensor(r.history[0]), torch.tensor(r.best_stability)
    assert (best > start + 1e-3).all(), (start, best)
    # The returned noise really has the reported stability.
    again = sn.stability(sd, "a red cube", r.noise, steps=3)
    assert torch.allclose(again, best.float(), atol=1e-5)
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
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_preserve_norm(sd):
    noise = sn.noises_from_seeds([0], sd.latent_shape) * 1.3
    norms = []
    sn.optimize(sd, "a cat", noise, iterations=3, steps=2, preserve_norm=True, progress=False,
                callback=lambda info: norms.append(float(info["noise"].norm())))
    assert math.isclose(norms[0], 1.3 * float(noise.norm() / 1.3), rel_tol=1e-6)  # the start is untouched
    for n in norms[1:]:
        assert math.isclose(n, math.sqrt(noise.numel()), rel_tol=1e-5)


class _NaNAfter:
    """A backend whose inversion returns NaN from its n-th call on: optimization must stop, keeping the best."""

    def __init__(self, backend, n):
        self._b, self._n, self.calls = backend, n, 0

    def __getattr__(self, name):
        return getattr(self._b, name)

    def invert(self, *args, **kwargs):
        self.calls += 1
        out = self._b.invert(*args, **kwargs)
        return out * float("nan") if self.calls >= self._n else out


def test_stops_on_nan_with_best_so_far(sd):
    noise = sn.noises_from_seeds([0], sd.latent_shape)
    r = sn.optimize(_NaNAfter(sd, 4), "a cat", noise, iterations=10, steps=2, progress=False)
    assert r.stopped and "non-finite" in r.stopped
    assert len(r.history) == 3
    assert r.best_stability[0] == max(h[0] for h in r.history)
    assert torch.isfinite(r.noise).all()


def test_zero_iterations_scores_only(sd):
    noise = sn.noises_from_seeds([4], sd.latent_shape)
    r = sn.optimize(sd, "a cat", noise, iterations=0, steps=2, progress=False)
    assert torch.equal(r.noise, noise) and len(r.history) == 1


def test_paper_equivalent_lr_matches_the_relative_step_across_latent_sizes():
    assert sn.paper_equivalent_lr((4, 64, 64)) == 100.0
    assert sn.paper_equivalent_lr((3, 32, 32)) == pytest.approx(18.75)
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
    assert small[18.75] == pytest.approx(large[100.0], rel=1e-9)
    assert small[100.0] > 5 * large[100.0]
