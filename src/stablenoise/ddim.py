"""Deterministic DDIM (eta = 0): the one integrator of every round trip, and DDIM's noise levels from diffusers.

A noise level is a pair (a, b) with x = a x0 + b eps: for DDIM a = sqrt(alpha_bar) and b = sqrt(1 - alpha_bar), for a
rectified flow a = 1 - sigma and b = sigma (:mod:`stablenoise.flow`). A model wrapped as a *denoiser* in k-diffusion's
sense (:class:`stablenoise.backends.denoiser.Denoiser`, or :func:`plain` for a bare callable) predicts, for x at a
level, the clean sample and the noise (x0, eps) (:func:`predict`); the one step to another level is
x' = a' x0 + b' eps (:func:`at_level`). That is DDIM's update, and explicit Euler on a rectified flow written in
(1 - sigma, sigma) coordinates, so both families' round trips are :func:`to_data` and :func:`to_noise` below.

The step is our own, over the *actual* list of timesteps, instead of diffusers' ``DDIMScheduler.step`` and
``DDIMInverseScheduler.step``: those derive the neighbouring timestep with a uniform stride
(``t - num_train_timesteps // steps``), which is wrong for "linspace" spacing (diffusers issues 11347 and
12633), and the inverse scheduler refuses linspace outright. diffusers still supplies the noise schedule
(``alphas_cumprod``, from betas, zero-SNR rescaling, ...) and the timestep list (``set_timesteps``).

A DDIM schedule of T steps is T timesteps t_0 > ... > t_{T-1} and T + 1 noise levels a_0 ... a_T, where
a_i = alpha_bar(t_i) and a_T is the level the last step lands on (1 = clean). Denoising step i moves x from
a_i to a_{i+1} with the model evaluated at (x, t_i). Inversion step i moves x from a_{i+1} back to a_i and must
evaluate the model at a point it has not reached yet; *where* is the ``point`` of :func:`to_noise`:

- ``"destination"``: at (x, t_i), the timestep x is moving to: the usual DDIM-inversion approximation
  eps(x_{t-1}, t) ~ eps(x_t, t), as diffusers' inverse scheduler does it. The default of DDIM backends.
- ``"source"``: at (x, t_{i+1}), the level x is at (on the last, clean level: timestep 0): explicit Euler
  backwards, as flow-matching inversions do it. The default of flow backends (FLUX, SD3).

The model output is turned into a noise estimate at the level of the timestep the model was given, where its
parametrization holds. For epsilon prediction that changes nothing; for v and sample prediction diffusers' inverse
scheduler reads the output at the *source* level instead, which at the first inversion step (from alpha_bar = 1)
takes v itself for the noise, or divides by zero (diffusers issue 10920). The analytic test (tests/test_ddim.py)
tells the two apart.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

import torch

from .errors import StablenoiseError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # DDIM's; a flow model predicts "flow" (a velocity)
SPACINGS = ("leading", "trailing", "linspace")
INVERSION_POINTS = ("destination", "source")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t) -> model output


class Level(NamedTuple):
    """A noise level x = a x0 + b eps, the model timestep ``t`` that stands for it, and (ta, tb): the level of ``t``,
    where the model's output is parametrized. (ta, tb) = (a, b) except on DDIM's clean last level, whose model
    timestep 0 is not quite clean."""

    a: float
    b: float
    t: torch.Tensor | None
    ta: float
    tb: float


# (x, its level, the level the model is evaluated at) -> (x0, eps): what the integrator steps with.
DenoiserFn = Callable[[torch.Tensor, Level, Level], "tuple[torch.Tensor, torch.Tensor]"]


def alpha_level(alpha_bar, t: torch.Tensor | None = None, model_alpha_bar=None) -> Level:
    """The DDIM level of ``alpha_bar`` (model output read at ``model_alpha_bar``, if another)."""
    a = float(alpha_bar)
    m = a if model_alpha_bar is None else float(model_alpha_bar)
    return Level(math.sqrt(a), math.sqrt(1 - a), t, math.sqrt(m), math.sqrt(1 - m))


def check_inversion_point(point: str) -> str:
    if point not in INVERSION_POINTS:
        raise StablenoiseError(f"inversion_point must be one of {', '.join(INVERSION_POINTS)}, got {point!r}")
    return point


@dataclass(frozen=True)
class Schedule:
    timesteps: torch.Tensor  # [T] descending: the model's timestep at each denoising step
    alphas: torch.Tensor  # [T + 1] float64: alpha_bar before each step, then where the last step lands
    prediction_type: str = "epsilon"
    clip: float | None = None  # clip the x0 estimate to [-clip, clip] (only if the model's config asks)
    # alpha_bar of timestep 0, where source-point inversion reads the model on the last level (None: that level's own)
    clean_alpha: float | None = None

    def __len__(self) -> int:
        return len(self.timesteps)

    def levels(self) -> tuple[Level, ...]:
        """The T + 1 levels: each denoising timestep's, then the last, where the model is given timestep 0."""
        last = len(self)
        timesteps = [*self.timesteps, torch.zeros_like(self.timesteps[0])]
        return tuple(alpha_level(a, t, self.clean_alpha if i == last else None)
                     for i, (a, t) in enumerate(zip(self.alphas.tolist(), timesteps)))


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
    return Schedule(timesteps.to(device), alphas, *parametrization(ddim_config), float(alphas_cumprod[0]))


def parametrization(ddim_config: Mapping) -> tuple[str, float | None]:
    """What the model predicts and where its x0 estimate is clipped (None: not clipped), under ``settings(...)``."""
    clip = float(ddim_config.get("clip_sample_range", 1.0)) if ddim_config.get("clip_sample") else None
    return ddim_config.get("prediction_type", "epsilon"), clip


def _with_betas(config: dict) -> dict:
    """DDIMScheduler lacks the "exp" beta schedule (Shap-E's prior, alpha_bar(t) = exp(-12 t)): give it the betas
    that diffusers' own ``betas_for_alpha_bar`` computes for it, exactly as HeunDiscreteScheduler does."""
    if config.get("beta_schedule") == "exp" and config.get("trained_betas") is None:
        from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

        betas = betas_for_alpha_bar(config.get("num_train_timesteps", 1000), alpha_transform_type="exp")
        config = {**config, "trained_betas": betas.tolist()}
    return config


def _noise(model_output: torch.Tensor, x: torch.Tensor, ta: float, tb: float, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0
        return ta * model_output + tb * x
    if prediction_type == "sample":
        return (x - ta * model_output) / tb
    raise StablenoiseError(f"unsupported prediction_type {prediction_type!r}")


def to_eps(model_output: torch.Tensor, x: torch.Tensor, a_model, prediction_type: str = "epsilon") -> torch.Tensor:
    """The noise estimate in a model output, read at the noise level a_model (alpha_bar) of the timestep the model
    was given (the level its output is parametrized for)."""
    return _noise(model_output, x, math.sqrt(float(a_model)), math.sqrt(1 - float(a_model)), prediction_type)


def predict(model_output: torch.Tensor, x: torch.Tensor, here: Level, at: Level, prediction_type: str = "epsilon",
            clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) for x at level ``here`` from the model's output at ``at``'s timestep: noise, v or x0 read at the
    level of that timestep (:func:`to_eps`); a flow model's velocity v = eps - x0 means the same at every level, so
    x0 = x - b v and eps = x + a v. With ``clip``, x0 is clamped to [-clip, clip] and eps recomputed from it, as
    Heun/Euler do (Shap-E's prior) and DDIMScheduler with use_clipped_model_output=True (its default keeps the raw
    eps, which with the clipped x0 no longer gives back x)."""
    if prediction_type == "flow":
        x0, eps = x - here.b * model_output, x + here.a * model_output
    else:
        eps = _noise(model_output, x, at.ta, at.tb, prediction_type)
        x0 = (x - here.b * eps) / here.a
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        if here.b > 0:
            eps = (x - here.a * x0) / here.b
    return x0, eps


def at_level(x0: torch.Tensor, eps: torch.Tensor, level: Level) -> torch.Tensor:
    """The one step: x at ``level`` from the predictions, a x0 + b eps (DDIM's update; on a rectified flow, Euler's)."""
    return level.a * x0 + level.b * eps


def step(eps: torch.Tensor, x: torch.Tensor, a_from, a_to, clip: float | None = None) -> torch.Tensor:
    """One DDIM move of ``x`` from noise level ``a_from`` to ``a_to`` (alpha_bar values; either direction) given a
    noise estimate: x0 = (x - sqrt(1 - a_from) eps) / sqrt(a_from), then x' = sqrt(a_to) x0 + sqrt(1 - a_to) eps."""
    here = alpha_level(a_from)
    return at_level(*predict(eps, x, here, here, "epsilon", clip), alpha_level(a_to))


def plain(model: Model, prediction_type: str = "epsilon", clip: float | None = None) -> DenoiserFn:
    """A bare (x, t) -> output callable as a denoiser (no guidance, counting or checkpointing: a backend's
    :class:`~stablenoise.backends.denoiser.Denoiser` adds those)."""
    return lambda x, here, at: predict(model(x, at.t), x, here, at, prediction_type, clip)


def to_data(denoiser: DenoiserFn, x: torch.Tensor, levels: tuple[Level, ...],
            callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """From the first level (noise) to the last (data): T model calls, each at the current point."""
    for i in range(len(levels) - 1):
        x = at_level(*denoiser(x, levels[i], levels[i]), levels[i + 1])
        if callback is not None:
            callback({"i": i, "t": levels[i].t, "x": x})
    return x


def to_noise(denoiser: DenoiserFn, x: torch.Tensor, levels: tuple[Level, ...], point: str = "destination",
             callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """From the last level (data) back to the first: the denoising steps in reverse order, the model evaluated at
    ``point`` ("destination": the level x moves to; "source": the level x is at)."""
    check_inversion_point(point)
    for i in reversed(range(len(levels) - 1)):
        at = levels[i] if point == "destination" else levels[i + 1]
        x = at_level(*denoiser(x, levels[i + 1], at), levels[i])
        if callback is not None:
            callback({"i": i, "t": at.t, "x": x})
    return x


def denoise(model: Model, x: torch.Tensor, sched: Schedule, callback: Callable[[dict], None] | None = None
            ) -> torch.Tensor:
    """Noise at level a_0 to a sample at level a_T under a bare model: :func:`to_data` over the schedule's levels."""
    return to_data(plain(model, sched.prediction_type, sched.clip), x, sched.levels(), callback)


def invert(model: Model, x: torch.Tensor, sched: Schedule, callback: Callable[[dict], None] | None = None,
           point: str = "destination") -> torch.Tensor:
    """A sample at level a_T back to noise at level a_0 under a bare model: :func:`to_noise`."""
    return to_noise(plain(model, sched.prediction_type, sched.clip), x, sched.levels(), point, callback)


def check_schedule(sched: Schedule, config: Mapping, steps: int) -> None:
    """Warn about the two DDIM schedules that make stability meaningless."""
    first, total = int(sched.timesteps[0]), config.get("num_train_timesteps", 1000)
    spacing = config.get("timestep_spacing", "leading")
    # "leading" spacing with very few steps starts at t ~ 1: nothing is denoised, F is the identity
    # and stability is ~1.0 for every noise. That is a configuration error, not a stable noise.
    if first < total // 2:
        warnings.warn(f"DDIM with {steps} step(s) and timestep_spacing={spacing!r} starts at t={first} of "
                      f"{total}: almost nothing is denoised and stability will be trivially near 1. "
                      "Use more steps or timestep_spacing='trailing'.", stacklevel=4)
    # A first step where alpha_bar ~ 0 (cosine betas at t=999) divides the x0 estimate by ~0.
    alpha_bar = float(sched.alphas[0])
    if alpha_bar < 1e-6 and sched.clip is None:
        warnings.warn(f"DDIM starts at t={first} where alpha_bar={alpha_bar:.1e}: the x0 estimate is "
                      "amplified beyond use. Use timestep_spacing='leading' for this noise schedule.", stacklevel=4)
