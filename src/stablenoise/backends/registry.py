"""Model families: which adapter wraps which pipeline class, with the family's defaults and shipped models.

Families outside the core (the shapes world, third-party models) register with :func:`register_family`
or an entry point in the group ``stablenoise.backends`` naming a function that returns a :class:`Family`
(or a list of them). The algorithms never ask which family they run on.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..plugins import Registry
from .base import Defaults

ENTRY_POINT_GROUP = "stablenoise.backends"


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: type  # matched with isinstance; the most derived matching class wins
    backend: type
    defaults: Defaults
    turbo_defaults: Defaults | None = None  # for checkpoints whose name says "turbo"
    models: dict[str, Path] = field(default_factory=dict)  # shipped model names -> pipeline folders
    fixed_size: bool = False  # the pipeline has one image size (height/width are refused)
    # For checkpoints of one pipeline class that differ in config (FLUX schnell vs dev): pipe -> Defaults.
    config_defaults: Callable[[object], Defaults] | None = None


def _from_entry_point(registry: Registry, ep) -> None:
    made = ep.load()()  # a Family, or a list of them
    for fam in made if isinstance(made, (list, tuple)) else [made]:
        registry.register(fam.name, fam, same=operator.eq)


FAMILIES: Registry[Family] = Registry("model family", ENTRY_POINT_GROUP, _from_entry_point)


def register_family(family: Family) -> None:
    """Register a family before the built-in ones (so a subclass pipeline wins over its base class); the latest
    registered wins among families of one pipeline class. The same family registered again is harmless."""
    FAMILIES.register(family.name, family, same=operator.eq)


def _builtin() -> list[Family]:
    from transformers.utils import logging as hf_logging

    # The SD pipelines import CLIPImageProcessor, which warns that torchvision (not a dependency: its PyPI
    # wheels do not import beside CPU torch) is missing. We never use the image processor.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        from diffusers import (FluxPipeline, ShapEPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline,
                               StableDiffusionXLPipeline)
    finally:
        hf_logging.set_verbosity(verbosity)
    from .flux import FluxBackend
    from .sd import StableDiffusionBackend
    from .sd3 import StableDiffusion3Backend
    from .sdxl import StableDiffusionXLBackend
    from .shap_e import ShapEBackend

    # Turbo models are distilled for 1-4 steps without classifier-free guidance; the others take the
    # guidance their model cards use. Steps are diffusers' pipeline defaults.
    # SD3.5-medium's model card samples with 40 steps at guidance 4.5; SD3.5-large-turbo's with 4 steps and
    # guidance 0 (no CFG). FLUX.1-schnell's card: 4 steps, guidance 0 (timestep-distilled, no guidance
    # input); FLUX.1-dev's card: 50 steps, guidance 3.5 fed to its guidance embedding (no CFG either). The
    # inversion keeps 1.0: the conditional branch alone (SD3), the distilled analogue of CFG 1 (FLUX-dev).
    flow = [Family("sd3", StableDiffusion3Pipeline, StableDiffusion3Backend, Defaults(40, 4.5), Defaults(4, 0.0)),
            Family("flux", FluxPipeline, FluxBackend, Defaults(4, 0.0), config_defaults=_flux_defaults)]
    return [*flow, Family("sdxl", StableDiffusionXLPipeline, StableDiffusionXLBackend, Defaults(50, 5.0), Defaults(4, 0.0)),
            Family("sd", StableDiffusionPipeline, StableDiffusionBackend, Defaults(50, 7.5), Defaults(4, 0.0)),
            # Shap-E: 64 steps at guidance 15, as the openai/shap-e model card and ShapEPipeline's docstring
            # example run it (its __call__ defaults, 25 and 4.0, are not what the model is shown with).
            # One size: a rendered frame size is the adapter's frame_size, not --height/--width.
            Family("shap-e", ShapEPipeline, ShapEBackend, Defaults(64, 15.0), fixed_size=True)]


def _flux_defaults(pipe) -> Defaults:
    """FLUX.1-dev has a guidance embedding (``guidance_embeds``); FLUX.1-schnell does not."""
    return Defaults(50, 3.5) if pipe.transformer.config.guidance_embeds else Defaults(4, 0.0)


def families() -> list[Family]:
    """Registered families first (the latest first), then the built-in ones (SD, SDXL, SD3, FLUX, Shap-E)."""
    return [*reversed(FAMILIES.registered()), *_builtin()]


def shipped_models() -> dict[str, Path]:
    return {name: path for f in families() for name, path in f.models.items()}
