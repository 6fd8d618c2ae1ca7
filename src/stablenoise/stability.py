"""Inversion stability: s(eps) = cos(eps, F(eps)), F = DDIM inversion of the DDIM denoise of eps."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .backends.base import Backend, Conditioning
from .errors import StablenoiseError
from .noise import check_noise, check_prompts


def resolve(backend: Backend, steps: int | None, guidance: float | None,
            inversion_guidance: float | None) -> tuple[int, float, float]:
    """Fill unset round-trip settings from the model family's defaults, and check them."""
    d = backend.defaults
    steps = d.steps if steps is None else int(steps)
    guidance = d.guidance if guidance is None else float(guidance)
    inversion_guidance = d.inversion_guidance if inversion_guidance is None else float(inversion_guidance)
    if steps < 1:
        raise StablenoiseError(f"steps must be >= 1, got {steps}")
    if not (math.isfinite(guidance) and math.isfinite(inversion_guidance)):
        raise StablenoiseError(f"guidance scales must be finite, got {guidance} and {inversion_guidance}")
    if guidance < 0 or inversion_guidance < 0:
        raise StablenoiseError("guidance scales must be >= 0")
    return steps, guidance, inversion_guidance


def conditioning(backend: Backend, prompt: str | Sequence[str], n: int, guidance: float) -> Conditioning:
    """Encode once per distinct prompt list: a single prompt is encoded once and shared by n noises."""
    prompts = check_prompts(prompt, n)
    if len(set(prompts)) == 1:
        return backend.encode(prompts[:1], guidance).expand(n)
    return backend.encode(prompts, guidance)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity over all non-batch dimensions, in float32 (float64 if given)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return torch.nn.functional.cosine_similarity(a.flatten(1).to(dtype), b.flatten(1).to(dtype), dim=1)


def round_trip(backend: Backend, cond: Conditioning, noise: torch.Tensor, steps: int, guidance: float,
               inversion_guidance: float, checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_0, F(eps)): the DDIM-denoised latent and its DDIM inversion, both under the prompt."""
    z0 = backend.denoise(noise, cond, steps, guidance, checkpoint=checkpoint)
    return z0, backend.invert(z0, cond, steps, inversion_guidance, checkpoint=checkpoint)


def stability(backend: Backend, prompt: str | Sequence[str], noise: torch.Tensor, steps: int | None = None,
              guidance: float | None = None, inversion_guidance: float | None = None) -> torch.Tensor:
    """Inversion stability of each noise in a batch: a tensor [B] of cosines in [-1, 1].

    A noise the model cannot handle (say, scaled by 1e30) scores NaN: callers must treat a non-finite
    score as "no score", never as a value (``select`` excludes it).
    """
    steps, guidance, inversion_guidance = resolve(backend, steps, guidance, inversion_guidance)
    noise = check_noise(noise, backend.latent_shape)
    with torch.no_grad():
        cond = conditioning(backend, prompt, noise.shape[0], max(guidance, inversion_guidance))
    return score(backend, cond, noise, steps, guidance, inversion_guidance)


def score(backend: Backend, cond: Conditioning, noise: torch.Tensor, steps: int, guidance: float,
          inversion_guidance: float) -> torch.Tensor:
    """``stability`` under a conditioning encoded once (for max(guidance, inversion_guidance)) and expanded
    to the batch: what selection calls per batch, so a prompt is encoded once per selection."""
    noise = noise.to(backend.device, torch.promote_types(noise.dtype, torch.float32))
    with torch.no_grad():
        _, inverted = round_trip(backend, cond.expand(noise.shape[0]), noise, steps, guidance, inversion_guidance)
        return cosine(noise, inverted).cpu()
