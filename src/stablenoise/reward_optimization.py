"""Reward-based noise optimization (ReNO, Eyring et al. 2024): gradient ascent on a weighted sum of
differentiable image rewards, through the DDIM denoise and a differentiable decode.

See docs/reno.md for what ReNO's own code does and where this follows or departs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import trange

from .backends.base import Backend
from .errors import StablenoiseError
from .noise import check_noise, check_prompts
from .optimization import still_active
from .rewards.base import Reward
from .stability import conditioning, resolve


@dataclass
class RewardOptimizationResult:
    noise: torch.Tensor  # [B, ...] the iterate of each sample with the highest weighted reward (CPU)
    initial_noise: torch.Tensor  # [B, ...] the noise as given
    start_noise: torch.Tensor  # [B, ...] the first iterate, which history[0] scores (the noise as given)
    history: list[list[float]]  # history[j]: weighted reward sum of sample j at each iteration it was evaluated
    best_iteration: list[int | None]  # None: the sample never had a finite reward
    best_reward: list[float | None]  # the weighted sum at best_iteration
    best_rewards: dict[str, list[float | None]]  # each named reward (unweighted) at best_iteration
    initial_rewards: dict[str, list[float | None]]  # each named reward (unweighted) of the noise as given
    stopped: list[str | None]  # why each sample stopped before ``iterations``, if it did
    reward_evaluations: int  # images scored (each by every reward): samples evaluated, summed over iterations

    @property
    def initial_reward(self) -> list[float | None]:
        return [h[0] if h else None for h in self.history]


def chi_nll(noise: torch.Tensor) -> torch.Tensor:
    """Per sample, -log of the chi(d) density of |eps| up to a constant: |eps|^2 / 2 - (d - 1) log |eps|.

    The norm of d-dimensional standard Gaussian noise is chi-distributed with d degrees of freedom; this
    is ReNO's norm regularizer (smallest at |eps| = sqrt(d - 1)). Computed in float32 at least.
    """
    x = noise.flatten(1)
    norm = x.to(torch.promote_types(x.dtype, torch.float32)).norm(dim=1)
    return 0.5 * norm ** 2 - (x.shape[1] - 1) * norm.log()


def _check_rewards(rewards: Mapping[str, tuple[Reward, float]]) -> dict[str, tuple[Reward, float]]:
    if not isinstance(rewards, Mapping) or not rewards:
        raise StablenoiseError("rewards must be a non-empty mapping name -> (Reward, weight)")
    checked = {}
    for name, entry in rewards.items():
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], Reward)):
            raise StablenoiseError(f"rewards[{name!r}] must be a (Reward, weight) pair")
        reward, weight = entry
        if not reward.differentiable:
            raise StablenoiseError(f"reward {name!r} ({reward.name}) is not differentiable: reward optimization "
                                   "needs gradients from the image; use it with select() instead")
        if not reward.higher_is_better:
            raise StablenoiseError(f"reward {name!r} ({reward.name}) is lower-is-better; wrap it so that higher "
                                   "is better")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise StablenoiseError(f"the weight of reward {name!r} must be a finite number, got {weight!r}")
        checked[str(name)] = (reward, float(weight))
    return checked


def reward_optimize(backend: Backend, prompt: str | Sequence[str], noise: torch.Tensor,
                    rewards: Mapping[str, tuple[Reward, float]], iterations: int = 50, lr: float = 5.0,
                    momentum: float = 0.9, nesterov: bool = True, grad_clip: float | None = 0.1,
                    reg_weight: float = 0.01, steps: int | None = None, guidance: float | None = None,
                    checkpoint: bool = True, progress: bool = True,
                    callback: Callable[[dict], None] | None = None) -> RewardOptimizationResult:
    """Maximize a weighted sum of differentiable rewards of each noise's image (ReNO's defaults).

    ``rewards`` maps a name to ``(reward, weight)``. The image is the deterministic DDIM image of the noise,
    ``backend.decode_pixels(backend.denoise(...))``, as ``generate(..., sampler="ddim")`` shows it.
    Each sample j minimizes its own loss  -sum_k w_k r_k(image_j) + reg_weight * chi_nll(eps_j); its gradient
    is clipped to norm ``grad_clip`` (``torch.nn.utils.clip_grad_norm_`` per sample; None: no clipping) and
    the step is ``torch.optim.SGD``'s: v <- momentum * v + g, eps <- eps - lr * (g + momentum * v) with
    ``nesterov``, else eps - lr * v. ``iterations`` counts updates: iterations + 1 images are scored.

    The iterate with the highest weighted reward sum (the regularizer left out) is returned, the earliest on
    ties. A sample whose reward, gradient or noise turns NaN/inf stops alone. ``callback`` gets, after each
    evaluation, ``{"iteration", "noise" (a CPU copy), "reward" (weighted sum per sample, None for stopped
    samples), "rewards" ({name: per-sample list})}``.
    """
    if iterations < 0:
        raise StablenoiseError(f"iterations must be >= 0, got {iterations}")
    if not (lr > 0 and math.isfinite(lr)) or not 0 <= momentum < 1:
        raise StablenoiseError("need lr > 0 and 0 <= momentum < 1")
    if grad_clip is not None and not (grad_clip > 0 and math.isfinite(grad_clip)):
        raise StablenoiseError(f"grad_clip must be > 0 (or None for no clipping), got {grad_clip}")
    if not (reg_weight >= 0 and math.isfinite(reg_weight)):
        raise StablenoiseError(f"reg_weight must be >= 0, got {reg_weight}")
    rewards = _check_rewards(rewards)
    steps, guidance, _ = resolve(backend, steps, guidance, None)
    start = check_noise(noise, backend.latent_shape).cpu()
    start = start.to(torch.promote_types(start.dtype, torch.float32))
    n = start.shape[0]
    prompts = check_prompts(prompt, n)
    with torch.no_grad():
        cond = conditioning(backend, prompts, n, guidance)

    eps = start.clone().to(backend.device)
    velocity = torch.zeros_like(eps)
    best = eps.detach().cpu().clone()
    best_r: list[float | None] = [None] * n
    best_it: list[int | None] = [None] * n
    best_parts: dict[str, list[float | None]] = {k: [None] * n for k in rewards}
    initial: dict[str, list[float | None]] = {k: [None] * n for k in rewards}
    history: list[list[float]] = [[] for _ in range(n)]
    stopped: list[str | None] = [None] * n
    evaluations = 0
    active = list(range(n))
    for i in trange(iterations + 1, desc="reward optimize", disable=not progress):
        index = torch.tensor(active, device=eps.device)
        x = eps[index].detach().requires_grad_(True)
        pixels = backend.decode_pixels(backend.denoise(x, cond.select(active), steps, guidance, checkpoint=checkpoint))
        batch_prompts = [prompts[j] for j in active]
        parts = {}
        for name, (reward, _) in rewards.items():
            r = reward(pixels, batch_prompts).reshape(-1)
            if r.shape[0] != len(active):
                raise StablenoiseError(f"reward {name!r} gave {r.shape[0]} scores for {len(active)} images")
            parts[name] = r.to(x.device, torch.float32)
        total = sum(weight * parts[name] for name, (_, weight) in rewards.items())
        evaluations += len(active)
        total_cpu = total.detach().cpu()
        parts_cpu = {k: v.detach().cpu().tolist() for k, v in parts.items()}
        finite = torch.isfinite(total_cpu)
        for pos, j in enumerate(active):
            if not finite[pos]:
                stopped[j] = f"non-finite reward at iteration {i}"
                continue
            value = float(total_cpu[pos])
            history[j].append(value)
            if i == 0:
                for k in rewards:
                    initial[k][j] = parts_cpu[k][pos]
            if best_r[j] is None or value > best_r[j]:
                best_r[j], best_it[j] = value, i
                best[j] = x[pos].detach().cpu()
                for k in rewards:
                    best_parts[k][j] = parts_cpu[k][pos]
        if callback is not None:
            live = [stopped[j] is None for j in active]
            per_sample = {j: pos for pos, j in enumerate(active)}

            def pick(values):
                return [values[per_sample[j]] if j in per_sample and live[per_sample[j]] else None for j in range(n)]

            callback({"iteration": i, "noise": eps.detach().cpu().clone(), "reward": pick(total_cpu.tolist()),
                      "rewards": {k: pick(v) for k, v in parts_cpu.items()}})
        if not finite.any():
            break
        if i == iterations:  # the last iterate is judged, not updated (continue: the progress bar reaches 100%)
            continue
        keep = finite.to(total.device)
        loss = -total[keep]
        if reg_weight:
            loss = loss + reg_weight * chi_nll(x)[keep]
        loss = loss.sum()
        grad = torch.autograd.grad(loss, x)[0] if loss.requires_grad else torch.zeros_like(x)  # all weights 0
        with torch.no_grad():
            g = grad
            if grad_clip is not None:
                norm = g.flatten(1).norm(dim=1)
                g = g * (grad_clip / (norm + 1e-6)).clamp(max=1.0).view(-1, *[1] * (g.ndim - 1))
            v = momentum * velocity[index] + g
            velocity[index] = v
            eps[index] = eps[index] - lr * (g + momentum * v if nesterov else v)
        active = still_active(active, stopped, grad, eps, i)
        if not active:
            break
    return RewardOptimizationResult(best, start, start.clone(), history, best_it, best_r, best_parts, initial, stopped,
                                    evaluations)
