"""Flow matching's noise levels, from diffusers, for the one deterministic integrator (:mod:`stablenoise.ddim`).

A flow-matching model predicts the velocity v = dx/dsigma = eps - x_0 of x_sigma = (1 - sigma) x_0 + sigma eps,
which is DDIM's x = a x_0 + b eps in (a, b) = (1 - sigma, sigma) coordinates. At a level the velocity gives
x_0 = x - sigma v and eps = x + (1 - sigma) v, and DDIM's step to sigma', x' = (1 - sigma') x_0 + sigma' eps,
equals x + (sigma' - sigma) v: explicit Euler, as ``FlowMatchEulerDiscreteScheduler.step`` does it (the same
number up to the rounding of another order of operations). So denoising is Euler from sigma_0 (1) to sigma_T (0)
with the velocity at the current point, and inversion integrates the same ODE back over the same sigmas; by default
(``"source"``) again with the velocity at the current point, x_i = x_{i+1} - (sigma_{i+1} - sigma_i) v(x_{i+1},
sigma_{i+1}) (``"destination"`` evaluates it at sigma_i instead, as DDIM inversion does). The two directions are
not inverses of each other (each step errs by O(dsigma^2)), the flow analogue of DDIM inversion's error.

diffusers supplies the sigmas: the scheduler's own ``set_timesteps`` with the pipeline's arguments (shift,
dynamic shifting by ``mu``, terminal stretch, Karras/exponential/beta spacing, inverted sigmas), so the
round trip denoises over the very sigmas the pipeline samples with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from .ddim import Level
from .errors import StablenoiseError


@dataclass(frozen=True)
class Schedule:
    sigmas: torch.Tensor  # [T + 1] float64: the noise level before each step, then where the last one lands
    timesteps: torch.Tensor  # [T + 1]: the model's timestep at each of those levels (sigma * num_train_timesteps)
    prediction_type: ClassVar[str] = "flow"  # the model predicts the velocity eps - x_0
    clip: ClassVar[None] = None

    def __len__(self) -> int:
        return len(self.sigmas) - 1

    def levels(self) -> tuple[Level, ...]:
        """The T + 1 levels (a, b) = (1 - sigma, sigma); a velocity means the same at every level."""
        return tuple(Level(1 - s, s, t, 1 - s, s) for s, t in zip(self.sigmas.tolist(), self.timesteps))


def schedule(config: Mapping, steps: int, device=None, **set_timesteps_kwargs) -> Schedule:
    """The sigmas of ``steps`` Euler steps of a ``FlowMatchEulerDiscreteScheduler`` with this config, set
    with the arguments the pipeline passes (``mu``, ``sigmas``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if steps < 1:
        raise StablenoiseError(f"steps must be >= 1, got {steps}")
    sched = FlowMatchEulerDiscreteScheduler.from_config(dict(config))
    sched.set_timesteps(steps, **set_timesteps_kwargs)
    sigmas = sched.sigmas.to(torch.float32)
    # The model's timestep at the last level, where only source-point inversion evaluates it, by the scheduler's rule.
    last = sigmas[-1:] * sched.config.num_train_timesteps
    timesteps = torch.cat([sched.timesteps.to(torch.float32), last])
    return Schedule(sigmas.to(device, torch.float64), timesteps.to(device))
