"""Deterministic DDIM (eta = 0) and its inversion, as short pure functions over a model callable.

The step is our own, over the *actual* list of timesteps, instead of diffusers' ``DDIMScheduler.step`` and
``DDIMInverseScheduler.step``: those derive the neighbouring timestep with a uniform stride
(``t - num_train_timesteps // steps``), which is wrong for "linspace" spacing (diffusers issues 11347 and
12633), and the inverse scheduler refuses linspace outright. diffusers still supplies the noise schedule
(``alphas_cumprod``, from betas, zero-SNR rescaling, ...) and the timestep list (``set_timesteps``).

A schedule of T steps is T timesteps t_0 > ... > t_{T-1} and T + 1 noise levels a_0 ... a_T, where
a_i = alpha_bar(t_i) and a_T is the level the last step lands on (1 = clean). Denoising step i moves x from
a_i to a_{i+1} with the model evaluated at (x, t_i); inversion step i moves x from a_{i+1} back to a_i with
the model evaluated at (x, t_i): the usual DDIM-inversion approximation eps(x_{t-1}, t) ~ eps(x_t, t), as
diffusers' inverse scheduler does it. The model output is turned into a noise estimate at the level of the
timestep the model was given (a_i), where its parametrization holds. For epsilon prediction that changes
nothing; for v and sample prediction diffusers' inverse scheduler reads the output at the *source* level
instead, which at the first inversion step (from alpha_bar = 1) takes v itself for the noise, or divides by
zero (diffusers issue 10920). The analytic test (tests/test_ddim.py) tells the two apart.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .errors import StablenoiseError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t) -> model output


@dataclass(frozen=True)
class Schedule:
    timesteps: torch.Tensor  # [T] descending: the model's timestep at each denoising step
    alphas: torch.Tensor  # [T + 1] float64: alpha_bar before each step, then where the last step lands
    prediction_type: str = "epsilon"
    clip: float | None = None  # clip the x0 estimate to [-clip, clip] (only if the model's config asks)

    def __len__(self) -> int:
        return len(self.timesteps)


def _explicit(config: Mapping, key: str) -> bool:
    """Whether the scheduler the pipeline ships actually sets ``key``: present, not filled in from a
    default by diffusers, and a parameter of that scheduler class (not a leftover it ignores)."""
    if key not in config or key in (config.get("_use_default_values") or ()):
        return False
    import diffusers

    source = getattr(diffusers, str(config.get("_class_name")), None)
    return source is None or key in inspect.signature(source.__init__).parameters


def settings(config: Mapping, **overrides) -> dict:
    """The DDIM settings for a pipeline's scheduler config (any scheduler class), with ``overrides``.

    Two diffusers pitfalls are decided here rather than inherited:
    - ``DDIMScheduler.from_config`` turns ``clip_sample`` on when a config omits it; clipping a latent to
      [-1, 1] is wrong, so we clip only when the model's own scheduler explicitly asks for it.
    - SDXL's config (an Euler scheduler) carries ``set_alpha_to_one: false``, a leftover Euler ignores;
      inherited by DDIM it stops the last step at alpha_bar(0) instead of clean data (diffusers issue 6068).
      We honour ``set_alpha_to_one`` only where the shipped scheduler uses it (DDIM, PNDM, ...), and
      otherwise end at alpha_bar = 1, where the pipeline's own sampler ends (sigma = 0).
    """
    config = dict(config)
    out = {k: config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                  "trained_betas", "timestep_spacing", "steps_offset", "prediction_type",
                                  "rescale_betas_zero_snr") if k in config}
    out["clip_sample"] = bool(config["clip_sample"]) if _explicit(config, "clip_sample") else False
    out["clip_sample_range"] = float(config.get("clip_sample_range", 1.0))
    out["set_alpha_to_one"] = bool(config["set_alpha_to_one"]) if _explicit(config, "set_alpha_to_one") else True
    if _explicit(config, "thresholding") and config["thresholding"]:
        raise StablenoiseError("the model's scheduler uses dynamic thresholding, which DDIM inversion cannot undo")
    out.update(overrides)
    if out.get("timestep_spacing", "leading") not in SPACINGS:
        raise StablenoiseError(f"timestep_spacing must be one of {', '.join(SPACINGS)}, "
                               f"got {out['timestep_spacing']!r}")
    if out.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise StablenoiseError(f"unsupported prediction_type {out['prediction_type']!r}; "
                               f"DDIM supports {', '.join(PREDICTION_TYPES)}")
    return out


def schedule(ddim_config: Mapping, steps: int, device=None) -> Schedule:
    """The timesteps and noise levels of ``steps`` DDIM steps under ``settings(...)``."""
    from diffusers import DDIMScheduler

    if steps < 1:
        raise StablenoiseError(f"steps must be >= 1, got {steps}")
    sched = DDIMScheduler.from_config(_with_betas(dict(ddim_config)))
    if steps > sched.config.num_train_timesteps:
        raise StablenoiseError(f"steps must be <= {sched.config.num_train_timesteps} (the training timesteps)")
    sched.set_timesteps(steps)
    timesteps = sched.timesteps.to(torch.long)
    alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
    final = torch.ones((), dtype=torch.float64) if ddim_config.get("set_alpha_to_one", True) else alphas_cumprod[0]
    alphas = torch.cat([alphas_cumprod[timesteps], final.view(1)])
    clip = float(ddim_config.get("clip_sample_range", 1.0)) if ddim_config.get("clip_sample") else None
    return Schedule(timesteps.to(device), alphas, ddim_config.get("prediction_type", "epsilon"), clip)


def _with_betas(config: dict) -> dict:
    """DDIMScheduler lacks the "exp" beta schedule (Shap-E's prior, alpha_bar(t) = exp(-12 t)): give it the betas
    that diffusers' own ``betas_for_alpha_bar`` computes for it, exactly as HeunDiscreteScheduler does."""
    if config.get("beta_schedule") == "exp" and config.get("trained_betas") is None:
        from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

        betas = betas_for_alpha_bar(config.get("num_train_timesteps", 1000), alpha_transform_type="exp")
        config = {**config, "trained_betas": betas.tolist()}
    return config


def to_eps(model_output: torch.Tensor, x: torch.Tensor, a_model, prediction_type: str = "epsilon") -> torch.Tensor:
    """The noise estimate in a model output, read at the noise level a_model of the timestep the model was
    given (the level its output is parametrized for)."""
    sa, sb = math.sqrt(float(a_model)), math.sqrt(1 - float(a_model))
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0
        return sa * model_output + sb * x
    if prediction_type == "sample":
        return (x - sa * model_output) / sb
    raise StablenoiseError(f"unsupported prediction_type {prediction_type!r}")


def step(eps: torch.Tensor, x: torch.Tensor, a_from, a_to, clip: float | None = None) -> torch.Tensor:
    """One DDIM move of ``x`` from noise level ``a_from`` to ``a_to`` (alpha_bar values; either direction):
    x0 = (x - sqrt(1 - a_from) eps) / sqrt(a_from), then x' = sqrt(a_to) x0 + sqrt(1 - a_to) eps."""
    sa, sb = math.sqrt(float(a_from)), math.sqrt(1 - float(a_from))
    x0 = (x - sb * eps) / sa
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        if sb > 0:
            # Recomputed from the clipped x0, as Heun/Euler do (Shap-E's prior) and DDIMScheduler with
            # use_clipped_model_output=True; its default keeps the raw eps, which with the clipped x0 no
            # longer gives back x.
            eps = (x - sa * x0) / sb
    return math.sqrt(float(a_to)) * x0 + math.sqrt(1 - float(a_to)) * eps


def denoise(model: Model, x: torch.Tensor, sched: Schedule, callback: Callable[[dict], None] | None = None
            ) -> torch.Tensor:
    """Noise at level a_0 to a sample at level a_T: T model calls, from the noisiest timestep down."""
    for i, t in enumerate(sched.timesteps):
        eps = to_eps(model(x, t), x, sched.alphas[i], sched.prediction_type)
        x = step(eps, x, sched.alphas[i], sched.alphas[i + 1], sched.clip)
        if callback is not None:
            callback({"i": i, "t": t, "x": x})
    return x


def invert(model: Model, x: torch.Tensor, sched: Schedule, callback: Callable[[dict], None] | None = None
           ) -> torch.Tensor:
    """A sample at level a_T back to noise at level a_0: the denoising steps in reverse order."""
    for i in reversed(range(len(sched))):
        t = sched.timesteps[i]
        eps = to_eps(model(x, t), x, sched.alphas[i], sched.prediction_type)
        x = step(eps, x, sched.alphas[i + 1], sched.alphas[i], sched.clip)
        if callback is not None:
            callback({"i": i, "t": t, "x": x})
    return x
