"""Images from chosen noises: a noise means one image, whatever scheduler the pipeline ships."""

from __future__ import annotations

from typing import Sequence

import torch

from .backends.base import Backend
from .errors import StablenoiseError
from .noise import check_noise, check_prompts, generator_seed
from .stability import conditioning, resolve

SAMPLERS = ("ddim", "pipeline")


def generate(backend: Backend, prompt: str | Sequence[str], noise: torch.Tensor, steps: int | None = None,
             guidance: float | None = None, sampler: str = "ddim") -> list:
    """PIL images from ``noise``, one per noise.

    ``sampler="ddim"`` (default) decodes exactly the z_0 of the denoising half of the round trip: the image
    whose stability was measured. ``sampler="pipeline"`` runs the pipeline's own ``__call__`` with its own
    scheduler started from the noise; a stochastic (ancestral) scheduler draws its fresh noise from a CPU
    generator per image seeded by the noise itself (:func:`~stablenoise.noise.generator_seed`), so the
    same noise still gives the same image, but not the scored one.

    Args:
        backend: the model.
        prompt: one prompt, or one per noise.
        noise: [B, ...] or [...] noises.
        steps, guidance: the denoising (None: the model family's).
        sampler: "ddim" (the scored image) or "pipeline" (the pipeline's own scheduler).

    Returns:
        A list of PIL images, one per noise, in order.

    Raises:
        StablenoiseError: an unknown sampler, a bad ``steps`` or ``guidance``, a noise that is not a finite
            floating-point tensor of the model's latent shape, or prompts that do not match the noises.
    """
    if sampler not in SAMPLERS:
        raise StablenoiseError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    steps, guidance, _ = resolve(backend, steps, guidance, None)
    noise = check_noise(noise, backend.latent_shape)
    prompts = check_prompts(prompt, noise.shape[0])
    with torch.no_grad():
        if sampler == "pipeline":
            generators = [torch.Generator("cpu").manual_seed(generator_seed(n)) for n in noise]
            return backend.generate(prompts, noise, steps, guidance, generators)
        cond = conditioning(backend, prompts, noise.shape[0], guidance)
        return backend.decode(backend.denoise(noise, cond, steps, guidance))
