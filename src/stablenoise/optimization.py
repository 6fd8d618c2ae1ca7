"""Noise optimization: gradient descent with momentum on 1 - s(eps) through the whole round trip."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import trange

from .backends.base import Backend
from .errors import StablenoiseError
from .noise import check_noise, on_shell
from .stability import conditioning, cosine, resolve, round_trip


PAPER_LATENT_SHAPE = (4, 64, 64)  # SDXL-turbo at 512x512, the paper's main model


def paper_equivalent_lr(latent_shape, lr: float = 100.0, reference_shape=PAPER_LATENT_SHAPE) -> float:
    """The learning rate that moves a noise of ``latent_shape`` as far, relative to its norm, as ``lr``
    moves the paper's latent.

    The gradient of cos(eps, F) with respect to eps has norm sin(angle) / |eps|, and Gaussian noise has
    |eps| ~ sqrt(d); so one step changes eps by about lr * sin / d of its norm. lr 100 on SDXL-turbo's
    16,384-dimensional latent is therefore a 5x larger relative step on a 3,072-dimensional one.
    """
    return lr * math.prod(latent_shape) / math.prod(reference_shape)


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
        return [h[0] if h else None for h in self.history]


def still_active(active: list[int], stopped: list[str | None], grad: torch.Tensor, eps: torch.Tensor,
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


def optimize(backend: Backend, prompt: str | Sequence[str], noise: torch.Tensor, iterations: int = 100,
             lr: float = 100.0, momentum: float = 0.5, steps: int | None = None,
             guidance: float | None = None, inversion_guidance: float | None = None,
             checkpoint: bool = True, preserve_norm: bool = False, progress: bool = True,
             callback: Callable[[dict], None] | None = None) -> OptimizationResult:
    """Maximize inversion stability of each noise in a batch (paper: 100 iterations, lr 100, momentum 0.5).

    The update is SGD with heavy-ball momentum, as ``torch.optim.SGD``: v <- momentum * v + g, eps <- eps - lr * v.
    The step size that lr means depends on the latent's dimension (see :func:`paper_equivalent_lr`).

    Each sample's loss depends on its own noise only, so a batch optimizes independently per sample, and a
    sample whose stability, gradient or noise turns NaN/inf stops alone (the others go on).
    ``checkpoint`` recomputes each UNet call in the backward pass instead of storing 2*T of them.
    ``preserve_norm`` projects the start and every iterate onto the sphere of radius sqrt(d), the typical
    norm of d-dimensional Gaussian noise, so the optimizer cannot leave the shell the model was trained on.
    The best iterate of each sample is returned. ``callback`` gets, after each evaluation,
    ``{"iteration", "stability" (None for stopped samples), "noise" (a CPU copy)}``.
    """
    if iterations < 0:
        raise StablenoiseError(f"iterations must be >= 0, got {iterations}")
    if not (lr > 0 and math.isfinite(lr)) or not 0 <= momentum < 1:
        raise StablenoiseError("need lr > 0 and 0 <= momentum < 1")
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    start = check_noise(noise, backend.latent_shape).cpu()
    start = start.to(torch.promote_types(start.dtype, torch.float32))
    n = start.shape[0]
    with torch.no_grad():
        cond = conditioning(backend, prompt, n, max(guidance, inversion_guidance))

    def project(x: torch.Tensor) -> torch.Tensor:
        return on_shell(x) if preserve_norm else x

    eps = project(start.clone()).to(backend.device)
    first = eps.detach().cpu().clone()
    velocity = torch.zeros_like(eps)
    best = eps.detach().cpu().clone()
    best_s: list[float | None] = [None] * n
    best_it: list[int | None] = [None] * n
    history: list[list[float]] = [[] for _ in range(n)]
    stopped: list[str | None] = [None] * n
    active = list(range(n))
    for i in trange(iterations + 1, desc="optimize", disable=not progress):
        index = torch.tensor(active, device=eps.device)
        x = eps[index].detach().requires_grad_(True)
        s = cosine(x, round_trip(backend, cond.select(active), x, steps, guidance, inversion_guidance, checkpoint)[1])
        s_cpu = s.detach().cpu()
        finite = torch.isfinite(s_cpu)
        for pos, j in enumerate(active):
            if not finite[pos]:
                stopped[j] = f"non-finite stability at iteration {i}"
                continue
            value = float(s_cpu[pos])
            history[j].append(value)
            if best_s[j] is None or value > best_s[j]:
                best_s[j], best_it[j] = value, i
                best[j] = x[pos].detach().cpu()
        if callback is not None:
            values = dict(zip(active, s_cpu.tolist()))
            callback({"iteration": i, "noise": eps.detach().cpu().clone(),
                      "stability": [values[j] if stopped[j] is None and j in values else None for j in range(n)]})
        if not finite.any():
            break
        if i == iterations:  # the last iterate is scored, not updated (continue: the progress bar reaches 100%)
            continue
        grad, = torch.autograd.grad((1 - s[finite.to(s.device)]).sum(), x)
        with torch.no_grad():
            velocity[index] = momentum * velocity[index] + grad
            eps[index] = project(eps[index] - lr * velocity[index])
        active = still_active(active, stopped, grad, eps, i)
        if not active:
            break
    return OptimizationResult(best, start, first, history, best_it, best_s, stopped)
