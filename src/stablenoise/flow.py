"""Deterministic Euler integration of a flow-matching ODE, both ways, as short pure functions.

A flow-matching model predicts the velocity v = dx/dsigma of x_sigma = (1 - sigma) x_0 + sigma eps.
Denoising integrates from the noise level sigma_0 (1) to sigma_T (0) with explicit Euler, exactly as
``FlowMatchEulerDiscreteScheduler.step`` does: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v(x_i, sigma_i).
Inversion integrates the same ODE back over the same sigmas, again explicit Euler with the velocity at the
current point: x_i = x_{i+1} - (sigma_{i+1} - sigma_i) v(x_{i+1}, sigma_{i+1}). The two are not inverses
of each other (each step errs by O(dsigma^2)), which is the flow analogue of DDIM inversion's error.

diffusers supplies the sigmas: the scheduler's own ``set_timesteps`` with the pipeline's arguments (shift,
dynamic shifting by ``mu``, terminal stretch, Karras/exponential/beta spacing, inverted sigmas), so the
round trip denoises over the very sigmas the pipeline samples with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .errors import StablenoiseError

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, timestep) -> velocity


@dataclass(frozen=True)
class Schedule:
    sigmas: torch.Tensor  # [T + 1] float64: the noise level before each step, then where the last one lands
    timesteps: torch.Tensor  # [T + 1]: the model's timestep at each of those levels (sigma * num_train_timesteps)

    def __len__(self) -> int:
        return len(self.sigmas) - 1


def schedule(config: Mapping, steps: int, device=None, **set_timesteps_kwargs) -> Schedule:
    """The sigmas of ``steps`` Euler steps of a ``FlowMatchEulerDiscreteScheduler`` with this config, set
    with the arguments the pipeline passes (``mu``, ``sigmas``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if steps < 1:
        raise StablenoiseError(f"steps must be >= 1, got {steps}")
    sched = FlowMatchEulerDiscreteScheduler.from_config(dict(config))
    sched.set_timesteps(steps, **set_timesteps_kwargs)
    sigmas = sched.sigmas.to(torch.float32)
    # The model's timestep at the last level, where only inversion evaluates it, by the scheduler's own rule.
    last = sigmas[-1:] * sched.config.num_train_timesteps
    timesteps = torch.cat([sched.timesteps.to(torch.float32), last])
    return Schedule(sigmas.to(device, torch.float64), timesteps.to(device))


def denoise(model: Model, x: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """Noise at sigma_0 to a sample at sigma_T: T model calls."""
    for i in range(len(sched)):
        x = x + float(sched.sigmas[i + 1] - sched.sigmas[i]) * model(x, sched.timesteps[i])
    return x


def invert(model: Model, x: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """A sample at sigma_T back to noise at sigma_0: explicit Euler backwards over the same sigmas."""
    for i in reversed(range(len(sched))):
        x = x - float(sched.sigmas[i + 1] - sched.sigmas[i]) * model(x, sched.timesteps[i + 1])
    return x
