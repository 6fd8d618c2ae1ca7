"""Noise optimization: gradient descent with momentum on 1 - s(eps) through the whole round trip."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import trange

from .backends.base import Backend
from .errors import StablenoiseError
from .noise import check_noise
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
    initial_noise: torch.Tensor
    history: list[list[float]]  # stability of each sample at every evaluated iteration
    best_iteration: list[int]
    best_stability: list[float]
    stopped: str | None = None  # why it stopped before ``iterations``, if it did


def optimize(backend: Backend, prompt: str | Sequence[str], noise: torch.Tensor, iterations: int = 100,
             lr: float = 100.0, momentum: float = 0.5, steps: int | None = None,
             guidance: float | None = None, inversion_guidance: float | None = None,
             checkpoint: bool = True, preserve_norm: bool = False, progress: bool = True,
             callback: Callable[[dict], None] | None = None) -> OptimizationResult:
    """Maximize inversion stability of each noise in a batch (paper: 100 iterations, lr 100, momentum 0.5).

    The step size that lr means depends on the latent's dimension (see :func:`paper_equivalent_lr`).

    Each sample's loss depends on its own noise only, so a batch optimizes independently per sample.
    ``checkpoint`` recomputes each UNet call in the backward pass instead of storing 2*T of them.
    ``preserve_norm`` rescales every iterate to norm sqrt(d), the typical norm of d-dimensional
    Gaussian noise, so that the optimizer cannot leave the shell the model was trained on.
    The best iterate of each sample is returned; a NaN/inf stability or noise stops early.
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
    eps = start.clone().to(backend.device).requires_grad_(True)
    opt = torch.optim.SGD([eps], lr=lr, momentum=momentum)
    radius = math.sqrt(eps[0].numel())
    best = start.clone()
    best_s = torch.full((n,), -math.inf, dtype=start.dtype)
    best_it = [0] * n
    history: list[list[float]] = []
    stopped = None
    for i in trange(iterations + 1, desc="optimize", disable=not progress):
        opt.zero_grad(set_to_none=True)
        s = cosine(eps, round_trip(backend, cond, eps, steps, guidance, inversion_guidance, checkpoint)[1])
        s_cpu = s.detach().cpu()
        if not torch.isfinite(s_cpu).all():
            stopped = f"non-finite stability at iteration {i}"
            break
        history.append(s_cpu.tolist())
        better = s_cpu > best_s
        best[better] = eps.detach().cpu()[better]
        best_s = torch.where(better, s_cpu, best_s)
        best_it = [i if b else j for b, j in zip(better.tolist(), best_it)]
        if callback is not None:
            callback({"iteration": i, "stability": s_cpu.tolist(), "noise": eps.detach()})
        if i == iterations:
            break
        (1 - s).sum().backward()
        opt.step()
        with torch.no_grad():
            if preserve_norm:
                eps.mul_(radius / eps.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (eps.ndim - 1)))
            if not torch.isfinite(eps).all():
                stopped = f"non-finite noise after iteration {i}"
                break
    return OptimizationResult(best, start, history, best_it, best_s.tolist(), stopped)
