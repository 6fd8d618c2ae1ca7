"""Noise optimization: one descent loop, :func:`descend`, and the paper's objective on it, :func:`optimize`
(gradient descent with momentum on 1 - s(eps) through the whole round trip)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import trange

from .backends.base import Backend
from .errors import StablenoiseError
from .noise import check_noise, on_shell
from .settings import OptimizerSettings
from .stability import conditioning, cosine, resolve, round_trip

# objective(x, active) -> value [len(active)] to maximize, or (value, {name: [len(active)]} parts to record)
Objective = Callable[[torch.Tensor, list], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]


PAPER_LATENT_SHAPE = (4, 64, 64)  # SDXL-turbo at 512x512, the paper's main model


def paper_equivalent_lr(latent_shape, lr: float = 100.0, reference_shape=PAPER_LATENT_SHAPE) -> float:
    """The learning rate that moves a noise of ``latent_shape`` as far, relative to its norm, as ``lr``
    moves the paper's latent.

    The gradient of cos(eps, F) with respect to eps has norm sin(angle) / |eps|, and Gaussian noise has
    |eps| ~ sqrt(d); so one step changes eps by about lr * sin / d of its norm. lr 100 on SDXL-turbo's
    16,384-dimensional latent is therefore a 5x larger relative step on a 3,072-dimensional one.

    Args:
        latent_shape: the latent's shape, without a batch dimension.
        lr: the learning rate on the reference latent (default: the paper's, 100).
        reference_shape: the latent ``lr`` is meant for (default: SDXL-turbo's at 512x512, (4, 64, 64)).

    Returns:
        ``lr`` scaled by the ratio of the two latents' dimensions.
    """
    return lr * math.prod(latent_shape) / math.prod(reference_shape)


@dataclass
class Descent:
    """What :func:`descend` found, per sample j (CPU tensors)."""

    noise: torch.Tensor  # [B, ...] the iterate with the highest value (the earliest on ties)
    initial_noise: torch.Tensor  # [B, ...] the noise as given
    start_noise: torch.Tensor  # [B, ...] the first iterate, which history[j][0] scores (on the shell with preserve_norm)
    history: list[list[float]]  # the value at each iteration the sample was evaluated
    best_iteration: list[int | None]  # None: the sample never had a finite value
    best_value: list[float | None]
    best_parts: dict[str, list[float | None]]  # each part of the objective at best_iteration
    initial_parts: dict[str, list[float | None]]  # each part at iteration 0
    stopped: list[str | None]  # why the sample stopped before ``iterations``, if it did
    evaluations: int  # samples evaluated, summed over iterations


def chi_nll(noise: torch.Tensor) -> torch.Tensor:
    """Per sample, -log of the chi(d) density of |eps| up to a constant: |eps|^2 / 2 - (d - 1) log |eps|.

    The norm of d-dimensional standard Gaussian noise is chi-distributed with d degrees of freedom; this
    is ReNO's norm regularizer (smallest at |eps| = sqrt(d - 1)). Computed in float32 at least.

    Args:
        noise: [B, ...] noises.

    Returns:
        [B] the regularizer of each sample.
    """
    x = noise.flatten(1)
    norm = x.to(torch.promote_types(x.dtype, torch.float32)).norm(dim=1)
    return 0.5 * norm ** 2 - (x.shape[1] - 1) * norm.log()


def descend(objective: Objective, noise: torch.Tensor, settings: OptimizerSettings,
            callback: Callable[[dict], None] | None = None, *, name: str = "objective", desc: str | None = None,
            progress: bool = True) -> Descent:
    """Maximize ``objective`` of each noise in a batch by gradient descent with momentum, keeping the best iterate.

    Each sample j minimizes its own loss -value_j + reg_weight * chi_nll(eps_j); its gradient is clipped to norm
    ``grad_clip`` (unless None), and the step is ``torch.optim.SGD``'s: v <- momentum * v + g, then
    eps <- eps - lr * (g + momentum * v) with ``nesterov``, else eps - lr * v; with ``preserve_norm`` the start
    and every iterate are put back on the shell of norm sqrt(d). ``iterations`` counts updates: iterations + 1
    iterates are scored, the last one not updated. A sample whose value, gradient or noise turns NaN/inf stops
    alone; the others go on along exactly the path they follow alone.

    Args:
        objective: ``objective(x, active)`` for the iterates ``x`` [len(active), ...] of samples ``active``
            (indices into the batch) returns their values [len(active)] to maximize, differentiable in ``x``,
            or a pair (values, {part name: [len(active)]}) whose parts are recorded alongside.
        noise: [B, ...] the starting noises, on the device the objective runs on (promoted to float32 at least).
        settings: the optimizer's settings.
        callback: called after each evaluation with ``{"iteration", "noise" (a CPU copy of every iterate),
            "value" and "parts" (per sample, None for a sample that stopped)}``.
        name: what the value is, for the reason a sample stops ("non-finite NAME at iteration i").
        desc: the progress bar's label (default: ``name``).
        progress: show a progress bar.

    Returns:
        A :class:`Descent`.
    """
    if not isinstance(settings, OptimizerSettings):
        raise StablenoiseError(f"settings must be an OptimizerSettings, got {type(settings).__name__}")
    project = on_shell if settings.preserve_norm else (lambda x: x)
    given = noise.detach().to(torch.promote_types(noise.dtype, torch.float32))
    eps = project(given.clone())
    track = _Track(given.cpu(), eps.cpu().clone())
    velocity = torch.zeros_like(eps)
    active = list(range(eps.shape[0]))
    for i in trange(settings.iterations + 1, desc=desc or name, disable=not progress):
        index = torch.tensor(active, device=eps.device)
        x = eps[index].detach().requires_grad_(True)
        value, parts = _evaluate(objective, x, active)
        finite = track.record(i, active, x, value, parts, name)
        if callback is not None:
            callback(track.report(i, eps, active, value, parts))
        if not finite.any():  # every sample stopped: no backward pass for nothing
            break
        if i == settings.iterations:  # the last iterate is scored, not updated (continue: the bar reaches 100%)
            continue
        grad = _gradient(value, x, finite.to(value.device), settings.reg_weight)
        with torch.no_grad():
            eps[index] = project(eps[index] - settings.lr * _momentum_step(grad, velocity, index, settings))
        active = _still_active(active, track.stopped, grad, eps, i)
        if not active:
            break
    return track.result()


def _evaluate(objective: Objective, x: torch.Tensor, active: list[int]):
    out = objective(x, active)
    value, parts = out if isinstance(out, tuple) else (out, {})
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (len(active),):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise StablenoiseError(f"the objective gave {shape} for {len(active)} noises; it must give one value each")
    return value, parts


def _gradient(value: torch.Tensor, x: torch.Tensor, keep: torch.Tensor, reg_weight: float) -> torch.Tensor:
    """d/dx of the loss of the samples with a finite value: -value, plus the norm regularizer when weighted."""
    loss = -value[keep]
    if reg_weight:
        loss = loss + reg_weight * chi_nll(x)[keep]
    loss = loss.sum()
    return torch.autograd.grad(loss, x)[0] if loss.requires_grad else torch.zeros_like(x)  # a constant objective


def _momentum_step(grad: torch.Tensor, velocity: torch.Tensor, index: torch.Tensor,
                   settings: OptimizerSettings) -> torch.Tensor:
    """The SGD step direction for the samples at ``index`` (their velocity updated in place)."""
    g = grad
    if settings.grad_clip is not None:  # torch.nn.utils.clip_grad_norm_, per sample
        norm = g.flatten(1).norm(dim=1)
        g = g * (settings.grad_clip / (norm + 1e-6)).clamp(max=1.0).view(-1, *[1] * (g.ndim - 1))
    v = settings.momentum * velocity[index] + g
    velocity[index] = v
    return g + settings.momentum * v if settings.nesterov else v


def _still_active(active: list[int], stopped: list[str | None], grad: torch.Tensor, eps: torch.Tensor,
                  iteration: int) -> list[int]:
    """The samples that go on after an update: a non-finite gradient or iterate stops its sample alone
    (and records why in ``stopped``). ``grad`` is indexed by position in ``active``, ``eps`` by sample."""
    still = []
    for pos, j in enumerate(active):
        if stopped[j] is None and not (torch.isfinite(grad[pos]).all() and torch.isfinite(eps[j]).all()):
            stopped[j] = f"non-finite gradient or noise after iteration {iteration}"
        if stopped[j] is None:
            still.append(j)
    return still


class _Track:
    """Each sample's history, best iterate and stop reason, as :func:`descend` goes."""

    def __init__(self, given: torch.Tensor, start: torch.Tensor):
        n = start.shape[0]
        self.given, self.start, self.best = given, start, start.clone()
        self.history: list[list[float]] = [[] for _ in range(n)]
        self.best_value: list[float | None] = [None] * n
        self.best_iteration: list[int | None] = [None] * n
        self.best_parts: dict[str, list[float | None]] = {}
        self.initial_parts: dict[str, list[float | None]] = {}
        self.stopped: list[str | None] = [None] * n
        self.evaluations = 0

    def record(self, i: int, active: list[int], x: torch.Tensor, value: torch.Tensor, parts: dict, name: str):
        """Record one evaluation; returns which of ``active`` had a finite value (the others stop here)."""
        values = value.detach().cpu()
        part_values = {k: v.detach().cpu().tolist() for k, v in parts.items()}
        for k in part_values:
            self.best_parts.setdefault(k, [None] * len(self.history))
            self.initial_parts.setdefault(k, [None] * len(self.history))
        finite = torch.isfinite(values)
        self.evaluations += len(active)
        for pos, j in enumerate(active):
            if not finite[pos]:
                self.stopped[j] = f"non-finite {name} at iteration {i}"
                continue
            self.history[j].append(float(values[pos]))
            if i == 0:
                for k, v in part_values.items():
                    self.initial_parts[k][j] = v[pos]
            if self.best_value[j] is None or float(values[pos]) > self.best_value[j]:
                self.best_value[j], self.best_iteration[j] = float(values[pos]), i
                self.best[j] = x[pos].detach().cpu()
                for k, v in part_values.items():
                    self.best_parts[k][j] = v[pos]
        return finite

    def report(self, i: int, eps: torch.Tensor, active: list[int], value: torch.Tensor, parts: dict) -> dict:
        """The callback's view of iteration i: None for every sample that is not going on."""
        live = {j: pos for pos, j in enumerate(active) if self.stopped[j] is None}

        def per_sample(values: list) -> list:
            return [values[live[j]] if j in live else None for j in range(len(self.history))]

        return {"iteration": i, "noise": eps.detach().cpu().clone(), "value": per_sample(value.detach().cpu().tolist()),
                "parts": {k: per_sample(v.detach().cpu().tolist()) for k, v in parts.items()}}

    def result(self) -> Descent:
        return Descent(self.best, self.given, self.start, self.history, self.best_iteration, self.best_value,
                       self.best_parts, self.initial_parts, self.stopped, self.evaluations)


def relabel(callback: Callable[[dict], None] | None, value: str, parts: str | None = None):
    """A :func:`descend` callback that hands ``callback`` the value (and the parts) under a builder's own keys.

    Args:
        callback: the user's callback, or None.
        value: the key of the value (``"stability"``).
        parts: the key of the parts, if any (``"rewards"``).

    Returns:
        The callback for :func:`descend`, or None.
    """
    if callback is None:
        return None

    def relay(info: dict) -> None:
        out = {"iteration": info["iteration"], "noise": info["noise"], value: info["value"]}
        callback({**out, parts: info["parts"]} if parts else out)
    return relay


@dataclass
class OptimizationResult:
    noise: torch.Tensor  # [B, ...] the most stable iterate of each sample (CPU)
    initial_noise: torch.Tensor  # [B, ...] the noise as given
    start_noise: torch.Tensor  # [B, ...] the first iterate, which history[0] scores (on the shell with preserve_norm)
    history: list[list[float]]  # history[j]: stability of sample j at each iteration it was evaluated
    best_iteration: list[int | None]  # None: the sample never had a finite score
    best_stability: list[float | None]
    stopped: list[str | None]  # why each sample stopped before ``iterations``, if it did

    @property
    def initial_stability(self) -> list[float | None]:
        """Each sample's stability at its first iterate, ``history[j][0]`` (None: never evaluated)."""
        return [h[0] if h else None for h in self.history]


def optimize(backend: Backend, prompt: str | Sequence[str], noise: torch.Tensor,
             settings: OptimizerSettings | None = None, *, steps: int | None = None, guidance: float | None = None,
             inversion_guidance: float | None = None, checkpoint: bool = True, progress: bool = True,
             callback: Callable[[dict], None] | None = None, **overrides) -> OptimizationResult:
    """Maximize inversion stability of each noise in a batch (paper: 100 iterations, lr 100, momentum 0.5).

    :func:`descend` on s(eps) = cos(eps, F(eps)): SGD with heavy-ball momentum, as ``torch.optim.SGD``; the step
    size that lr means depends on the latent's dimension (see :func:`paper_equivalent_lr`). Each sample's loss
    depends on its own noise only, so a batch optimizes independently per sample.

    Args:
        backend: the model.
        prompt: one prompt, or one per noise.
        noise: [B, ...] or [...] starting noises.
        settings: the optimizer's settings (default: :meth:`OptimizerSettings.paper`).
        steps, guidance, inversion_guidance: the round trip's (default: the model family's).
        checkpoint: recompute each UNet call in the backward pass instead of storing 2*T of them.
        progress: show a progress bar.
        callback: gets, after each evaluation, ``{"iteration", "stability" (None for stopped samples),
            "noise" (a CPU copy)}``.
        **overrides: settings by name (``iterations=20, lr=18.75, preserve_norm=True``), over ``settings``.

    Returns:
        An :class:`OptimizationResult` holding the most stable iterate of each sample.
    """
    settings = (OptimizerSettings.paper() if settings is None else settings).override(**overrides)
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    start = check_noise(noise, backend.latent_shape)
    with torch.no_grad():
        cond = conditioning(backend, prompt, start.shape[0], max(guidance, inversion_guidance))

    def stability(x: torch.Tensor, active: list[int]) -> torch.Tensor:
        return cosine(x, round_trip(backend, cond.select(active), x, steps, guidance, inversion_guidance, checkpoint)[1])

    d = descend(stability, start.to(backend.device), settings, relabel(callback, "stability"), name="stability",
                desc="optimize", progress=progress)
    return OptimizationResult(d.noise, d.initial_noise, d.start_noise, d.history, d.best_iteration, d.best_value,
                              d.stopped)
