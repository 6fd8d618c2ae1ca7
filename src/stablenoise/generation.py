"""Images from chosen noises."""

from __future__ import annotations

from typing import Sequence

import torch

from .backends.base import Backend
from .noise import check_noise, check_prompts
from .stability import conditioning, resolve


def generate(backend: Backend, prompt: str | Sequence[str], noise: torch.Tensor, steps: int | None = None,
             guidance: float | None = None, sampler: str = "pipeline") -> list:
    """PIL images from ``noise``.

    ``sampler="pipeline"`` runs the pipeline's own ``__call__`` with its usual scheduler;
    ``sampler="ddim"`` decodes exactly the z_0 that the stability score denoised.
    """
    steps, guidance, _ = resolve(backend, steps, guidance, None)
    noise = check_noise(noise, backend.latent_shape)
    prompts = check_prompts(prompt, noise.shape[0])
    with torch.no_grad():
        if sampler == "pipeline":
            return backend.generate(prompts, noise, steps, guidance)
        if sampler == "ddim":
            cond = conditioning(backend, prompts, noise.shape[0], guidance)
            return backend.decode(backend.denoise(noise, cond, steps, guidance))
    raise ValueError(f"unknown sampler {sampler!r}; use 'pipeline' or 'ddim'")
