"""Reward-based noise optimization (ReNO, Eyring et al. 2024): gradient ascent on a weighted sum of
differentiable image rewards, through the DDIM denoise and a differentiable decode.

See docs/reno.md for what ReNO's own code does and where this follows or departs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .backends.base import Backend
from .errors import StablenoiseError
from .noise import check_noise, check_prompts
from .optimization import chi_nll, descend, relabel  # noqa: F401  (chi_nll: ReNO's regularizer, public here too)
from .rewards.base import Reward
from .settings import OptimizerSettings
from .stability import conditioning, resolve


@dataclass
class RewardOptimizationResult:
    noise: torch.Tensor  # [B, ...] the iterate of each sample with the highest weighted reward (CPU)
    initial_noise: torch.Tensor  # [B, ...] the noise as given
    start_noise: torch.Tensor  # [B, ...] the first iterate, which history[0] scores (on the shell with preserve_norm)
    history: list[list[float]]  # history[j]: weighted reward sum of sample j at each iteration it was evaluated
    best_iteration: list[int | None]  # None: the sample never had a finite reward
    best_reward: list[float | None]  # the weighted sum at best_iteration
    best_rewards: dict[str, list[float | None]]  # each named reward (unweighted) at best_iteration
    initial_rewards: dict[str, list[float | None]]  # each named reward (unweighted) of the noise as given
    stopped: list[str | None]  # why each sample stopped before ``iterations``, if it did
    reward_evaluations: int  # images scored (each by every reward): samples evaluated, summed over iterations

    @property
    def initial_reward(self) -> list[float | None]:
        """Each sample's weighted reward at its first iterate, ``history[j][0]`` (None: never evaluated)."""
        return [h[0] if h else None for h in self.history]


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
                    rewards: Mapping[str, tuple[Reward, float]], settings: OptimizerSettings | None = None, *,
                    steps: int | None = None, guidance: float | None = None, checkpoint: bool = True,
                    progress: bool = True, callback: Callable[[dict], None] | None = None,
                    **overrides) -> RewardOptimizationResult:
    """Maximize a weighted sum of differentiable rewards of each noise's image (ReNO's defaults).

    :func:`~stablenoise.optimization.descend` on sum_k w_k r_k(image), where the image is the deterministic
    DDIM image of the noise, ``backend.decode_pixels(backend.denoise(...))``, as ``generate(..., sampler="ddim")``
    shows it. ReNO's defaults (:meth:`OptimizerSettings.reno`): Nesterov SGD, lr 5, 49 updates (50 images
    scored), per-sample gradient-norm clip 0.1, chi-norm regularizer 0.01 (left out of the value that picks
    the best iterate).

    Args:
        backend: the model.
        prompt: one prompt, or one per noise.
        noise: [B, ...] or [...] starting noises.
        rewards: name -> (differentiable reward, weight).
        settings: the optimizer's settings (default: ReNO's); their ``reward_weights`` are not used here.
        steps, guidance: the DDIM denoising's (default: the model family's).
        checkpoint: recompute each UNet call in the backward pass.
        progress: show a progress bar.
        callback: gets, after each evaluation, ``{"iteration", "noise" (a CPU copy), "reward" (weighted sum per
            sample, None for stopped samples), "rewards" ({name: per-sample list})}``.
        **overrides: settings by name (``iterations=10, lr=2.0``), over ``settings``.

    Returns:
        A :class:`RewardOptimizationResult` holding the iterate with the highest weighted reward of each sample.
    """
    settings = (OptimizerSettings.reno() if settings is None else settings).override(**overrides)
    rewards = _check_rewards(rewards)
    steps, guidance, _ = resolve(backend, steps, guidance, None)
    start = check_noise(noise, backend.latent_shape)
    prompts = check_prompts(prompt, start.shape[0])
    with torch.no_grad():
        cond = conditioning(backend, prompts, start.shape[0], guidance)

    def weighted(x: torch.Tensor, active: list[int]):
        pixels = backend.decode_pixels(backend.denoise(x, cond.select(active), steps, guidance, checkpoint=checkpoint))
        parts = {name: _scores(name, reward, pixels, [prompts[j] for j in active]).to(x.device, torch.float32)
                 for name, (reward, _) in rewards.items()}
        return sum(weight * parts[name] for name, (_, weight) in rewards.items()), parts

    d = descend(weighted, start.to(backend.device), settings, relabel(callback, "reward", "rewards"), name="reward",
                desc="reward optimize", progress=progress)
    return RewardOptimizationResult(d.noise, d.initial_noise, d.start_noise, d.history, d.best_iteration,
                                    d.best_value, d.best_parts, d.initial_parts, d.stopped, d.evaluations)


def _scores(name: str, reward: Reward, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    r = reward(pixels, prompts).reshape(-1)
    if r.shape[0] != len(prompts):
        raise StablenoiseError(f"reward {name!r} gave {r.shape[0]} scores for {len(prompts)} images")
    return r
